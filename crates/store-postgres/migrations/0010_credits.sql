-- Credits and spend limits, and the destination countries an organization may send to.
-- An organization without a credit_accounts row (or with metered = false) is unmetered.

CREATE TABLE credit_accounts (
    org_id      uuid    PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    metered     boolean NOT NULL DEFAULT false,
    balance     bigint  NOT NULL DEFAULT 0,
    -- Credits held by messages not yet handed to a provider. The check makes an overdraw
    -- impossible whatever the code does.
    reserved    bigint  NOT NULL DEFAULT 0,
    -- Micros of the organization's price currency per calendar month (UTC).
    spend_limit bigint,
    CHECK (reserved >= 0 AND reserved <= balance)
);

-- Who added credits, when and why.
CREATE TABLE credit_grants (
    id         uuid        PRIMARY KEY,
    org_id     uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    credits    bigint      NOT NULL,
    reason     text,
    granted_by text        NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX credit_grants_by_org ON credit_grants (org_id, created_at);

-- Estimated cost of the metered messages accepted per month, so the spend limit is checked
-- without reading messages.
CREATE TABLE monthly_spend (
    org_id uuid   NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    month  text   NOT NULL,
    spent  bigint NOT NULL,
    PRIMARY KEY (org_id, month)
);

-- Destination countries; none means the organization's own country only.
CREATE TABLE allowed_countries (
    org_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    country text NOT NULL,
    PRIMARY KEY (org_id, country)
);

-- Credits a message reserved when it was queued (0 when unmetered).
ALTER TABLE messages ADD COLUMN credits integer NOT NULL DEFAULT 0;
