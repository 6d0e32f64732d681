-- Every change to an organization's suppression list: when, what caused it (an inbound keyword,
-- the API, a provider's error, an SNS sync) and the inbound message that asked for it.
CREATE TABLE opt_out_events (
    id          INTEGER PRIMARY KEY,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone       TEXT    NOT NULL,
    action      TEXT    NOT NULL CHECK (action IN ('opt_out', 'opt_in')),
    source      TEXT    NOT NULL,
    message_id  BLOB,
    occurred_at INTEGER NOT NULL
) STRICT;

CREATE INDEX opt_out_events_by_phone ON opt_out_events (org_id, phone, id);
