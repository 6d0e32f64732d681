-- Broadcasts: one body or template sent to a mixed set of recipients. Counts are kept on the row
-- and written with each batch of messages, so they always add up to `requested`.
CREATE TABLE broadcasts (
    id            BLOB    PRIMARY KEY NOT NULL,
    org_id        BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    request       TEXT    NOT NULL,
    requested     INTEGER NOT NULL DEFAULT 0,
    queued        INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    invalid       INTEGER NOT NULL DEFAULT 0,
    opted_out     INTEGER NOT NULL DEFAULT 0,
    no_consent    INTEGER NOT NULL DEFAULT 0,
    not_permitted INTEGER NOT NULL DEFAULT 0,
    not_sent      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
) STRICT;

CREATE INDEX broadcasts_by_org ON broadcasts (org_id, mode, id);

-- Numbers a broadcast has already reached: de-duplicates across batches in the database, so
-- memory stays bounded however large the audience.
CREATE TABLE broadcast_recipients (
    broadcast_id BLOB NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    phone        TEXT NOT NULL,
    PRIMARY KEY (broadcast_id, phone)
) STRICT, WITHOUT ROWID;

ALTER TABLE messages ADD COLUMN broadcast_id BLOB;

CREATE INDEX messages_by_broadcast ON messages (org_id, broadcast_id) WHERE broadcast_id IS NOT NULL;
