-- Every change to an organization's suppression list: when, what caused it (an inbound keyword,
-- the API, a provider's error, an SNS sync) and the inbound message that asked for it.
CREATE TABLE opt_out_events (
    id          bigserial   PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    phone       text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('opt_out', 'opt_in')),
    source      text        NOT NULL,
    message_id  uuid,
    occurred_at timestamptz NOT NULL
);

CREATE INDEX opt_out_events_by_phone ON opt_out_events (org_id, phone, id);
