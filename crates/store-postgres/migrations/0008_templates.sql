-- Message templates: named bodies with `{{variables}}`, parsed by the API before they get here.
-- `variables` is the JSON array of variables declared at save time (name, and optionally a
-- description and an example). Usage is counted by sends, separately from `updated_at`, so a
-- send never makes an editor's read stale.
CREATE TABLE message_templates (
    id           uuid        PRIMARY KEY,
    org_id       uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    category     text,
    body         text        NOT NULL,
    variables    jsonb       NOT NULL DEFAULT '[]',
    active       boolean     NOT NULL DEFAULT true,
    usage_count  bigint      NOT NULL DEFAULT 0,
    last_used_at timestamptz,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    UNIQUE (org_id, name)
);

CREATE INDEX message_templates_by_org ON message_templates (org_id, id);
