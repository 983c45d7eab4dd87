//! The ledger's SQL, written once for SQLite and PostgreSQL: `$n` parameters, times as
//! fixed-width RFC 3339 text (text order is time order), decimals as exact text.

pub const PUT_PLAN_VERSION: &str =
    "INSERT INTO plan_versions (plan_id, version, definition, first_seen) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (plan_id, version) DO NOTHING";
pub const PLAN_VERSION: &str =
    "SELECT definition FROM plan_versions WHERE plan_id = $1 AND version = $2";

pub const PROFILE: &str =
    "SELECT partner_id, timezone, tax_rate, tax_label, net_days, details, updated_at \
     FROM partner_billing WHERE partner_id = $1";
pub const PROFILES: &str =
    "SELECT partner_id, timezone, tax_rate, tax_label, net_days, details, updated_at \
     FROM partner_billing ORDER BY partner_id";
/// Sets the billing details only: a partner without a profile gets one in UTC.
pub const PUT_DETAILS: &str =
    "INSERT INTO partner_billing (partner_id, timezone, details, updated_at) \
     VALUES ($1, 'UTC', $2, $3) ON CONFLICT (partner_id) DO UPDATE SET \
     details = excluded.details, updated_at = excluded.updated_at";
pub const PUT_PROFILE: &str =
    "INSERT INTO partner_billing (partner_id, timezone, tax_rate, tax_label, net_days, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (partner_id) DO UPDATE SET \
     timezone = excluded.timezone, tax_rate = excluded.tax_rate, \
     tax_label = excluded.tax_label, net_days = excluded.net_days, \
     updated_at = excluded.updated_at";

pub const INSERT_CREDIT: &str = "INSERT INTO credit_entries (id, partner_id, currency, amount, description, invoice_id, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub const CREDITS_OF: &str =
    "SELECT id, partner_id, currency, amount, description, invoice_id, created_at \
     FROM credit_entries WHERE partner_id = $1 ORDER BY created_at, id";
pub const CREDIT_AMOUNTS: &str =
    "SELECT amount FROM credit_entries WHERE partner_id = $1 AND currency = $2";
pub const ALL_CREDIT_AMOUNTS: &str = "SELECT partner_id, currency, amount FROM credit_entries";

/// The columns an invoice record is read from.
macro_rules! invoice_columns {
    () => {
        "id, number, status, partner_id, period_label, created_at, updated_at, finalized_at, \
         voided_at, finalized_by, voided_by, document, due_at, amount_paid, amount_credited, \
         paid_at, overdue_at, uncollectible_at, uncollectible_by"
    };
}

pub const INVOICE: &str = concat!(
    "SELECT ",
    invoice_columns!(),
    " FROM invoices WHERE id = $1"
);
/// Optional filters as `($n IS NULL OR col = $n)`, so the SQL stays static.
pub const INVOICES: &str = concat!(
    "SELECT ",
    invoice_columns!(),
    " FROM invoices WHERE ($1 IS NULL OR period_label = $1) AND ($2 IS NULL OR status = $2) \
     AND ($3 IS NULL OR partner_id = $3) AND ($4 IS NULL OR period_end > $4) \
     ORDER BY period_start, partner_id, created_at"
);
/// The live (not void) invoices of some partners, `{}` the list of parameters.
pub const LIVE_INVOICES_OF: &str = concat!(
    "SELECT ",
    invoice_columns!(),
    ", period_start FROM invoices WHERE status <> 'void' AND partner_id IN ({})"
);
pub const INSERT_DRAFT: &str =
    "INSERT INTO invoices (id, partner_id, period_label, period_start, period_end, status, \
     number, currency, total, document, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, 'draft', NULL, $6, $7, $8, $9, $10)";
pub const UPDATE_DRAFT: &str =
    "UPDATE invoices SET document = $1, total = $2, currency = $3, period_end = $4, \
     updated_at = $5 WHERE id = $6 AND status = 'draft'";
