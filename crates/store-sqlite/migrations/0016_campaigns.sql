-- Campaigns: a message (or A/B variants) sent to an audience once, at a time, or on a
-- recurrence. Each occurrence is a run with its own audience snapshot: one row per recipient,
-- written before anything is sent, and released to the message queue under the campaign's
-- throttle. A recipient is `pending` until released, `suppressed` when policy kept it out
-- (opted out, no consent, a country not allowed), `canceled` when the run was canceled first;
-- once released, the message it became says the rest. So the books of a run (pending + sent +
-- delivered + failed + suppressed + canceled = audience) are read, never kept.
CREATE TABLE campaigns (
    id          BLOB    PRIMARY KEY NOT NULL,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    -- Everything the campaign says (content, audience, schedule, throttle…), as the API shows it.
    spec        TEXT    NOT NULL,
    api_key_id  BLOB,
    next_run_at INTEGER,
    current_run BLOB,
    runs        INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX campaigns_by_org ON campaigns (org_id, mode, id);
CREATE INDEX campaigns_due ON campaigns (next_run_at) WHERE status = 'scheduled';

CREATE TABLE campaign_runs (
    id              BLOB    PRIMARY KEY NOT NULL,
    campaign_id     BLOB    NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    org_id          BLOB    NOT NULL,
    mode            TEXT    NOT NULL,
    occurrence      INTEGER NOT NULL,
    -- snapshot (writing the audience), send (releasing it), done, canceled.
    phase           TEXT    NOT NULL,
    audience        INTEGER NOT NULL DEFAULT 0,
    position        TEXT,
    owner           BLOB,
    lease_until     INTEGER,
    next_release_at INTEGER,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
) STRICT;

CREATE INDEX campaign_runs_by_campaign ON campaign_runs (campaign_id, id);
CREATE INDEX campaign_runs_active ON campaign_runs (lease_until) WHERE phase IN ('snapshot', 'send');

CREATE TABLE campaign_recipients (
    run_id     BLOB    NOT NULL REFERENCES campaign_runs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    phone      TEXT    NOT NULL,
    contact_id BLOB,
    country    TEXT,
    variant    INTEGER NOT NULL,
    body       TEXT,
    due_at     INTEGER NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('pending', 'released', 'suppressed', 'canceled')),
    reason     TEXT,
    message_id BLOB,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;

-- One row per number: the snapshot de-duplicates in the database, whatever its size.
CREATE UNIQUE INDEX campaign_recipients_by_phone ON campaign_recipients (run_id, phone);
CREATE INDEX campaign_recipients_pending ON campaign_recipients (run_id, due_at, seq)
    WHERE state = 'pending';

ALTER TABLE messages ADD COLUMN campaign_run_id BLOB;

CREATE INDEX messages_by_campaign_run ON messages (campaign_run_id, created_at)
    WHERE campaign_run_id IS NOT NULL;

-- Replies and opt-outs attributed to a campaign are found by the recipient's number and the
-- time of its message: the index by sender gains the time (it still serves lookups by number).
DROP INDEX inbound_messages_by_sender;
CREATE INDEX inbound_messages_by_sender ON inbound_messages (org_id, from_number, received_at);
