-- Quota leases (PRODUCT.md §3): what billing granted to each gateway, per partner, env, meter
-- and billing period. The sum of a period's rows never exceeds a hard quota's limit; grants are
-- decided under a per-quota advisory lock, so concurrent gateways cannot both take the last unit.
CREATE TABLE quota_grants (
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    env          TEXT NOT NULL CHECK (env IN ('live', 'sandbox')),
    meter        TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    gateway_id   TEXT NOT NULL,
    granted      TEXT NOT NULL,            -- exact decimal, as text
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (partner_id, env, meter, period_start, gateway_id)
);
