-- Billing lifecycle (issue 6): plan versions, partner billing profiles, prepaid credits,
-- invoices with gapless numbers, webhooks. The PostgreSQL twin under schemas/sql/postgres/billing
-- has the same tables and columns; times are RFC 3339 UTC text with microseconds in both, money
-- and quantities exact decimal text.

-- Every plan version the catalog ever loaded, so a period is priced by the version that was in
-- force even after the catalog changed.
CREATE TABLE plan_versions (
    plan_id    TEXT NOT NULL,
    version    TEXT NOT NULL,
    definition TEXT NOT NULL,              -- the plan as JSON
    first_seen TEXT NOT NULL,
    PRIMARY KEY (plan_id, version)
);

CREATE TABLE partner_billing (
    partner_id TEXT PRIMARY KEY REFERENCES partners (id),
    timezone   TEXT NOT NULL,              -- IANA name; periods start at local midnight
    tax_rate   TEXT,                       -- replaces the plan's tax when set
    tax_label  TEXT,
    updated_at TEXT NOT NULL
);

-- Prepaid credits: grants are positive, what invoices take is negative; the balance is the sum.
CREATE TABLE credit_entries (
    id          TEXT PRIMARY KEY,
    partner_id  TEXT NOT NULL REFERENCES partners (id),
    currency    TEXT NOT NULL,
    amount      TEXT NOT NULL,
    description TEXT NOT NULL,
    invoice_id  TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX credit_entries_by_partner ON credit_entries (partner_id, currency);

CREATE TABLE invoices (
    id           TEXT PRIMARY KEY,         -- inv_<20 hex>
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    period_label TEXT NOT NULL,            -- YYYY-MM the period starts in (partner time zone)
    period_start TEXT NOT NULL,
    period_end   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('draft', 'finalized', 'void')),
    number       TEXT UNIQUE,              -- PEAGE-2026-000123, given at finalization
    currency     TEXT NOT NULL,
    total        TEXT NOT NULL,
    document     TEXT NOT NULL,            -- the invoice as JSON
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    finalized_at TEXT,
    voided_at    TEXT
);
-- One invoice per partner and period, unless voided (a voided period can be billed again).
CREATE UNIQUE INDEX invoices_one_per_period ON invoices (partner_id, period_start) WHERE status <> 'void';
CREATE INDEX invoices_by_label ON invoices (period_label, status);

-- Finalized invoices never change and are never deleted; void is the only way out, and a void
-- invoice stays as it is. Enforced here as well as in code, so no API can get around it.
CREATE TRIGGER invoices_final_is_final BEFORE UPDATE ON invoices
WHEN OLD.status <> 'draft' AND (
    OLD.status = 'void'
    OR NEW.status NOT IN ('finalized', 'void')
    OR NEW.document IS NOT OLD.document
    OR NEW.total IS NOT OLD.total
    OR NEW.number IS NOT OLD.number
    OR NEW.partner_id IS NOT OLD.partner_id
    OR NEW.period_start IS NOT OLD.period_start
    OR NEW.period_end IS NOT OLD.period_end
    OR NEW.finalized_at IS NOT OLD.finalized_at)
BEGIN
    SELECT RAISE(ABORT, 'a finalized invoice cannot be changed');
END;
CREATE TRIGGER invoices_final_is_kept BEFORE DELETE ON invoices
WHEN OLD.status <> 'draft'
BEGIN
    SELECT RAISE(ABORT, 'a finalized invoice cannot be deleted');
END;

-- The last number given per issuer prefix and year: taken in the finalizing transaction, so a
-- rolled-back finalization leaves no gap.
CREATE TABLE invoice_numbers (
    prefix TEXT NOT NULL,
    year   INTEGER NOT NULL,
    last   INTEGER NOT NULL,
    PRIMARY KEY (prefix, year)
);

CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,          -- ep_<20 hex>
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,             -- whsec_<base64>, the HMAC key (Standard Webhooks)
    events      TEXT NOT NULL,             -- comma-separated event types
    created_at  TEXT NOT NULL,
    disabled_at TEXT
);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,      -- msg_<20 hex>: the webhook-id header
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_type      TEXT NOT NULL,
    event_key       TEXT NOT NULL,         -- what makes the event happen once (dedup)
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    last_attempt_at TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    UNIQUE (endpoint_id, event_key)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
