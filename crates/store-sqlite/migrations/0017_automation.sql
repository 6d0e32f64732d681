-- Automation: drip sequences with their enrolments, and triggers with their firings.
CREATE TABLE drips (
    id         BLOB    PRIMARY KEY NOT NULL,
    org_id     BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('active', 'paused')),
    -- Steps and exit rules, as the API shows them.
    spec       TEXT    NOT NULL,
    api_key_id BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX drips_by_org ON drips (org_id, mode, id);

-- One row per number in a drip: a number goes through a drip once.
CREATE TABLE drip_enrollments (
    id          BLOB    PRIMARY KEY NOT NULL,
    org_id      BLOB    NOT NULL,
    drip_id     BLOB    NOT NULL REFERENCES drips (id) ON DELETE CASCADE,
    phone       TEXT    NOT NULL,
    contact_id  BLOB,
    source      TEXT    NOT NULL,
    step        INTEGER NOT NULL,
    next_at     INTEGER,
    state       TEXT    NOT NULL CHECK (state IN ('active', 'completed', 'exited')),
    reason      TEXT,
    error       TEXT,
    enrolled_at INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (drip_id, phone)
) STRICT;

CREATE INDEX drip_enrollments_due ON drip_enrollments (next_at) WHERE state = 'active';
CREATE INDEX drip_enrollments_by_drip ON drip_enrollments (drip_id, id);
-- A number that texts in leaves its drips at once. The number leads: an index led by the
-- organization would be a plan for "every active enrolment of the organization", which
-- PostgreSQL took for the primary-key updates of a drip step on a table without statistics.
CREATE INDEX drip_enrollments_by_phone ON drip_enrollments (phone, org_id) WHERE state = 'active';

-- Each step an enrolment took: the message it sent, or why it was passed over.
CREATE TABLE drip_sends (
    enrollment_id BLOB    NOT NULL REFERENCES drip_enrollments (id) ON DELETE CASCADE,
    step          INTEGER NOT NULL,
    drip_id       BLOB    NOT NULL,
    message_id    BLOB,
    outcome       TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (enrollment_id, step)
) STRICT, WITHOUT ROWID;

CREATE INDEX drip_sends_by_drip ON drip_sends (drip_id, step);

CREATE TABLE triggers (
    id          BLOB    PRIMARY KEY NOT NULL,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('contact.created', 'contact.age', 'event')),
    event       TEXT,
    active      INTEGER NOT NULL,
    spec        TEXT    NOT NULL,
    api_key_id  BLOB,
    swept_until INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX triggers_by_org ON triggers (org_id, mode, id);
CREATE INDEX triggers_by_event ON triggers (org_id, mode, event) WHERE kind = 'event';

-- A trigger fires once per key: the contact's id, or the event's idempotency key.
CREATE TABLE trigger_firings (
    id            BLOB    PRIMARY KEY NOT NULL,
    org_id        BLOB    NOT NULL,
    trigger_id    BLOB    NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    contact_id    BLOB,
    phone         TEXT,
    outcome       TEXT    NOT NULL,
    message_id    BLOB,
    enrollment_id BLOB,
    created_at    INTEGER NOT NULL,
    UNIQUE (trigger_id, key)
) STRICT;

-- Contact sweeps walk an organization's contacts in creation order.
CREATE INDEX contacts_by_created ON contacts (org_id, created_at, id);
CREATE INDEX trigger_firings_by_contact ON trigger_firings (trigger_id, contact_id);
