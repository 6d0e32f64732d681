-- Lists (static memberships) and segments (saved rules selecting contacts). Deleting a list or
-- a contact deletes its memberships, so an erased person leaves no trace in any list.
CREATE TABLE lists (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    description text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    UNIQUE (org_id, name)
);

CREATE INDEX lists_by_org ON lists (org_id, id);

CREATE TABLE list_members (
    list_id    uuid        NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    contact_id uuid        NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    added_at   timestamptz NOT NULL,
    PRIMARY KEY (list_id, contact_id)
);

-- Segment rules on list membership start from the contact; cascades from a contact too.
CREATE INDEX list_members_by_contact ON list_members (contact_id, list_id);

CREATE TABLE segments (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    description text,
    rule        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    UNIQUE (org_id, name)
);

CREATE INDEX segments_by_org ON segments (org_id, id);
