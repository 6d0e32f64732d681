-- Organizations, API keys, messages with their status history, and idempotency keys.
-- Ids are UUIDv7, which PostgreSQL compares byte by byte: id order is creation order, so
-- newest-first listing is a backwards index scan. Money is bigint micros of the currency.

CREATE TABLE organizations (
    id             uuid        PRIMARY KEY,
    name           text        NOT NULL,
    default_region text        NOT NULL,
    created_at     timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    org_id       uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode         text        NOT NULL CHECK (mode IN ('live', 'test')),
    prefix       text        NOT NULL,
    hash         bytea       NOT NULL UNIQUE,
    name         text,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE INDEX api_keys_by_org ON api_keys (org_id);

CREATE TABLE messages (
    id                  uuid        PRIMARY KEY,
    org_id              uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode                text        NOT NULL CHECK (mode IN ('live', 'test')),
    api_key_id          uuid,
    recipient           text        NOT NULL,
    country             text,
    sender              text,
    body                text        NOT NULL,
    encoding            text        NOT NULL,
    segments            integer     NOT NULL,
    kind                text        NOT NULL,
    priority            smallint    NOT NULL,
    status              text        NOT NULL,
    provider            text,
    provider_message_id text,
    error_code          text,
    error_message       text,
    estimated_cost      bigint      NOT NULL,
    actual_cost         bigint,
    currency            text        NOT NULL,
    attempts            integer     NOT NULL DEFAULT 0,
    max_attempts        integer     NOT NULL,
    -- When the message next needs attention: its send time while scheduled, its (re)try time
    -- while queued, its next reconciliation while unknown.
    due_at              timestamptz NOT NULL,
    lease_expires_at    timestamptz,
    send_at             timestamptz,
    last_seq            integer     NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

CREATE INDEX messages_by_scope ON messages (org_id, mode, id);
CREATE INDEX messages_queue ON messages (priority DESC, due_at) WHERE status = 'queued';
CREATE INDEX messages_scheduled ON messages (due_at) WHERE status = 'scheduled';
CREATE INDEX messages_leases ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_unknown ON messages (due_at) WHERE status = 'unknown';
CREATE INDEX messages_by_provider_id ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- A message's history, clustered by message so it is read in one range scan.
CREATE TABLE message_events (
    message_id    uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq           integer     NOT NULL,
    org_id        uuid        NOT NULL,
    status        text        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    error_code    text,
    error_message text,
    PRIMARY KEY (message_id, seq)
);

-- No foreign key to messages: the key row is written first, so that a concurrent request with
-- the same key waits on it instead of inserting a second message.
CREATE TABLE idempotency_keys (
    org_id       uuid        NOT NULL,
    mode         text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    message_id   uuid        NOT NULL,
    response     bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (org_id, mode, key)
);

CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
