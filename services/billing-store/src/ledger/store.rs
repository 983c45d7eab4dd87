//! [`LedgerStore`] for every backend that gives the row glue ([`LedgerDb`]): the statements and
//! their order, written once. The rules (invoice numbers, credits taken and given back) are
//! `peage_core`'s.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use peage_core::ids::{InvoiceId, PartnerId, WebhookEndpointId, WebhookMessageId};
use peage_core::invoice::{invoice_number, CreditMovement, InvoiceRecord, InvoiceStatus};
use peage_core::payment::Settlement;
use peage_core::pricing::TaxRate;
use rust_decimal::Decimal;

use super::db::{args, LedgerDb, Row, Sql};
use super::sql;
use super::{
    add_stored, document, endpoint_events, not_found, ts, Attempt, BillingProfile, CreditEntry,
    DashboardGrant, DashboardRole, DraftOutcome, InvoiceFilter, LedgerStore, WebhookDelivery,
    WebhookEndpoint,
};
use crate::BillingStoreError;

pub(super) fn invoice(row: &Row) -> Result<InvoiceRecord, BillingStoreError> {
    let id = row.text("id")?;
    let corrupt = |reason: String| BillingStoreError::Corrupt {
        what: "invoice",
        reason,
    };
    let status = row.text("status")?;
    Ok(InvoiceRecord {
        status: InvoiceStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("status {status:?}")))?,
        invoice: serde_json::from_str(&row.text("document")?)
            .map_err(|e| corrupt(format!("{id}: {e}")))?,
        created_at: row.time("invoice", "created_at")?,
        updated_at: row.time("invoice", "updated_at")?,
        finalized_at: row.opt_time("invoice", "finalized_at")?,
        voided_at: row.opt_time("invoice", "voided_at")?,
        finalized_by: row.opt_text("finalized_by")?,
        voided_by: row.opt_text("voided_by")?,
        number: row.opt_text("number")?,
        partner_id: row.text("partner_id")?,
        period_label: row.text("period_label")?,
        payment: Settlement {
            due_at: row.opt_time("invoice", "due_at")?,
            amount_paid: row.decimal("invoice", "amount_paid")?,
            amount_credited: row.decimal("invoice", "amount_credited")?,
            paid_at: row.opt_time("invoice", "paid_at")?,
            overdue_at: row.opt_time("invoice", "overdue_at")?,
            uncollectible_at: row.opt_time("invoice", "uncollectible_at")?,
            uncollectible_by: row.opt_text("uncollectible_by")?,
        },
        state: Default::default(),
        id,
    }
    .as_of(Utc::now()))
}

/// Queues `invoice.paid` for an invoice just settled (its `paid_at` set in the same
/// transaction, so once).
pub(super) async fn queue_paid(
    db: &mut dyn Sql,
    record: &InvoiceRecord,
    at: DateTime<Utc>,
    ids: &mut (dyn Iterator<Item = String> + Send),
) -> Result<(), BillingStoreError> {
    let event = "invoice.paid";
    let payload = peage_core::invoice::webhook_message(event, at, record.settlement_event());
    queue_webhook(
        db,
        event,
        &format!("{event}:{}", record.id),
        &payload,
        ids,
        at,
    )
    .await
    .map(|_| ())
}

fn credit(row: &Row) -> Result<CreditEntry, BillingStoreError> {
    Ok(CreditEntry {
        id: row.text("id")?,
        partner_id: row.id("credit", "partner_id")?,
        currency: row.text("currency")?,
        amount: row.decimal("credit", "amount")?,
        description: row.text("description")?,
        invoice_id: row.opt_text("invoice_id")?,
        created_at: row.time("credit", "created_at")?,
    })
}

fn endpoint(row: &Row) -> Result<WebhookEndpoint, BillingStoreError> {
    Ok(WebhookEndpoint {
        id: row.id("webhook endpoint", "e_id")?,
        url: row.text("e_url")?,
        secret: row.text("e_secret")?,
        events: endpoint_events(&row.text("e_events")?),
        created_at: row.time("webhook endpoint", "e_created_at")?,
        disabled_at: row.opt_time("webhook endpoint", "e_disabled_at")?,
    })
}

