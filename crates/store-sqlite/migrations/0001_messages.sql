-- Organizations, API keys, messages with their status history, and idempotency keys.
-- Times are INTEGER microseconds since the Unix epoch; ids are 16-byte UUIDs (v7, so byte order
-- is creation order and newest-first listing is a backwards index scan).

CREATE TABLE organizations (
    id             BLOB    PRIMARY KEY NOT NULL,
    name           TEXT    NOT NULL,
    default_region TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id           BLOB    PRIMARY KEY NOT NULL,
    org_id       BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode         TEXT    NOT NULL CHECK (mode IN ('live', 'test')),
    prefix       TEXT    NOT NULL,
    hash         BLOB    NOT NULL UNIQUE,
    name         TEXT,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX api_keys_by_org ON api_keys (org_id);

CREATE TABLE messages (
    id                  BLOB    PRIMARY KEY NOT NULL,
    org_id              BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode                TEXT    NOT NULL CHECK (mode IN ('live', 'test')),
    api_key_id          BLOB,
    recipient           TEXT    NOT NULL,
    country             TEXT,
    sender              TEXT,
    body                TEXT    NOT NULL,
    encoding            TEXT    NOT NULL,
    segments            INTEGER NOT NULL,
    kind                TEXT    NOT NULL,
    priority            INTEGER NOT NULL,
    status              TEXT    NOT NULL,
    provider            TEXT,
    provider_message_id TEXT,
    error_code          TEXT,
    error_message       TEXT,
    estimated_cost      INTEGER NOT NULL,
    actual_cost         INTEGER,
    currency            TEXT    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    -- When the message next needs attention: its send time while scheduled, its (re)try time
    -- while queued, its next reconciliation while unknown.
    due_at              INTEGER NOT NULL,
    lease_expires_at    INTEGER,
    send_at             INTEGER,
    last_seq            INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE INDEX messages_by_scope ON messages (org_id, mode, id);
CREATE INDEX messages_queue ON messages (priority DESC, due_at) WHERE status = 'queued';
CREATE INDEX messages_scheduled ON messages (due_at) WHERE status = 'scheduled';
CREATE INDEX messages_leases ON messages (lease_expires_at) WHERE status = 'sending';
CREATE INDEX messages_unknown ON messages (due_at) WHERE status = 'unknown';
CREATE INDEX messages_by_provider_id ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- A message's history. New entries append to the rowid table; only the small index entries
-- land among older ones. (Clustering the table by message instead was measured 25% slower for
-- the dispatcher: every entry then lands beside its message's first one, dirtying old pages.)
CREATE TABLE message_events (
    id            INTEGER PRIMARY KEY,
    message_id    BLOB    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    org_id        BLOB    NOT NULL,
    seq           INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    occurred_at   INTEGER NOT NULL,
    error_code    TEXT,
    error_message TEXT
) STRICT;

CREATE UNIQUE INDEX message_events_by_message ON message_events (message_id, seq);

CREATE TABLE idempotency_keys (
    org_id       BLOB    NOT NULL,
    mode         TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash BLOB    NOT NULL,
    message_id   BLOB    NOT NULL,
    response     BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (org_id, mode, key)
) STRICT;

CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
