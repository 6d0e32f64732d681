-- The suppression list: numbers that opted out of an organization's messages.
CREATE TABLE opt_outs (
    org_id     uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone      text        NOT NULL,
    source     text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, phone)
);
