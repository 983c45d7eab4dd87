-- Credit notes (docs/pricing.md, "Credit notes"): corrections of finalized invoices in the
-- partner's favour, numbered in their own gapless series (invoice_numbers, prefix
-- "<issuer>-CN"). A note is stored whole and never changes. Times are RFC 3339 text.
CREATE TABLE credit_notes (
    id         TEXT PRIMARY KEY,              -- cn_<20 hex>
    number     TEXT NOT NULL UNIQUE,
    invoice_id TEXT NOT NULL REFERENCES invoices (id),
    partner_id TEXT NOT NULL REFERENCES partners (id),
    document   TEXT NOT NULL,                 -- peage_core::credit_note::CreditNote as JSON
    total      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE INDEX credit_notes_invoice ON credit_notes (invoice_id, created_at);
CREATE INDEX credit_notes_partner ON credit_notes (partner_id, created_at);
