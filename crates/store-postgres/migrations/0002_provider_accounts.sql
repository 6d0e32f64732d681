-- Provider accounts and routes. Credentials are sealed by the engine (XChaCha20-Poly1305 under
-- the server's secret key) before they reach the database; `credentials_shown` holds only what
-- may be shown (identifiers, and "set" for each secret). Senders are one `kind:value` per line.

CREATE TABLE provider_accounts (
    id                         uuid             PRIMARY KEY,
    org_id                     uuid             NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name                       text             NOT NULL,
    kind                       text             NOT NULL CHECK (kind IN ('twilio', 'sns', 'simulator')),
    credentials_shown          text             NOT NULL,
    -- Empty for an account without credentials (the simulator).
    sealed_credentials         bytea            NOT NULL,
    senders                    text             NOT NULL,
    messages_per_second        double precision NOT NULL CHECK (messages_per_second > 0),
    segments_per_second        double precision CHECK (segments_per_second > 0),
    sender_messages_per_second double precision CHECK (sender_messages_per_second > 0),
    enabled                    boolean          NOT NULL,
    created_at                 timestamptz      NOT NULL,
    updated_at                 timestamptz      NOT NULL,
    UNIQUE (org_id, name),
    -- The target of the routes' foreign key, which makes a route naming another organization's
    -- account impossible, and deleting an account a route names an error.
    UNIQUE (org_id, id)
);

-- One row per account of a route, in order. A route is keyed by country ('' for the default
-- route) and number prefix ('' for the whole country).
CREATE TABLE provider_routes (
    org_id     uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    country    text        NOT NULL,
    prefix     text        NOT NULL,
    position   integer     NOT NULL,
    account_id uuid        NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, country, prefix, position),
    FOREIGN KEY (org_id, account_id) REFERENCES provider_accounts (org_id, id)
);

CREATE INDEX provider_routes_by_account ON provider_routes (org_id, account_id);
