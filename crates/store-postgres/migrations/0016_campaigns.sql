-- Campaigns: a message (or A/B variants) sent to an audience once, at a time, or on a
-- recurrence. Each occurrence is a run with its own audience snapshot: one row per recipient,
-- written before anything is sent, and released to the message queue under the campaign's
-- throttle. A recipient is `pending` until released, `suppressed` when policy kept it out
-- (opted out, no consent, a country not allowed), `canceled` when the run was canceled first;
-- once released, the message it became says the rest. So the books of a run (pending + sent +
-- delivered + failed + suppressed + canceled = audience) are read, never kept.
CREATE TABLE campaigns (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode        text        NOT NULL,
    name        text        NOT NULL,
    status      text        NOT NULL,
    -- Everything the campaign says (content, audience, schedule, throttle…), as the API shows it.
    spec        jsonb       NOT NULL,
    api_key_id  uuid,
    next_run_at timestamptz,
    current_run uuid,
    runs        bigint      NOT NULL DEFAULT 0,
    error       text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX campaigns_by_org ON campaigns (org_id, mode, id);
CREATE INDEX campaigns_due ON campaigns (next_run_at) WHERE status = 'scheduled';

CREATE TABLE campaign_runs (
    id              uuid        PRIMARY KEY,
    campaign_id     uuid        NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    org_id          uuid        NOT NULL,
    mode            text        NOT NULL,
    occurrence      timestamptz NOT NULL,
    -- snapshot (writing the audience), send (releasing it), done, canceled.
    phase           text        NOT NULL,
    audience        bigint      NOT NULL DEFAULT 0,
    position        jsonb,
    owner           uuid,
    lease_until     timestamptz,
    next_release_at timestamptz,
    error           text,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);

CREATE INDEX campaign_runs_by_campaign ON campaign_runs (campaign_id, id);
CREATE INDEX campaign_runs_active ON campaign_runs (lease_until) WHERE phase IN ('snapshot', 'send');

CREATE TABLE campaign_recipients (
    run_id     uuid        NOT NULL REFERENCES campaign_runs (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    phone      text        NOT NULL,
    contact_id uuid,
    country    text,
    variant    integer     NOT NULL,
    body       text,
    due_at     timestamptz NOT NULL,
    state      text        NOT NULL CHECK (state IN ('pending', 'released', 'suppressed', 'canceled')),
    reason     text,
    message_id uuid,
    PRIMARY KEY (run_id, seq)
);

-- One row per number: the snapshot de-duplicates in the database, whatever its size.
CREATE UNIQUE INDEX campaign_recipients_by_phone ON campaign_recipients (run_id, phone);
CREATE INDEX campaign_recipients_pending ON campaign_recipients (run_id, due_at, seq)
    WHERE state = 'pending';

ALTER TABLE messages ADD COLUMN campaign_run_id uuid;

CREATE INDEX messages_by_campaign_run ON messages (campaign_run_id, created_at)
    WHERE campaign_run_id IS NOT NULL;

-- Replies and opt-outs attributed to a campaign are found by the recipient's number and the
-- time of its message: the index by sender gains the time (it still serves lookups by number).
DROP INDEX inbound_messages_by_sender;
CREATE INDEX inbound_messages_by_sender ON inbound_messages (org_id, from_number, received_at);
