-- An organization's answer to HELP and its own opt-out and opt-in words (JSON arrays), on top
-- of the standard ones.
ALTER TABLE organizations ADD COLUMN help_text TEXT;
ALTER TABLE organizations ADD COLUMN opt_out_words TEXT NOT NULL DEFAULT '[]';
ALTER TABLE organizations ADD COLUMN opt_in_words TEXT NOT NULL DEFAULT '[]';
