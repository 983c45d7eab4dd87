-- When a partner's personal data was erased on request (`peage partners erase`): its name,
-- external id and billing details are gone, its invoices stay (docs/operations.md, "Erasure").
ALTER TABLE partners ADD COLUMN erased_at TEXT;
