-- Credits and spend limits, and the destination countries an organization may send to.
-- An organization without a credit_accounts row (or with metered = 0) is unmetered.

CREATE TABLE credit_accounts (
    org_id      BLOB    PRIMARY KEY NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    metered     INTEGER NOT NULL DEFAULT 0,
    balance     INTEGER NOT NULL DEFAULT 0,
    -- Credits held by messages not yet handed to a provider. The check makes an overdraw
    -- impossible whatever the code does.
    reserved    INTEGER NOT NULL DEFAULT 0,
    -- Micros of the organization's price currency per calendar month (UTC).
    spend_limit INTEGER,
    CHECK (reserved >= 0 AND reserved <= balance)
) STRICT;

-- Who added credits, when and why.
CREATE TABLE credit_grants (
    id         BLOB    PRIMARY KEY NOT NULL,
    org_id     BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    credits    INTEGER NOT NULL,
    reason     TEXT,
    granted_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX credit_grants_by_org ON credit_grants (org_id, created_at);

-- Estimated cost of the metered messages accepted per month, so the spend limit is checked
-- without reading messages.
CREATE TABLE monthly_spend (
    org_id BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    month  TEXT    NOT NULL,
    spent  INTEGER NOT NULL,
    PRIMARY KEY (org_id, month)
) STRICT;

-- Destination countries; none means the organization's own country only.
CREATE TABLE allowed_countries (
    org_id  BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    country TEXT NOT NULL,
    PRIMARY KEY (org_id, country)
) STRICT;

-- Credits a message reserved when it was queued (0 when unmetered).
ALTER TABLE messages ADD COLUMN credits INTEGER NOT NULL DEFAULT 0;
