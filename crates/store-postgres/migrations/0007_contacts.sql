-- An organization's contacts: the people it sends to. Tags are a JSON array of distinct
-- strings, custom fields a JSON object; segment rules read both with jsonb operators.
CREATE TABLE contacts (
    id             uuid        PRIMARY KEY,
    org_id         uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone          text        NOT NULL,
    country        text,
    first_name     text,
    last_name      text,
    email          text,
    time_zone      text,
    language       text,
    lead_status    text        NOT NULL,
    tags           jsonb       NOT NULL DEFAULT '[]',
    custom         jsonb       NOT NULL DEFAULT '{}',
    consent        boolean     NOT NULL DEFAULT false,
    consent_source text,
    consent_at     timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    UNIQUE (org_id, phone)
);

CREATE INDEX contacts_by_org ON contacts (org_id, id);
CREATE INDEX contacts_by_lead_status ON contacts (org_id, lead_status);
CREATE INDEX contacts_by_tag ON contacts USING gin (tags jsonb_path_ops);

-- The lead statuses an organization uses, in order.
ALTER TABLE organizations ADD COLUMN lead_statuses jsonb NOT NULL
    DEFAULT '["new","contacted","qualified","customer","lost"]';

-- Message history by person: segment rules (last message, delivered count, replied) and GDPR
-- export and erasure find a contact's messages by number.
CREATE INDEX messages_by_recipient ON messages (org_id, recipient);
CREATE INDEX inbound_messages_by_sender ON inbound_messages (org_id, from_number);

-- CSV imports of contacts, and the rows each refused (the downloadable report).
CREATE TABLE contact_imports (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    status      text        NOT NULL,
    rows        bigint      NOT NULL DEFAULT 0,
    created     bigint      NOT NULL DEFAULT 0,
    updated     bigint      NOT NULL DEFAULT 0,
    unchanged   bigint      NOT NULL DEFAULT 0,
    invalid     bigint      NOT NULL DEFAULT 0,
    error       text,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz
);

CREATE INDEX contact_imports_by_org ON contact_imports (org_id, id);

CREATE TABLE contact_import_errors (
    import_id uuid   NOT NULL REFERENCES contact_imports (id) ON DELETE CASCADE,
    row       bigint NOT NULL,
    field     text   NOT NULL,
    code      text   NOT NULL,
    message   text   NOT NULL,
    PRIMARY KEY (import_id, row, field)
);
