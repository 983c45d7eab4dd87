-- Getting paid (docs/pricing.md, "Payments"): a finalized invoice's due date (finalization plus
-- the payment terms' net days), what payments and credit notes have covered, when it was
-- settled or reported overdue (each webhook once), and a write-off. Times are RFC 3339 text,
-- amounts exact decimal text.
ALTER TABLE invoices ADD COLUMN due_at TEXT;
ALTER TABLE invoices ADD COLUMN amount_paid TEXT NOT NULL DEFAULT '0';
-- Summed in Rust from the invoice's credit notes whenever one is made (exact decimals, the
-- same on both databases).
ALTER TABLE invoices ADD COLUMN amount_credited TEXT NOT NULL DEFAULT '0';
ALTER TABLE invoices ADD COLUMN paid_at TEXT;
ALTER TABLE invoices ADD COLUMN overdue_at TEXT;
ALTER TABLE invoices ADD COLUMN uncollectible_at TEXT;
ALTER TABLE invoices ADD COLUMN uncollectible_by TEXT;

-- Payment terms: net days per partner (a plan's come from the catalog).
ALTER TABLE partner_billing ADD COLUMN net_days INTEGER;

-- Payments, never changed once recorded.
CREATE TABLE payments (
    id          TEXT PRIMARY KEY,             -- pay_<20 hex>
    invoice_id  TEXT NOT NULL REFERENCES invoices (id),
    partner_id  TEXT NOT NULL REFERENCES partners (id),
    amount      TEXT NOT NULL,
    currency    TEXT NOT NULL,
    paid_on     TEXT NOT NULL,                -- YYYY-MM-DD, the day it was received
    reference   TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    recorded_by TEXT NOT NULL
);
CREATE INDEX payments_invoice ON payments (invoice_id, recorded_at);

-- Open invoices by due date, for the overdue scan.
CREATE INDEX invoices_due ON invoices (status, due_at);
