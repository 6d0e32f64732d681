-- An organization's contacts: the people it sends to. Tags are a JSON array of distinct
-- strings, custom fields a JSON object; both are read by segment rules with SQLite's JSON
-- functions.
CREATE TABLE contacts (
    id             BLOB    PRIMARY KEY NOT NULL,
    org_id         BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone          TEXT    NOT NULL,
    country        TEXT,
    first_name     TEXT,
    last_name      TEXT,
    email          TEXT,
    time_zone      TEXT,
    language       TEXT,
    lead_status    TEXT    NOT NULL,
    tags           TEXT    NOT NULL DEFAULT '[]',
    custom         TEXT    NOT NULL DEFAULT '{}',
    consent        INTEGER NOT NULL DEFAULT 0,
    consent_source TEXT,
    consent_at     INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (org_id, phone)
) STRICT;

CREATE INDEX contacts_by_org ON contacts (org_id, id);
CREATE INDEX contacts_by_lead_status ON contacts (org_id, lead_status);

-- The lead statuses an organization uses, in order.
ALTER TABLE organizations ADD COLUMN lead_statuses TEXT NOT NULL
    DEFAULT '["new","contacted","qualified","customer","lost"]';

-- Message history by person: segment rules (last message, delivered count, replied) and GDPR
-- export and erasure find a contact's messages by number.
CREATE INDEX messages_by_recipient ON messages (org_id, recipient);
CREATE INDEX inbound_messages_by_sender ON inbound_messages (org_id, from_number);

-- CSV imports of contacts, and the rows each refused (the downloadable report).
CREATE TABLE contact_imports (
    id          BLOB    PRIMARY KEY NOT NULL,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    status      TEXT    NOT NULL,
    rows        INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL DEFAULT 0,
    updated     INTEGER NOT NULL DEFAULT 0,
    unchanged   INTEGER NOT NULL DEFAULT 0,
    invalid     INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;

CREATE INDEX contact_imports_by_org ON contact_imports (org_id, id);

CREATE TABLE contact_import_errors (
    import_id BLOB    NOT NULL REFERENCES contact_imports (id) ON DELETE CASCADE,
    row       INTEGER NOT NULL,
    field     TEXT    NOT NULL,
    code      TEXT    NOT NULL,
    message   TEXT    NOT NULL,
    PRIMARY KEY (import_id, row, field)
) STRICT, WITHOUT ROWID;
