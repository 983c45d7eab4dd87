-- Quota leases (PRODUCT.md §3): what billing granted to each gateway, per partner, env, meter
-- and billing period. The PostgreSQL twin lives under schemas/sql/postgres/billing.
CREATE TABLE quota_grants (
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    env          TEXT NOT NULL CHECK (env IN ('live', 'sandbox')),
    meter        TEXT NOT NULL,
    period_start TEXT NOT NULL,            -- RFC 3339, UTC, microseconds
    gateway_id   TEXT NOT NULL,
    granted      TEXT NOT NULL,            -- exact decimal, as text
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (partner_id, env, meter, period_start, gateway_id)
);
