//! Invoice runs and the invoice lifecycle: drafts for every partner due in a period (idempotent:
//! a re-run with the same usage changes nothing), late usage of finalized periods as adjustment
//! lines, finalization (numbered, credits applied, `invoice.finalized` webhook) and void.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use peage_billing_store::{BillingStore, DraftOutcome, InvoiceFilter, Partner};
use peage_core::invoice::{
    late_usage_adjustment, AdjustedInvoice, InvoiceInput, InvoiceLine, Segment,
};
use peage_core::period::{parse_time_zone, BillingPeriod, PeriodLabel};
use peage_core::pricing::{Plan, TaxRate};
use peage_core::{Catalog, Env, Invoice, InvoiceId, InvoiceRecord, InvoiceStatus, MeterUsage};
use peage_usage_store::{UsageQuery, UsageStore};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::webhooks;
use crate::ApiError;

/// Who issues the invoices: shown on the PDF; `prefix` starts every invoice number.
#[derive(Debug, Clone, Serialize)]
pub struct Issuer {
    pub name: String,
    pub address: Vec<String>,
    pub tax_id: Option<String>,
    /// `PEAGE` gives `PEAGE-2026-000123`.
    pub prefix: String,
}

impl Default for Issuer {
    fn default() -> Self {
        Issuer {
            name: "Péage".into(),
            address: Vec::new(),
            tax_id: None,
            prefix: "PEAGE".into(),
        }
    }
}

/// How far back late usage is looked for: finalized periods that ended within this window
/// before the period being billed get adjustment lines (docs/invoices.md).
pub const BACKFILL_WINDOW_DAYS: i64 = 93;

#[derive(Clone)]
pub struct Invoicing {
    pub catalog: Arc<Catalog>,
    pub store: Arc<dyn BillingStore>,
    pub usage: Arc<dyn UsageStore>,
    pub issuer: Issuer,
}

/// What an invoice run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunSummary {
    pub period: String,
    pub partners: usize,
    pub not_due: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub already_finalized: usize,
    /// Amount due of every draft and finalized invoice of the run, per currency.
    pub totals: BTreeMap<String, String>,
    pub errors: Vec<RunError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    pub partner_id: String,
    pub error: String,
}

/// The partner's billing time zone (UTC unless their billing profile names one).
pub async fn partner_time_zone(store: &dyn BillingStore, partner_id: &str) -> Result<Tz, ApiError> {
    match store.billing_profile(partner_id).await? {
        Some(p) => parse_time_zone(&p.timezone).map_err(ApiError::Conflict),
        None => Ok(Tz::UTC),
    }
}

fn new_invoice_id() -> String {
    InvoiceId::from_random(rand::random()).to_string()
}

impl Invoicing {
    /// Records every plan version of the loaded catalog, so periods keep being priced by the
    /// version in force after the catalog changes.
    pub async fn register_plan_versions(&self, now: DateTime<Utc>) -> Result<(), ApiError> {
        for plan in &self.catalog.plans {
            let definition = serde_json::to_string(plan)
                .map_err(|e| ApiError::Internal(format!("plan {}: {e}", plan.id)))?;
            self.store
                .put_plan_version(&plan.id, &plan.version, &definition, now)
                .await?;
        }
        Ok(())
    }

