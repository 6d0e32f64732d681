-- Broadcasts: one body or template sent to a mixed set of recipients. Counts are kept on the row
-- and written with each batch of messages, so they always add up to `requested`.
CREATE TABLE broadcasts (
    id            uuid        PRIMARY KEY,
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode          text        NOT NULL,
    status        text        NOT NULL,
    request       jsonb       NOT NULL,
    requested     bigint      NOT NULL DEFAULT 0,
    queued        bigint      NOT NULL DEFAULT 0,
    duplicates    bigint      NOT NULL DEFAULT 0,
    invalid       bigint      NOT NULL DEFAULT 0,
    opted_out     bigint      NOT NULL DEFAULT 0,
    no_consent    bigint      NOT NULL DEFAULT 0,
    not_permitted bigint      NOT NULL DEFAULT 0,
    not_sent      bigint      NOT NULL DEFAULT 0,
    error         text,
    created_at    timestamptz NOT NULL,
    finished_at   timestamptz
);

CREATE INDEX broadcasts_by_org ON broadcasts (org_id, mode, id);

-- Numbers a broadcast has already reached: de-duplicates across batches in the database, so
-- memory stays bounded however large the audience.
CREATE TABLE broadcast_recipients (
    broadcast_id uuid NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    phone        text NOT NULL,
    PRIMARY KEY (broadcast_id, phone)
);

ALTER TABLE messages ADD COLUMN broadcast_id uuid;

CREATE INDEX messages_by_broadcast ON messages (org_id, broadcast_id) WHERE broadcast_id IS NOT NULL;
