-- Scheduled plan changes (docs/pricing.md, "Scheduled plan changes"): a partner moves to
-- `plan_id` at `at` (the plan's version in force then). At most one is pending per partner;
-- applied, cancelled and failed ones stay as history. Times are RFC 3339 text (UTC,
-- microseconds), as in the ledger, so they compare as text.
CREATE TABLE plan_changes (
    id           TEXT PRIMARY KEY,            -- pch_<20 hex>
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    plan_id      TEXT NOT NULL,
    at           TEXT NOT NULL,
    scheduled_at TEXT NOT NULL,
    scheduled_by TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'cancelled', 'failed')),
    settled_at   TEXT,
    settled_by   TEXT,
    error        TEXT
);

CREATE UNIQUE INDEX plan_changes_one_pending ON plan_changes (partner_id) WHERE status = 'pending';
CREATE INDEX plan_changes_due ON plan_changes (status, at);
