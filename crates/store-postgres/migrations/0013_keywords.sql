-- An organization's answer to HELP and its own opt-out and opt-in words, on top of the
-- standard ones.
ALTER TABLE organizations ADD COLUMN help_text text;
ALTER TABLE organizations ADD COLUMN opt_out_words jsonb NOT NULL DEFAULT '[]';
ALTER TABLE organizations ADD COLUMN opt_in_words jsonb NOT NULL DEFAULT '[]';