    async fn plan_version(&self, plan_id: &str, version: &str) -> Result<Plan, ApiError> {
        if let Some(p) = self.catalog.plan(plan_id).filter(|p| p.version == version) {
            return Ok(p.clone());
        }
        let stored = self
            .store
            .plan_version(plan_id, version)
            .await?
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "plan {plan_id:?} version {version} is neither in the catalog nor on record"
                ))
            })?;
        serde_json::from_str(&stored).map_err(|e| {
            ApiError::Internal(format!("stored plan {plan_id} version {version}: {e}"))
        })
    }

    /// The partner's time zone and tax override.
    async fn profile(&self, partner_id: &str) -> Result<(Tz, String, Option<TaxRate>), ApiError> {
        match self.store.billing_profile(partner_id).await? {
            Some(p) => {
                let tz = parse_time_zone(&p.timezone).map_err(ApiError::Conflict)?;
                Ok((tz, p.timezone, p.tax))
            }
            None => Ok((Tz::UTC, "UTC".into(), None)),
        }
    }

    async fn usage_in(
        &self,
        partner_id: &str,
        span: &BillingPeriod,
    ) -> Result<Vec<MeterUsage>, ApiError> {
        let query = UsageQuery {
            partner_id: partner_id.to_string(),
            env: Env::Live,
            from: span.start,
            to: span.end,
        };
        Ok(self.usage.meter_usage(&query, &self.catalog.meters).await?)
    }

    /// The billing period of `partner` that starts in `label`, or `None` when none does (a
    /// yearly plan outside its anchor month, or a partner who did not exist yet).
    pub async fn period_of(
        &self,
        partner: &Partner,
        label: PeriodLabel,
    ) -> Result<Option<(BillingPeriod, Tz)>, ApiError> {
        let (tz, _, _) = self.profile(&partner.id).await?;
        let subs = self.store.subscriptions(&partner.id).await?;
        // The plan in force when the month starts decides the period rule; a partner created
        // during the month takes the rule of their first plan.
        let month_start = peage_core::period::start_of_day(
            tz,
            chrono::NaiveDate::from_ymd_opt(label.year, label.month, 1)
                .ok_or_else(|| ApiError::BadRequest(format!("bad period {label}")))?,
        );
        let sub = subs
            .iter()
            .rev()
            .find(|s| s.started_at <= month_start)
            .or_else(|| subs.first());
        let Some(sub) = sub else { return Ok(None) };
        let plan = self.plan_version(&sub.plan_id, &sub.plan_version).await?;
        let Some(period) = plan.period.starting_in(tz, label) else {
            return Ok(None);
        };
        if subs.iter().all(|s| s.started_at >= period.end) {
            return Ok(None);
        }
        Ok(Some((period, tz)))
    }

    /// Prices `period` for the partner with the plan versions in force and today's usage.
    async fn price(
        &self,
        partner: &Partner,
        period: BillingPeriod,
        adjustments: Vec<InvoiceLine>,
    ) -> Result<Invoice, ApiError> {
        let (_, tz_name, tax) = self.profile(&partner.id).await?;
        let subs = self.store.subscriptions(&partner.id).await?;
        let mut parts = Vec::new();
        for s in &subs {
            if let Some(span) = period.overlap(s.started_at, s.ended_at) {
                let plan = self.plan_version(&s.plan_id, &s.plan_version).await?;
                let usage = self.usage_in(&partner.id, &span).await?;
                parts.push((plan, span, usage));
            }
        }
        let input = InvoiceInput {
            partner_id: &partner.id,
            period,
            timezone: &tz_name,
            segments: parts
                .iter()
                .map(|(plan, span, usage)| Segment {
                    plan,
                    span: *span,
                    usage,
                })
                .collect(),
            tax: tax.as_ref(),
            adjustments,
        };
        Invoice::build(&input)
            .map_err(|e| ApiError::Conflict(format!("partner {}: {e}", partner.id)))
    }

    /// Adjustment lines for late usage of the partner's finalized invoices that ended within
    /// the backfill window before `period`.
    async fn late_usage(
        &self,
        partner: &Partner,
        period: BillingPeriod,
    ) -> Result<Vec<InvoiceLine>, ApiError> {
        let finalized = self
            .store
            .invoices(&InvoiceFilter {
                partner_id: Some(partner.id.clone()),
                status: Some(InvoiceStatus::Finalized),
                period_label: None,
            })
            .await?;
        let window_start = period.start - Duration::days(BACKFILL_WINDOW_DAYS);
        let mut lines = Vec::new();
        for past in finalized
            .iter()
            .filter(|r| r.invoice.period.end <= period.start && r.invoice.period.end > window_start)
        {
            let repriced = self.price(partner, past.invoice.period, Vec::new()).await?;
            if repriced.currency != past.invoice.currency {
                tracing::warn!(invoice = %past.id, "late usage in another currency is not adjusted automatically");
                continue;
            }
            let billed = past.invoice.own_subtotal()
                + finalized
                    .iter()
                    .map(|r| r.invoice.adjustments_of(&past.id))
                    .sum::<Decimal>();
            let of = AdjustedInvoice {
                invoice_id: past.id.clone(),
                number: past.number.clone(),
                period: past.invoice.period,
            };
            lines.extend(late_usage_adjustment(
                &of,
                repriced.own_subtotal(),
                billed,
                past.invoice.currency,
            ));
        }
        Ok(lines)
    }

    /// The draft of `partner` for `label`, or `None` when the partner is not due.
    pub async fn draft(
        &self,
        partner: &Partner,
        label: PeriodLabel,
        now: DateTime<Utc>,
    ) -> Result<Option<InvoiceRecord>, ApiError> {
        let Some((period, _)) = self.period_of(partner, label).await? else {
            return Ok(None);
        };
        let adjustments = self.late_usage(partner, period).await?;
        let mut invoice = self.price(partner, period, adjustments).await?;
        let balance = self
            .store
            .credit_balance(&partner.id, invoice.currency.code())
            .await?;
        invoice.apply_credits(balance);
        Ok(Some(InvoiceRecord {
            id: new_invoice_id(),
            number: None,
            status: InvoiceStatus::Draft,
            partner_id: partner.id.clone(),
            period_label: label.to_string(),
            created_at: now,
            updated_at: now,
            finalized_at: None,
            voided_at: None,
            invoice,
        }))
    }

    /// The invoice of the period running now, as it stands (not stored).
    pub async fn upcoming(
        &self,
        partner: &Partner,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRecord, ApiError> {
        let (tz, _, _) = self.profile(&partner.id).await?;
        let sub = &partner.subscription;
        let plan = self.plan_version(&sub.plan_id, &sub.plan_version).await?;
        let label = PeriodLabel::of(plan.period.containing_in(tz, now).start, tz);
        let mut record = match self.draft(partner, label, now).await? {
            Some(r) => r,
            None => {
                return Err(ApiError::Conflict(format!(
                    "partner {} has no billing period running",
                    partner.id
                )))
            }
        };
        record.id = "upcoming".into();
        Ok(record)
    }

    /// Computes and stores the drafts of every partner due in `label`. `progress` is called
    /// after each partner with (done, total).
    pub async fn run(
        &self,
        label: PeriodLabel,
        now: DateTime<Utc>,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<RunSummary, ApiError> {
        self.register_plan_versions(now).await?;
        let partners = self.store.partners().await?;
        let mut summary = RunSummary {
            period: label.to_string(),
            partners: partners.len(),
            ..Default::default()
        };
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        for (i, partner) in partners.iter().enumerate() {
            match self.draft(partner, label, now).await {
                Ok(None) => summary.not_due += 1,
                Ok(Some(draft)) => match self.store.save_draft(&draft).await {
                    Ok(outcome) => {
                        let r = outcome.record();
                        *totals
                            .entry(r.invoice.currency.code().to_string())
                            .or_default() += r.invoice.amount_due;
                        match outcome {
                            DraftOutcome::Created(_) => summary.created += 1,
                            DraftOutcome::Updated(_) => summary.updated += 1,
                            DraftOutcome::Unchanged(_) => summary.unchanged += 1,
                            DraftOutcome::AlreadyFinal(_) => summary.already_finalized += 1,
                        }
                    }
                    Err(e) => summary.errors.push(RunError {
                        partner_id: partner.id.clone(),
                        error: e.to_string(),
                    }),
                },
                Err(e) => summary.errors.push(RunError {
                    partner_id: partner.id.clone(),
                    error: e.to_string(),
                }),
            }
            progress(i + 1, partners.len());
        }
        summary.totals = totals
            .into_iter()
            .map(|(c, t)| (c, t.to_string()))
            .collect();
        Ok(summary)
    }

    /// Finalizes a draft whose period has ended, and queues `invoice.finalized`.
    pub async fn finalize(&self, id: &str, now: DateTime<Utc>) -> Result<InvoiceRecord, ApiError> {
        let draft = self
            .store
            .invoice(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("invoice {id} not found")))?;
        if draft.status == InvoiceStatus::Draft && draft.invoice.period.end > now {
            return Err(ApiError::Conflict(format!(
                "invoice {id} covers a period that ends at {}; it can be finalized once the period is over",
                draft.invoice.period.end.to_rfc3339()
            )));
        }
        let record = self
            .store
            .finalize_invoice(id, &self.issuer.prefix, now)
            .await?;
        webhooks::enqueue(
            self.store.as_ref(),
            "invoice.finalized",
            &format!("invoice.finalized:{}", record.id),
            serde_json::json!({
                "invoice_id": record.id,
                "number": record.number,
                "partner_id": record.partner_id,
                "period_start": record.invoice.period.start,
                "period_end": record.invoice.period.end,
                "currency": record.invoice.currency.code(),
                "total": record.invoice.total.to_string(),
                "amount_due": record.invoice.amount_due.to_string(),
            }),
            now,
        )
        .await?;
        tracing::info!(invoice = %record.id, number = ?record.number, "invoice finalized");
        Ok(record)
    }

    pub async fn void(&self, id: &str, now: DateTime<Utc>) -> Result<InvoiceRecord, ApiError> {
        let record = self.store.void_invoice(id, now).await?;
        tracing::info!(invoice = %record.id, "invoice voided");
        Ok(record)
    }
}
