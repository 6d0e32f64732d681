-- The variant an A/B test chose for the rest of a run's audience, and when.
ALTER TABLE campaign_runs ADD COLUMN ab_winner integer;
ALTER TABLE campaign_runs ADD COLUMN ab_decided_at timestamptz;
