-- Segment prices learned from providers' pricing APIs, with when they were fetched.
CREATE TABLE provider_prices (
    source       TEXT    NOT NULL,
    country      TEXT    NOT NULL,
    price_micros INTEGER NOT NULL,
    fetched_at   INTEGER NOT NULL,
    PRIMARY KEY (source, country)
) STRICT;
