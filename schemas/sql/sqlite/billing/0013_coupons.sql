-- Coupons (docs/pricing.md, "Coupons"): a definition finance creates once, by code, and the
-- partners it is attached to. Which billing periods a coupon discounts follows from when it was
-- attached (and removed), so nothing is counted down when invoices are finalized. Times are
-- RFC 3339 text (UTC, microseconds), as in the ledger, so they compare as text.
CREATE TABLE coupons (
    code       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,                 -- peage_core::coupon::Coupon as JSON
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE partner_coupons (
    id          TEXT PRIMARY KEY,             -- pcp_<20 hex>
    partner_id  TEXT NOT NULL REFERENCES partners (id),
    code        TEXT NOT NULL REFERENCES coupons (code),
    attached_at TEXT NOT NULL,
    attached_by TEXT NOT NULL,
    removed_at  TEXT,
    removed_by  TEXT
);

-- A coupon is attached to a partner at most once at a time.
CREATE UNIQUE INDEX partner_coupons_once ON partner_coupons (partner_id, code) WHERE removed_at IS NULL;
CREATE INDEX partner_coupons_partner ON partner_coupons (partner_id, attached_at);
