-- Embedded billing state (SQLite). The PostgreSQL twin lives under schemas/sql/postgres/billing.
-- Times are RFC 3339 UTC text with microseconds, so they sort as text.
CREATE TABLE partners (
    id         TEXT PRIMARY KEY,           -- prt_<20 hex>
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Plan history: a change of plan ends one row and starts the next, so every period can be
-- priced with the plan (and plan version) that was in force.
CREATE TABLE subscriptions (
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    plan_id      TEXT NOT NULL,
    plan_version TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    PRIMARY KEY (partner_id, started_at)
);
CREATE UNIQUE INDEX subscriptions_one_current ON subscriptions (partner_id) WHERE ended_at IS NULL;

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,          -- key_<20 hex>
    partner_id  TEXT NOT NULL REFERENCES partners (id),
    env         TEXT NOT NULL CHECK (env IN ('live', 'sandbox')),
    secret_hash TEXT NOT NULL UNIQUE,      -- SHA-256 hex of the secret; the secret is never stored
    prefix      TEXT NOT NULL,             -- first characters of the secret, to recognise a key
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_by_partner ON api_keys (partner_id);
