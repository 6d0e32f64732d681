-- Automation: drip sequences with their enrolments, and triggers with their firings.
CREATE TABLE drips (
    id         uuid        PRIMARY KEY,
    org_id     uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode       text        NOT NULL,
    name       text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('active', 'paused')),
    -- Steps and exit rules, as the API shows them.
    spec       jsonb       NOT NULL,
    api_key_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE INDEX drips_by_org ON drips (org_id, mode, id);

-- One row per number in a drip: a number goes through a drip once.
CREATE TABLE drip_enrollments (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL,
    drip_id     uuid        NOT NULL REFERENCES drips (id) ON DELETE CASCADE,
    phone       text        NOT NULL,
    contact_id  uuid,
    source      text        NOT NULL,
    step        integer     NOT NULL,
    next_at     timestamptz,
    state       text        NOT NULL CHECK (state IN ('active', 'completed', 'exited')),
    reason      text,
    error       text,
    enrolled_at timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    UNIQUE (drip_id, phone)
);

CREATE INDEX drip_enrollments_due ON drip_enrollments (next_at) WHERE state = 'active';
CREATE INDEX drip_enrollments_by_drip ON drip_enrollments (drip_id, id);
-- A number that texts in leaves its drips at once. The number leads: an index led by the
-- organization would be a plan for "every active enrolment of the organization", which
-- PostgreSQL took for the primary-key updates of a drip step on a table without statistics.
CREATE INDEX drip_enrollments_by_phone ON drip_enrollments (phone, org_id) WHERE state = 'active';

-- Each step an enrolment took: the message it sent, or why it was passed over.
CREATE TABLE drip_sends (
    enrollment_id uuid        NOT NULL REFERENCES drip_enrollments (id) ON DELETE CASCADE,
    step          integer     NOT NULL,
    drip_id       uuid        NOT NULL,
    message_id    uuid,
    outcome       text        NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (enrollment_id, step)
);

CREATE INDEX drip_sends_by_drip ON drip_sends (drip_id, step);

CREATE TABLE triggers (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    mode        text        NOT NULL,
    name        text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('contact.created', 'contact.age', 'event')),
    event       text,
    active      boolean     NOT NULL,
    spec        jsonb       NOT NULL,
    api_key_id  uuid,
    swept_until timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX triggers_by_org ON triggers (org_id, mode, id);
CREATE INDEX triggers_by_event ON triggers (org_id, mode, event) WHERE kind = 'event';

-- A trigger fires once per key: the contact's id, or the event's idempotency key.
CREATE TABLE trigger_firings (
    id            uuid        PRIMARY KEY,
    org_id        uuid        NOT NULL,
    trigger_id    uuid        NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    key           text        NOT NULL,
    contact_id    uuid,
    phone         text,
    outcome       text        NOT NULL,
    message_id    uuid,
    enrollment_id uuid,
    created_at    timestamptz NOT NULL,
    UNIQUE (trigger_id, key)
);

-- Contact sweeps walk an organization's contacts in creation order.
CREATE INDEX contacts_by_created ON contacts (org_id, created_at, id);
CREATE INDEX trigger_firings_by_contact ON trigger_firings (trigger_id, contact_id);
