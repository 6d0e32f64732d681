-- Token buckets for rate limits (see herald_store::rate).
CREATE TABLE rate_buckets (
    bucket     TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_us INTEGER NOT NULL
) STRICT;
