-- Segment prices learned from providers' pricing APIs, with when they were fetched.
CREATE TABLE provider_prices (
    source       text        NOT NULL,
    country      text        NOT NULL,
    price_micros bigint      NOT NULL,
    fetched_at   timestamptz NOT NULL,
    PRIMARY KEY (source, country)
);
