-- Named staff (issue 15): the people who sign in to the dashboard for the company, each with a
-- role (viewer: reads; finance: reads and works invoices, credits and partners; admin:
-- everything, staff and service tokens included). Sign-in links and sessions belong to one
-- person (or one partner), so the audit log and invoices name who acted. Unused links and open
-- sessions of the old shared "finance" identity end here: everyone signs in again with a link
-- of their own (`peage sign-in-link --staff <email>`).
CREATE TABLE staff (
    id          TEXT PRIMARY KEY,          -- stf_<20 hex>
    email       TEXT NOT NULL UNIQUE,      -- lower case
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'finance', 'admin')),
    created_at  TEXT NOT NULL,
    disabled_at TEXT
);

DROP TABLE dashboard_sign_in_links;
DROP TABLE dashboard_sessions;

CREATE TABLE dashboard_sign_in_links (
    token_hash TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('staff', 'partner')),
    partner_id TEXT REFERENCES partners (id),
    staff_id   TEXT REFERENCES staff (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    CHECK ((role = 'partner') = (partner_id IS NOT NULL)),
    CHECK ((role = 'staff') = (staff_id IS NOT NULL))
);

CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('staff', 'partner')),
    partner_id TEXT REFERENCES partners (id),
    staff_id   TEXT REFERENCES staff (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at   TEXT,
    CHECK ((role = 'partner') = (partner_id IS NOT NULL)),
    CHECK ((role = 'staff') = (staff_id IS NOT NULL))
);
CREATE INDEX dashboard_sessions_by_staff ON dashboard_sessions (staff_id);

-- Who finalized and who voided an invoice: the audit log's actor (`staff:<email>`, `admin`,
-- `service:<id>:<scope>`). Kept as fixed as the rest of a finalized invoice.
ALTER TABLE invoices ADD COLUMN finalized_by TEXT;
ALTER TABLE invoices ADD COLUMN voided_by TEXT;

DROP TRIGGER invoices_final_is_final;
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
    OR NEW.finalized_at IS NOT OLD.finalized_at
    OR NEW.finalized_by IS NOT OLD.finalized_by)
BEGIN
    SELECT RAISE(ABORT, 'a finalized invoice cannot be changed');
END;

-- What a changed thing was before the action, next to what it became (`after`).
ALTER TABLE audit_log ADD COLUMN before TEXT;
