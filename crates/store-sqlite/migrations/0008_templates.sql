-- Message templates: named bodies with `{{variables}}`, parsed by the API before they get here.
-- `variables` is the JSON array of variables declared at save time (name, and optionally a
-- description and an example). Usage is counted by sends, separately from `updated_at`, so a
-- send never makes an editor's read stale.
CREATE TABLE message_templates (
    id           BLOB    PRIMARY KEY NOT NULL,
    org_id       BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    category     TEXT,
    body         TEXT    NOT NULL,
    variables    TEXT    NOT NULL DEFAULT '[]',
    active       INTEGER NOT NULL DEFAULT 1,
    usage_count  INTEGER NOT NULL DEFAULT 0,
    last_used_at INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (org_id, name)
) STRICT;

CREATE INDEX message_templates_by_org ON message_templates (org_id, id);