fn delivery(row: &Row) -> Result<WebhookDelivery, BillingStoreError> {
    Ok(WebhookDelivery {
        id: row.id("webhook delivery", "id")?,
        endpoint_id: row.id("webhook delivery", "endpoint_id")?,
        event_type: row.text("event_type")?,
        event_key: row.text("event_key")?,
        payload: row.text("payload")?,
        status: row.text("status")?,
        attempts: row.int("attempts")?,
        next_attempt_at: row.time("webhook delivery", "next_attempt_at")?,
        last_attempt_at: row.opt_time("webhook delivery", "last_attempt_at")?,
        last_status: row.opt_int("last_status")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.time("webhook delivery", "created_at")?,
    })
}

fn profile(row: &Row) -> Result<BillingProfile, BillingStoreError> {
    let tax = match row.opt_text("tax_rate")? {
        Some(r) => Some(TaxRate {
            rate: super::parse_decimal("billing profile", &r)?,
            label: row.opt_text("tax_label")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(BillingProfile {
        partner_id: row.id("billing profile", "partner_id")?,
        timezone: row.text("timezone")?,
        tax,
        net_days: row
            .opt_int("net_days")?
            .map(|d| u32::try_from(d).unwrap_or(peage_core::payment::MAX_NET_DAYS)),
        details: row
            .opt_text("details")?
            .map(|t| {
                serde_json::from_str(&t).map_err(|e| BillingStoreError::Corrupt {
                    what: "billing details",
                    reason: e.to_string(),
                })
            })
            .transpose()?,
        updated_at: row.time("billing profile", "updated_at")?,
    })
}

fn role(row: &Row) -> Result<DashboardRole, BillingStoreError> {
    DashboardRole::from_columns(
        &row.text("role")?,
        row.opt_text("partner_id")?,
        row.opt_text("staff_id")?,
    )
}

/// The sum of credit amounts in `rows`, checked.
fn balance(rows: &[Row]) -> Result<Decimal, BillingStoreError> {
    rows.iter().try_fold(Decimal::ZERO, |sum, r| {
        add_stored("credit", sum, r.decimal("credit", "amount")?)
    })
}

pub(super) async fn insert_credit(
    db: &mut dyn Sql,
    e: &CreditEntry,
) -> Result<(), BillingStoreError> {
    db.execute(
        sql::INSERT_CREDIT,
        args![
            &e.id,
            &e.partner_id,
            &e.currency,
            e.amount.to_string(),
            &e.description,
            e.invoice_id.clone(),
            ts(e.created_at),
        ],
    )
    .await?;
    Ok(())
}

/// The credit entry of a movement an invoice makes.
fn movement_entry(
    record: &InvoiceRecord,
    m: CreditMovement,
    at: DateTime<Utc>,
) -> Result<CreditEntry, BillingStoreError> {
    Ok(CreditEntry {
        id: m.id,
        partner_id: crate::parse_id("invoice", record.partner_id.clone())?,
        currency: record.invoice.currency.code().to_string(),
        amount: m.amount,
        description: m.description,
        invoice_id: Some(record.id.clone()),
        created_at: at,
    })
}

/// Queues `payload` for every active endpoint subscribed to `event_type`, once per `event_key`,
/// in the caller's transaction.
pub(super) async fn queue_webhook(
    db: &mut dyn Sql,
    event_type: &str,
    event_key: &str,
    payload: &str,
    ids: &mut (dyn Iterator<Item = String> + Send),
    at: DateTime<Utc>,
) -> Result<usize, BillingStoreError> {
    let mut queued = 0;
    for row in db.fetch(sql::ENDPOINTS, args![]).await? {
        let ep = endpoint(&row)?;
        if ep.disabled_at.is_some() || !ep.events.iter().any(|t| t == event_type || t == "*") {
            continue;
        }
        let Some(id) = ids.next() else { break };
        let done = db
            .execute(
                sql::QUEUE_DELIVERY,
                args![id, &ep.id, event_type, event_key, payload, ts(at)],
            )
            .await?;
        queued += done as usize;
    }
    Ok(queued)
}

/// The live (not void) invoices of these partners, by (partner, period start).
async fn live_invoices(
    db: &mut dyn Sql,
    partners: &[&str],
) -> Result<HashMap<(String, String), InvoiceRecord>, BillingStoreError> {
    let mut out = HashMap::new();
    for chunk in partners.chunks(500) {
        let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let statement = sql::LIVE_INVOICES_OF.replace("{}", &params.join(", "));
        let args = chunk.iter().map(|p| (*p).into()).collect();
        for row in db.fetch(&statement, args).await? {
            let start = row.text("period_start")?;
            let record = invoice(&row)?;
            out.insert((record.partner_id.clone(), start), record);
        }
    }
    Ok(out)
}

/// Saves drafts inside a transaction (see [`LedgerStore::save_draft`]).
async fn save_in(
    db: &mut dyn Sql,
    drafts: &[InvoiceRecord],
) -> Result<Vec<DraftOutcome>, BillingStoreError> {
    let partners: Vec<&str> = drafts
        .iter()
        .map(|d| d.invoice.partner_id.as_str())
        .collect();
    let mut live = live_invoices(db, &partners).await?;
    let mut out = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let inv = &draft.invoice;
        let key = (inv.partner_id.clone(), ts(inv.period.start));
        let Some(current) = live.remove(&key) else {
            db.execute(
                sql::INSERT_DRAFT,
                args![
                    &draft.id,
                    &inv.partner_id,
                    &draft.period_label,
                    ts(inv.period.start),
                    ts(inv.period.end),
                    inv.currency.code(),
                    inv.total.to_string(),
                    document(inv)?,
                    ts(draft.created_at),
                    ts(draft.updated_at),
                ],
            )
            .await?;
            let mut created = draft.clone();
            created.status = InvoiceStatus::Draft;
            created.number = None;
            out.push(DraftOutcome::Created(created));
            continue;
        };
        if current.status != InvoiceStatus::Draft {
            out.push(DraftOutcome::AlreadyFinal(current));
            continue;
        }
        if current.invoice == *inv {
            out.push(DraftOutcome::Unchanged(current));
            continue;
        }
        db.execute(
            sql::UPDATE_DRAFT,
            args![
                document(inv)?,
                inv.total.to_string(),
                inv.currency.code(),
                ts(inv.period.end),
                ts(draft.updated_at),
                &current.id,
            ],
        )
        .await?;
        out.push(DraftOutcome::Updated(InvoiceRecord {
            invoice: inv.clone(),
            updated_at: draft.updated_at,
            ..current
        }));
    }
    Ok(out)
}

#[async_trait]
impl<D: LedgerDb> LedgerStore for D {
    async fn put_plan_version(
        &self,
        plan_id: &str,
        version: &str,
        definition: &str,
        at: DateTime<Utc>,
    ) -> Result<(), BillingStoreError> {
        self.sql()
            .execute(
                sql::PUT_PLAN_VERSION,
                args![plan_id, version, definition, ts(at)],
            )
            .await?;
        Ok(())
    }

    async fn plan_version(
        &self,
        plan_id: &str,
        version: &str,
    ) -> Result<Option<String>, BillingStoreError> {
        self.sql()
            .fetch_optional(sql::PLAN_VERSION, args![plan_id, version])
            .await?
            .map(|r| r.text("definition"))
            .transpose()
    }

    async fn billing_profile(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Option<BillingProfile>, BillingStoreError> {
        let row = self
            .sql()
            .fetch_optional(sql::PROFILE, args![partner_id])
            .await?;
        row.as_ref().map(profile).transpose()
    }

    async fn put_billing_profile(&self, p: &BillingProfile) -> Result<(), BillingStoreError> {
        self.sql()
            .execute(
                sql::PUT_PROFILE,
                args![
                    &p.partner_id,
                    &p.timezone,
                    p.tax.as_ref().map(|t| t.rate.to_string()),
                    p.tax.as_ref().map(|t| t.label.clone()),
                    p.net_days.map(i64::from),
                    ts(p.updated_at),
                ],
            )
            .await?;
        Ok(())
    }

    async fn put_billing_details(
        &self,
        partner_id: &PartnerId,
        details: &peage_core::invoice::BillTo,
        at: DateTime<Utc>,
    ) -> Result<(), BillingStoreError> {
        let json = serde_json::to_string(details).map_err(|e| BillingStoreError::Corrupt {
            what: "billing details",
            reason: e.to_string(),
        })?;
        self.sql()
            .execute(sql::PUT_DETAILS, args![partner_id, json, ts(at)])
            .await?;
        Ok(())
    }

    async fn billing_profiles(&self) -> Result<Vec<BillingProfile>, BillingStoreError> {
        let rows = self.sql().fetch(sql::PROFILES, args![]).await?;
        rows.iter().map(profile).collect()
    }

    async fn add_credit(&self, entry: &CreditEntry) -> Result<(), BillingStoreError> {
        insert_credit(&mut *self.sql(), entry).await
    }

    async fn credit_entries(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<CreditEntry>, BillingStoreError> {
        let rows = self.sql().fetch(sql::CREDITS_OF, args![partner_id]).await?;
        rows.iter().map(credit).collect()
    }

    async fn credit_balance(
        &self,
        partner_id: &PartnerId,
        currency: &str,
    ) -> Result<Decimal, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(sql::CREDIT_AMOUNTS, args![partner_id, currency])
            .await?;
        balance(&rows)
    }

    async fn credit_balances(
        &self,
    ) -> Result<HashMap<(PartnerId, String), Decimal>, BillingStoreError> {
        let mut out: HashMap<(PartnerId, String), Decimal> = HashMap::new();
        for r in self.sql().fetch(sql::ALL_CREDIT_AMOUNTS, args![]).await? {
            let amount = r.decimal("credit", "amount")?;
            let b = out
                .entry((r.id("credit", "partner_id")?, r.text("currency")?))
                .or_default();
            *b = add_stored("credit", *b, amount)?;
        }
        Ok(out)
    }

    async fn save_draft(&self, draft: &InvoiceRecord) -> Result<DraftOutcome, BillingStoreError> {
        let mut tx = self.begin().await?;
        let outcome = save_in(&mut *tx, std::slice::from_ref(draft)).await?;
        tx.commit().await?;
        outcome
            .into_iter()
            .next()
            .ok_or_else(|| BillingStoreError::Conflict("the draft was not saved".into()))
    }

    async fn save_drafts(
        &self,
        drafts: &[InvoiceRecord],
    ) -> Result<Vec<DraftOutcome>, BillingStoreError> {
        let mut tx = self.begin().await?;
        let out = save_in(&mut *tx, drafts).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn invoices(&self, f: &InvoiceFilter) -> Result<Vec<InvoiceRecord>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                sql::INVOICES,
                args![
                    f.period_label.as_deref(),
                    f.status.map(|s| s.as_str()),
                    f.partner_id.as_ref().map(PartnerId::as_str),
                    f.ended_after.map(ts),
                ],
            )
            .await?;
        rows.iter().map(invoice).collect()
    }

    async fn invoice(&self, id: &InvoiceId) -> Result<Option<InvoiceRecord>, BillingStoreError> {
        let row = self.sql().fetch_optional(sql::INVOICE, args![id]).await?;
        row.as_ref().map(invoice).transpose()
    }

    async fn finalize_invoice(
        &self,
        id: &InvoiceId,
        prefix: &str,
        at: DateTime<Utc>,
        by: &str,
        net_days: u32,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<InvoiceRecord, BillingStoreError> {
        // Stored to the microsecond: answer what is stored.
        let at = super::parse_time("invoice", &ts(at))?;
        let year = at.year();
        let mut tx = self.begin().await?;
        // The number first: its row lock serialises finalizations of one issuer, and rolling
        // back gives the number back (no gaps).
        let n = tx
            .fetch_optional(sql::NEXT_INVOICE_NUMBER, args![prefix, i64::from(year)])
            .await?
            .ok_or_else(|| BillingStoreError::Conflict("no invoice number was given".into()))?
            .int("last")?;
        let row = tx
            .fetch_optional(sql::INVOICE, args![id])
            .await?
            .ok_or_else(|| not_found("invoice", id))?;
        let mut record = invoice(&row)?;
        if record.status != InvoiceStatus::Draft {
            return Err(BillingStoreError::Conflict(format!(
                "invoice {id} is {}; only a draft can be finalized",
                record.status.as_str()
            )));
        }
        let credits = tx
            .fetch(
                sql::CREDIT_AMOUNTS,
                args![&record.partner_id, record.invoice.currency.code()],
            )
            .await?;
        let number = invoice_number(prefix, year, n);
        if let Some(m) = record.finalize(number.clone(), balance(&credits)?, at, by) {
            insert_credit(&mut *tx, &movement_entry(&record, m, at)?).await?;
        }
        record.payment.due_at = Some(peage_core::payment::due_at(at, net_days));
        // Nothing left to pay (prepaid credits covered it): paid as it is finalized.
        if record.left_due().is_zero() {
            record.payment.paid_at = Some(at);
        }
        tx.execute(
            sql::FINALIZE,
            args![
                number,
                document(&record.invoice)?,
                record.invoice.total.to_string(),
                ts(at),
                by,
                id,
                record.payment.due_at.map(ts),
                record.payment.paid_at.map(ts),
            ],
        )
        .await?;
        let record = record.as_of(at);
        let event = "invoice.finalized";
        let payload = peage_core::invoice::webhook_message(event, at, record.finalized_event());
        queue_webhook(&mut *tx, event, &format!("{event}:{id}"), &payload, ids, at).await?;
        if record.payment.paid_at.is_some() {
            queue_paid(&mut *tx, &record, at, ids).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn void_invoice(
        &self,
        id: &InvoiceId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<InvoiceRecord, BillingStoreError> {
        let at = super::parse_time("invoice", &ts(at))?;
        let mut tx = self.begin().await?;
        let changed = tx.execute(sql::VOID, args![ts(at), by, id]).await?;
        let row = tx
            .fetch_optional(sql::INVOICE, args![id])
            .await?
            .ok_or_else(|| not_found("invoice", id))?;
        let record = invoice(&row)?;
        if changed == 0 && !record.payment.amount_paid.is_zero() {
            return Err(BillingStoreError::Conflict(format!(
                "invoice {id} has {} paid; void is for mistakes before any payment, a credit note corrects a paid invoice",
                record.payment.amount_paid
            )));
        }
        if changed == 0 {
            return Err(BillingStoreError::Conflict(format!(
                "invoice {id} is already void"
            )));
        }
        if let Some(m) = record.void_restitution() {
            insert_credit(&mut *tx, &movement_entry(&record, m, at)?).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn add_webhook_endpoint(&self, ep: &WebhookEndpoint) -> Result<(), BillingStoreError> {
        self.sql()
            .execute(
                sql::ADD_ENDPOINT,
                args![
                    &ep.id,
                    &ep.url,
                    &ep.secret,
                    ep.events.join(","),
                    ts(ep.created_at),
                    ep.disabled_at.map(ts),
                ],
            )
            .await?;
        Ok(())
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, BillingStoreError> {
        let rows = self.sql().fetch(sql::ENDPOINTS, args![]).await?;
        rows.iter().map(endpoint).collect()
    }

    async fn replace_webhook_secret(
        &self,
        id: &WebhookEndpointId,
        secret: &str,
    ) -> Result<(), BillingStoreError> {
        let done = self
            .sql()
            .execute(sql::REPLACE_WEBHOOK_SECRET, args![secret, id])
            .await?;
        if done == 0 {
            return Err(not_found("webhook endpoint", id));
        }
        Ok(())
    }

    async fn replace_signing_seed(&self, kid: &str, seed: &str) -> Result<(), BillingStoreError> {
        let done = self
            .sql()
            .execute(sql::REPLACE_SIGNING_SEED, args![seed, kid])
            .await?;
        if done == 0 {
            return Err(not_found("signing key", kid));
        }
        Ok(())
    }

    async fn enqueue_webhook(
        &self,
        event_type: &str,
        event_key: &str,
        payload: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
        at: DateTime<Utc>,
    ) -> Result<usize, BillingStoreError> {
        let mut tx = self.begin().await?;
        let queued = queue_webhook(&mut *tx, event_type, event_key, payload, ids, at).await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn due_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(WebhookDelivery, WebhookEndpoint)>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(sql::DUE_DELIVERIES, args![ts(now), limit])
            .await?;
        rows.iter()
            .map(|r| Ok((delivery(r)?, endpoint(r)?)))
            .collect()
    }

    async fn record_webhook_attempt(
        &self,
        id: &WebhookMessageId,
        at: DateTime<Utc>,
        attempt: &Attempt,
    ) -> Result<(), BillingStoreError> {
        let (status, next, code, error) = match attempt {
            Attempt::Delivered { status } => ("delivered", at, Some(*status), None),
            Attempt::Retry {
                next,
                status,
                error,
            } => ("pending", *next, *status, Some(error.clone())),
            Attempt::GaveUp { status, error } => ("failed", at, *status, Some(error.clone())),
        };
        self.sql()
            .execute(
                sql::RECORD_ATTEMPT,
                args![status, ts(next), ts(at), code, error, id],
            )
            .await?;
        Ok(())
    }

    async fn webhook_deliveries(
        &self,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, BillingStoreError> {
        let rows = self.sql().fetch(sql::DELIVERIES, args![limit]).await?;
        rows.iter().map(delivery).collect()
    }

    async fn create_sign_in_link(&self, link: &DashboardGrant) -> Result<(), BillingStoreError> {
        let (role, partner, staff) = link.role.columns();
        let day = chrono::Duration::days(1);
        let mut db = self.sql();
        db.execute(sql::DELETE_OLD_LINKS, args![ts(link.created_at - day)])
            .await?;
        db.execute(
            sql::DELETE_OLD_SESSIONS,
            args![ts(link.created_at - day * 30)],
        )
        .await?;
        db.execute(
            sql::INSERT_LINK,
            args![
                &link.token_hash,
                role,
                partner,
                staff,
                ts(link.created_at),
                ts(link.expires_at),
            ],
        )
        .await?;
        Ok(())
    }

    async fn redeem_sign_in_link(
        &self,
        link_hash: &str,
        now: DateTime<Utc>,
        session_hash: &str,
        session_expires_at: DateTime<Utc>,
    ) -> Result<Option<DashboardGrant>, BillingStoreError> {
        let mut tx = self.begin().await?;
        let Some(row) = tx
            .fetch_optional(sql::USE_LINK, args![ts(now), link_hash])
            .await?
        else {
            return Ok(None);
        };
        let role = role(&row)?;
        let (r, p, st) = role.columns();
        tx.execute(
            sql::INSERT_SESSION,
            args![session_hash, r, p, st, ts(now), ts(session_expires_at)],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(DashboardGrant {
            token_hash: session_hash.to_string(),
            role,
            created_at: now,
            expires_at: session_expires_at,
        }))
    }

    async fn dashboard_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardGrant>, BillingStoreError> {
        let Some(row) = self
            .sql()
            .fetch_optional(sql::SESSION, args![session_hash, ts(now)])
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(DashboardGrant {
            token_hash: session_hash.to_string(),
            role: role(&row)?,
            created_at: row.time("dashboard session", "created_at")?,
            expires_at: row.time("dashboard session", "expires_at")?,
        }))
    }

    async fn end_dashboard_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), BillingStoreError> {
        self.sql()
            .execute(sql::END_SESSION, args![ts(now), session_hash])
            .await?;
        Ok(())
    }
}