/// The next number of a prefix and year; its row lock serialises finalizations of one issuer,
/// and rolling back gives the number back.
pub const NEXT_INVOICE_NUMBER: &str =
    "INSERT INTO invoice_numbers (prefix, year, last) VALUES ($1, $2, 1) \
     ON CONFLICT (prefix, year) DO UPDATE SET last = invoice_numbers.last + 1 RETURNING last";
pub const FINALIZE: &str =
    "UPDATE invoices SET status = 'finalized', number = $1, document = $2, total = $3, \
     finalized_at = $4, updated_at = $4, finalized_by = $5, due_at = $7, paid_at = $8 \
     WHERE id = $6 AND status = 'draft'";
/// Sets what payments and credit notes covered, and when that first settled it.
pub const SETTLE: &str = "UPDATE invoices SET amount_paid = $1, amount_credited = $2, \
     paid_at = $3, updated_at = $4 WHERE id = $5";
pub const VOID: &str =
    "UPDATE invoices SET status = 'void', voided_at = $1, updated_at = $1, voided_by = $2 \
     WHERE id = $3 AND status IN ('draft', 'finalized') AND amount_paid = '0'";

/// The columns a webhook endpoint is read from, prefixed `e_`.
macro_rules! endpoint_columns {
    () => {
        "e.id AS e_id, e.url AS e_url, e.secret AS e_secret, e.events AS e_events, \
         e.created_at AS e_created_at, e.disabled_at AS e_disabled_at"
    };
}
/// The columns a webhook delivery is read from.
macro_rules! delivery_columns {
    () => {
        "d.id, d.endpoint_id, d.event_type, d.event_key, d.payload, d.status, d.attempts, \
         d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.created_at"
    };
}

pub const ADD_ENDPOINT: &str =
    "INSERT INTO webhook_endpoints (id, url, secret, events, created_at, disabled_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub const ENDPOINTS: &str = concat!(
    "SELECT ",
    endpoint_columns!(),
    " FROM webhook_endpoints e ORDER BY e.created_at, e.id"
);
pub const REPLACE_WEBHOOK_SECRET: &str = "UPDATE webhook_endpoints SET secret = $1 WHERE id = $2";
pub const REPLACE_SIGNING_SEED: &str = "UPDATE signing_keys SET seed = $1 WHERE kid = $2";
pub const QUEUE_DELIVERY: &str =
    "INSERT INTO webhook_deliveries (id, endpoint_id, event_type, event_key, payload, status, \
     attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) \
     ON CONFLICT (endpoint_id, event_key) DO NOTHING";
pub const DUE_DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    ", ",
    endpoint_columns!(),
    " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
     WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
     ORDER BY d.next_attempt_at, d.id LIMIT $2"
);
pub const RECORD_ATTEMPT: &str =
    "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, \
     next_attempt_at = $2, last_attempt_at = $3, last_status = $4, last_error = $5 WHERE id = $6";
pub const DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries d ORDER BY d.created_at DESC, d.id DESC LIMIT $1"
);

/// Housekeeping: links a day past their expiry are of no use any more (not even to tell why a
/// link failed), nor sessions a month past theirs.
pub const DELETE_OLD_LINKS: &str = "DELETE FROM dashboard_sign_in_links WHERE expires_at < $1";
pub const DELETE_OLD_SESSIONS: &str = "DELETE FROM dashboard_sessions WHERE expires_at < $1";
pub const INSERT_LINK: &str = "INSERT INTO dashboard_sign_in_links (token_hash, role, partner_id, staff_id, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub const USE_LINK: &str = "UPDATE dashboard_sign_in_links SET used_at = $1 \
     WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
     RETURNING role, partner_id, staff_id";
pub const INSERT_SESSION: &str = "INSERT INTO dashboard_sessions (token_hash, role, partner_id, staff_id, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub const SESSION: &str =
    "SELECT role, partner_id, staff_id, created_at, expires_at FROM dashboard_sessions \
     WHERE token_hash = $1 AND ended_at IS NULL AND expires_at > $2";
pub const END_SESSION: &str =
    "UPDATE dashboard_sessions SET ended_at = $1 WHERE token_hash = $2 AND ended_at IS NULL";
