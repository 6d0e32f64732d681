-- Messages received on organizations' numbers.
CREATE TABLE inbound_messages (
    id                  BLOB PRIMARY KEY,
    org_id              BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    from_number         TEXT NOT NULL,
    to_number           TEXT NOT NULL,
    body                TEXT NOT NULL,
    received_at         INTEGER NOT NULL,
    UNIQUE (provider, provider_message_id)
) STRICT;
CREATE INDEX inbound_messages_by_org ON inbound_messages (org_id, id);
