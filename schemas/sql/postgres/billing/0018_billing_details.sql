-- A partner's billing details (legal name, postal address, tax id, email), as JSON: set by the
-- partner or finance, copied onto each invoice when it is drafted (docs/pricing.md, "Billing
-- details"). Finance's time zone, tax and payment terms stay in their own columns.
ALTER TABLE partner_billing ADD COLUMN details TEXT;
