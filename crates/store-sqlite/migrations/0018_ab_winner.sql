-- The variant an A/B test chose for the rest of a run's audience, and when.
ALTER TABLE campaign_runs ADD COLUMN ab_winner INTEGER;
ALTER TABLE campaign_runs ADD COLUMN ab_decided_at INTEGER;
