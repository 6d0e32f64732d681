-- Lists (static memberships) and segments (saved rules selecting contacts). Deleting a list or
-- a contact deletes its memberships, so an erased person leaves no trace in any list.
CREATE TABLE lists (
    id          BLOB    PRIMARY KEY NOT NULL,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    description TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (org_id, name)
) STRICT;

CREATE INDEX lists_by_org ON lists (org_id, id);

CREATE TABLE list_members (
    list_id    BLOB    NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    contact_id BLOB    NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (list_id, contact_id)
) STRICT, WITHOUT ROWID;

-- Segment rules on list membership start from the contact; cascades from a contact too.
CREATE INDEX list_members_by_contact ON list_members (contact_id, list_id);

CREATE TABLE segments (
    id          BLOB    PRIMARY KEY NOT NULL,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    description TEXT,
    rule        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (org_id, name)
) STRICT;

CREATE INDEX segments_by_org ON segments (org_id, id);
