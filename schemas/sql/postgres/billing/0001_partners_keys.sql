-- Billing state on PostgreSQL (distributed mode). The SQLite twin lives under
-- schemas/sql/sqlite/billing; both pass the same conformance suite.
CREATE TABLE partners (
    id         TEXT PRIMARY KEY,           -- prt_<20 hex>
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Plan history: a change of plan ends one row and starts the next, so every period can be
-- priced with the plan (and plan version) that was in force.
CREATE TABLE subscriptions (
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    plan_id      TEXT NOT NULL,
    plan_version TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    ended_at     TIMESTAMPTZ,
    PRIMARY KEY (partner_id, started_at)
);
CREATE UNIQUE INDEX subscriptions_one_current ON subscriptions (partner_id) WHERE ended_at IS NULL;

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,          -- key_<20 hex>
    partner_id  TEXT NOT NULL REFERENCES partners (id),
    env         TEXT NOT NULL CHECK (env IN ('live', 'sandbox')),
    secret_hash TEXT NOT NULL UNIQUE,      -- SHA-256 hex of the secret; the secret is never stored
    prefix      TEXT NOT NULL,             -- first characters of the secret, to recognise a key
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_by_partner ON api_keys (partner_id);
