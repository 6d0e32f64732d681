-- The suppression list: numbers that opted out of an organization's messages.
CREATE TABLE opt_outs (
    org_id     BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone      TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, phone)
) STRICT;
