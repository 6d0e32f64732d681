-- Token buckets for rate limits shared by every process (see herald_store::rate).
CREATE TABLE rate_buckets (
    bucket     TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_us BIGINT NOT NULL
);
