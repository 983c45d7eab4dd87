//! Invoice runs and the invoice lifecycle: drafts for every partner due in a period (idempotent:
//! a re-run with the same usage changes nothing), late usage of finalized periods as adjustment
//! lines, finalization (numbered, credits applied, `invoice.finalized` webhook) and void.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use peage_billing_store::{
    BillingProfile, BillingStore, DraftOutcome, InvoiceFilter, Partner, PartnerCoupon, Subscription,
};
use peage_core::coupon::Coupon;
use peage_core::invoice::{
    late_usage_adjustment, AdjustedInvoice, InvoiceInput, InvoiceLine, Segment,
};
use peage_core::period::{parse_time_zone, BillingPeriod, PeriodLabel, PeriodRule};
use peage_core::pricing::{Plan, TaxRate};
use peage_core::{
    Catalog, Env, Invoice, InvoiceId, InvoiceRecord, InvoiceStatus, MeterUsage, PartnerId,
};
use peage_usage_store::{UsageQuery, UsageStore};
use rust_decimal::Decimal;
use serde::Serialize;

use super::error::ServiceError;
use super::webhooks;

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
/// before the period being billed get adjustment lines (docs/pricing.md, rule 17).
pub const BACKFILL_WINDOW_DAYS: i64 = 93;

#[derive(Clone)]
pub struct Invoicing {
    pub catalog: Arc<Catalog>,
    pub store: Arc<dyn BillingStore>,
    pub usage: Arc<dyn UsageStore>,
    pub issuer: Issuer,
}

/// What an invoice run did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunError {
    pub partner_id: String,
    pub error: String,
}

/// The partner's billing time zone (UTC unless their billing profile names one).
pub async fn partner_time_zone(
    store: &dyn BillingStore,
    partner_id: &PartnerId,
) -> Result<Tz, ServiceError> {
    let profile = store.billing_profile(partner_id).await?;
    zone_of(profile.as_ref())
        .map(|(tz, _)| tz)
        .map_err(|e| ServiceError::WrongState(e.to_string()))
}

/// The time zone a billing profile names, and its name; UTC without a profile.
fn zone_of(
    profile: Option<&BillingProfile>,
) -> Result<(Tz, String), peage_core::period::UnknownTimeZone> {
    match profile {
        Some(p) => Ok((parse_time_zone(&p.timezone)?, p.timezone.clone())),
        None => Ok((Tz::UTC, "UTC".to_string())),
    }
}

/// The coupons of `attached` (in attachment order) that discount `period`: attached before it
/// ends, not removed before it ends, and within their duration counted in periods of `rule`
/// from the one they were attached in.
fn applying<'a>(
    attached: &'a [PartnerCoupon],
    rule: &PeriodRule,
    tz: Tz,
    period: &BillingPeriod,
) -> Vec<&'a Coupon> {
    attached
        .iter()
        .filter(|c| c.attached_at < period.end && c.removed_at.is_none_or(|r| r >= period.end))
        .filter(|c| {
            peage_core::coupon::period_index(rule, tz, c.attached_at, period)
                .is_some_and(|index| c.coupon.applies_to_period(index))
        })
        .map(|c| &c.coupon)
        .collect()
}

/// Drafts stored per transaction by an invoice run.
const SAVE_BATCH: usize = 500;

/// What billing knows of one partner for invoicing.
struct PartnerBook {
    partner: Partner,
    tz: Tz,
    tz_name: String,
    tax: Option<TaxRate>,
    /// The billing details each draft carries.
    bill_to: Option<peage_core::invoice::BillTo>,
    /// Oldest first.
    subs: Vec<Subscription>,
    finalized: Vec<InvoiceRecord>,
    /// Prepaid credit balance per currency.
    balances: HashMap<String, Decimal>,
    /// Coupons attached (removed ones too), in the order they were attached.
    coupons: Vec<PartnerCoupon>,
}

impl PartnerBook {
    fn new(
        partner: Partner,
        profile: Option<&BillingProfile>,
        subs: Vec<Subscription>,
        finalized: Vec<InvoiceRecord>,
        balances: HashMap<String, Decimal>,
        coupons: Vec<PartnerCoupon>,
    ) -> Result<PartnerBook, ServiceError> {
        let (tz, tz_name) = zone_of(profile)
            .map_err(|e| ServiceError::WrongState(format!("partner {}: {e}", partner.id)))?;
        let tax = profile.and_then(|p| p.tax.clone());
        let bill_to = profile
            .and_then(|p| p.details.clone())
            .filter(|d| !d.is_empty());
        Ok(PartnerBook {
            partner,
            tz,
            tz_name,
            tax,
            bill_to,
            subs,
            finalized,
            balances,
            coupons,
        })
    }
}

/// Usage read ahead for an invoice run: span → partner → usage.
#[derive(Default)]
struct UsageCache(HashMap<Span, HashMap<String, Vec<MeterUsage>>>);

/// A span's bounds, `[start, end)`.
type Span = (DateTime<Utc>, DateTime<Utc>);

fn new_invoice_id() -> String {
    InvoiceId::from_random(rand::random()).to_string()
}

impl Invoicing {
    /// Records every plan version of the loaded catalog, so periods keep being priced by the
    /// version in force after the catalog changes.
    pub async fn register_plan_versions(&self, now: DateTime<Utc>) -> Result<(), ServiceError> {
        for plan in &self.catalog.plans {
            let definition = serde_json::to_string(plan)
                .map_err(|e| ServiceError::Corrupt(format!("plan {}: {e}", plan.id)))?;
            self.store
                .put_plan_version(&plan.id, &plan.version, &definition, now)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn plan_version(
        &self,
        plan_id: &str,
        version: &str,
    ) -> Result<Plan, ServiceError> {
        if let Some(p) = self.catalog.plan(plan_id).filter(|p| p.version == version) {
            return Ok(p.clone());
        }
        let stored = self
            .store
            .plan_version(plan_id, version)
            .await?
            .ok_or_else(|| {
                ServiceError::CatalogDrift(format!(
                    "plan {plan_id:?} version {version} is neither in the catalog nor on record"
                ))
            })?;
        serde_json::from_str(&stored).map_err(|e| {
            ServiceError::Corrupt(format!("stored plan {plan_id} version {version}: {e}"))
        })
    }

    /// Everything billing knows of one partner for invoicing, read with single queries.
    async fn book(&self, partner: &Partner) -> Result<PartnerBook, ServiceError> {
        let profile = self.store.billing_profile(&partner.id).await?;
        let subs = self.store.subscriptions(&partner.id).await?;
        let finalized = self
            .store
            .invoices(&InvoiceFilter {
                partner_id: Some(partner.id.clone()),
                status: Some(InvoiceStatus::Finalized),
                period_label: None,
                ended_after: None,
            })
            .await?;
        let entries = self.store.credit_entries(&partner.id).await?;
        let balances = credit_balances(entries.iter())?.into_iter().collect();
        let coupons = self.store.partner_coupons(&partner.id).await?;
        PartnerBook::new(
            partner.clone(),
            profile.as_ref(),
            subs,
            finalized,
            balances,
            coupons,
        )
    }

    async fn usage_in(
        &self,
        partner_id: &str,
        span: &BillingPeriod,
        cache: &UsageCache,
    ) -> Result<Vec<MeterUsage>, ServiceError> {
        if let Some(u) = cache
            .0
            .get(&(span.start, span.end))
            .and_then(|m| m.get(partner_id))
        {
            return Ok(u.clone());
        }
        let query = UsageQuery {
            partner_id: partner_id.to_string(),
            env: Env::Live,
            from: span.start,
            to: span.end,
        };
        Ok(self.usage.meter_usage(&query, &self.catalog.meters).await?)
    }

    /// The partner's billing period that starts in `label`, or `None` when none does (a
    /// yearly plan outside its anchor month, or a partner who did not exist yet).
    async fn period_in(
        &self,
        book: &PartnerBook,
        label: PeriodLabel,
    ) -> Result<Option<BillingPeriod>, ServiceError> {
        // The plan in force when the month starts decides the period rule; a partner created
        // during the month takes the rule of their first plan.
        let month_start = peage_core::period::start_of_day(
            book.tz,
            chrono::NaiveDate::from_ymd_opt(label.year, label.month, 1)
                .ok_or_else(|| ServiceError::Invalid(format!("bad period {label}")))?,
        );
        let subs = &book.subs;
        let sub = subs
            .iter()
            .rev()
            .find(|s| s.started_at <= month_start)
            .or_else(|| subs.first());
        let Some(sub) = sub else { return Ok(None) };
        let plan = self.plan_version(&sub.plan_id, &sub.plan_version).await?;
        let Some(period) = plan.period.starting_in(book.tz, label) else {
            return Ok(None);
        };
        if subs.iter().all(|s| s.started_at >= period.end) {
            return Ok(None);
        }
        // Every subscription ended before the period (an erased partner): nothing is due.
        if subs
            .iter()
            .all(|s| s.ended_at.is_some_and(|e| e <= period.start))
        {
            return Ok(None);
        }
        Ok(Some(period))
    }

    /// The parts of `period` each subscription covers.
    fn spans(book: &PartnerBook, period: BillingPeriod) -> Vec<(&Subscription, BillingPeriod)> {
        book.subs
            .iter()
            .filter_map(|s| {
                period
                    .overlap(s.started_at, s.ended_at)
                    .map(|span| (s, span))
            })
            .collect()
    }

    /// Reads each event's amount for the plan's charges that price each event (a per-event
    /// minimum or maximum), into the usage of their meters.
    async fn read_event_amounts(
        &self,
        partner_id: &str,
        plan: &Plan,
        span: &BillingPeriod,
        usage: &mut [MeterUsage],
    ) -> Result<(), ServiceError> {
        for charge in plan.charges.iter().filter(|c| c.prices_each_event()) {
            let Some(meter) = self.catalog.meter(&charge.meter) else {
                continue;
            };
            let query = UsageQuery {
                partner_id: partner_id.to_string(),
                env: Env::Live,
                from: span.start,
                to: span.end,
            };
            let amounts = self.usage.event_amounts(&query, meter).await?;
            if let Some(u) = usage.iter_mut().find(|u| u.meter == charge.meter) {
                u.amounts = Some(amounts);
            }
        }
        Ok(())
    }

    /// Prices `period` for the partner with the plan versions in force and today's usage.
    async fn price(
        &self,
        book: &PartnerBook,
        period: BillingPeriod,
        adjustments: Vec<InvoiceLine>,
        cache: &UsageCache,
    ) -> Result<Invoice, ServiceError> {
        self.price_paced(book, period, adjustments, cache, None)
            .await
    }

    /// [`Self::price`], the usage of the span running at `pace` (if one is) projected to the
    /// span's end at the pace so far ([`peage_core::alert::project_usage`]).
    async fn price_paced(
        &self,
        book: &PartnerBook,
        period: BillingPeriod,
        adjustments: Vec<InvoiceLine>,
        cache: &UsageCache,
        pace: Option<DateTime<Utc>>,
    ) -> Result<Invoice, ServiceError> {
        let mut parts = Vec::new();
        for (s, span) in Self::spans(book, period) {
            let plan = self.plan_version(&s.plan_id, &s.plan_version).await?;
            let mut usage = self
                .usage_in(book.partner.id.as_str(), &span, cache)
                .await?;
            self.read_event_amounts(book.partner.id.as_str(), &plan, &span, &mut usage)
                .await?;
            if let Some(now) = pace.filter(|&n| span.start < n && n < span.end) {
                let gone = Decimal::from((now - span.start).num_milliseconds());
                let whole = Decimal::from((span.end - span.start).num_milliseconds());
                let overflow = || {
                    ServiceError::WrongState(format!(
                        "partner {}: the forecast overflows",
                        book.partner.id
                    ))
                };
                let elapsed = gone.checked_div(whole).ok_or_else(overflow)?;
                usage =
                    peage_core::alert::project_usage(&self.catalog.meters, &plan, &usage, elapsed)
                        .map_err(|_| overflow())?;
            }
            parts.push((plan, span, usage));
        }
        // Periods are counted in the rule of the plan at the period's end.
        let coupons = match parts.last() {
            Some((plan, _, _)) => applying(&book.coupons, &plan.period, book.tz, &period),
            None => Vec::new(),
        };
        let input = InvoiceInput {
            partner_id: book.partner.id.as_str(),
            period,
            timezone: &book.tz_name,
            segments: parts
                .iter()
                .map(|(plan, span, usage)| Segment {
                    plan,
                    span: *span,
                    usage,
                })
                .collect(),
            tax: book.tax.as_ref(),
            adjustments,
            coupons,
        };
        Invoice::build(&input)
            .map_err(|e| ServiceError::WrongState(format!("partner {}: {e}", book.partner.id)))
    }

    /// The partner's finalized invoices whose late usage belongs on an invoice for `period`.
    fn adjustable(
        book: &PartnerBook,
        period: BillingPeriod,
    ) -> impl Iterator<Item = &InvoiceRecord> {
        let window_start = period.start - Duration::days(BACKFILL_WINDOW_DAYS);
        book.finalized.iter().filter(move |r| {
            r.invoice.period.end <= period.start && r.invoice.period.end > window_start
        })
    }

    /// Adjustment lines for late usage of the partner's finalized invoices that ended within
    /// the backfill window before `period`.
    async fn late_usage(
        &self,
        book: &PartnerBook,
        period: BillingPeriod,
        cache: &UsageCache,
    ) -> Result<Vec<InvoiceLine>, ServiceError> {
        let mut lines = Vec::new();
        for past in Self::adjustable(book, period) {
            let repriced = self
                .price(book, past.invoice.period, Vec::new(), cache)
                .await?;
            if repriced.currency != past.invoice.currency {
                tracing::warn!(invoice = %past.id, "late usage in another currency is not adjusted automatically");
                continue;
            }
            let overflow = |e: peage_core::money::Overflow| {
                ServiceError::WrongState(format!(
                    "partner {}: invoice {}: {e}",
                    book.partner.id, past.id
                ))
            };
            let adjusted = book
                .finalized
                .iter()
                .map(|r| r.invoice.adjustments_of(&past.id))
                .collect::<Result<Vec<_>, _>>()
                .map_err(overflow)?;
            let billed = peage_core::money::checked_total(
                std::iter::once(past.invoice.own_subtotal().map_err(overflow)?).chain(adjusted),
            )
            .ok_or_else(|| overflow(peage_core::money::Overflow))?;
            let of = AdjustedInvoice {
                invoice_id: past.id.clone(),
                number: past.number.clone(),
                period: past.invoice.period,
            };
            lines.extend(
                late_usage_adjustment(
                    &of,
                    repriced.own_subtotal().map_err(overflow)?,
                    billed,
                    past.invoice.currency,
                )
                .map_err(overflow)?,
            );
        }
        Ok(lines)
    }

    async fn draft_with(
        &self,
        book: &PartnerBook,
        label: PeriodLabel,
        now: DateTime<Utc>,
        cache: &UsageCache,
    ) -> Result<Option<InvoiceRecord>, ServiceError> {
        let Some(period) = self.period_in(book, label).await? else {
            return Ok(None);
        };
        let adjustments = self.late_usage(book, period, cache).await?;
        let invoice = self.price(book, period, adjustments, cache).await?;
        Ok(Some(Self::drafted(book, label, invoice, now)))
    }

    /// A draft record of `invoice`, the partner's prepaid credit applied.
    fn drafted(
        book: &PartnerBook,
        label: PeriodLabel,
        mut invoice: Invoice,
        now: DateTime<Utc>,
    ) -> InvoiceRecord {
        let balance = book
            .balances
            .get(invoice.currency.code())
            .copied()
            .unwrap_or_default();
        invoice.apply_credits(balance);
        invoice.bill_to = book.bill_to.clone();
        InvoiceRecord {
            id: new_invoice_id(),
            number: None,
            status: InvoiceStatus::Draft,
            partner_id: book.partner.id.to_string(),
            period_label: label.to_string(),
            created_at: now,
            updated_at: now,
            finalized_at: None,
            voided_at: None,
            finalized_by: None,
            voided_by: None,
            payment: Default::default(),
            state: Default::default(),
            invoice,
        }
    }

    /// What `partner` would owe for the period of `plan` running at `now` had they been on
    /// `plan` for all of it (from their first subscription, if that came later): their usage so
    /// far, the meters of this invoicing's catalog, their prepaid credit. No late-usage
    /// adjustments, and nothing is stored.
    pub async fn preview(
        &self,
        partner: &Partner,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRecord, ServiceError> {
        let mut book = self.book(partner).await?;
        let period = plan.period.containing_in(book.tz, now);
        let joined = book.subs.first().map_or(period.start, |s| s.started_at);
        book.subs = vec![Subscription {
            plan_id: plan.id.clone(),
            plan_version: plan.version.clone(),
            started_at: joined.max(period.start),
            ended_at: None,
        }];
        let label = PeriodLabel::of(period.start, book.tz);
        let invoice = self
            .price(&book, period, Vec::new(), &UsageCache::default())
            .await?;
        let mut record = Self::drafted(&book, label, invoice, now);
        record.id = "preview".into();
        Ok(record)
    }

    /// The invoice of the period running at `now` had `partner` moved to `to` at `at` (within
    /// that period): the period cut at `at`, each part priced by its plan, the usage so far,
    /// late-usage adjustments and prepaid credit as the draft has them. Not stored (`id` is
    /// `quote`).
    pub async fn quote_change(
        &self,
        partner: &Partner,
        to: &Plan,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRecord, ServiceError> {
        let mut book = self.book(partner).await?;
        let sub = &partner.subscription;
        let from = self.plan_version(&sub.plan_id, &sub.plan_version).await?;
        let period = from.period.containing_in(book.tz, now);
        for s in book.subs.iter_mut().filter(|s| s.ended_at.is_none()) {
            s.ended_at = Some(at);
        }
        book.subs.push(Subscription {
            plan_id: to.id.clone(),
            plan_version: to.version.clone(),
            started_at: at,
            ended_at: None,
        });
        let label = PeriodLabel::of(period.start, book.tz);
        let cache = UsageCache::default();
        let adjustments = self.late_usage(&book, period, &cache).await?;
        let invoice = self.price(&book, period, adjustments, &cache).await?;
        let mut record = Self::drafted(&book, label, invoice, now);
        record.id = "quote".into();
        Ok(record)
    }

    /// The draft of `partner` for `label`, or `None` when the partner is not due.
    pub async fn draft(
        &self,
        partner: &Partner,
        label: PeriodLabel,
        now: DateTime<Utc>,
    ) -> Result<Option<InvoiceRecord>, ServiceError> {
        let book = self.book(partner).await?;
        self.draft_with(&book, label, now, &UsageCache::default())
            .await
    }

    /// The month the period running at `now` starts in, by the partner's plan version.
    async fn running_label(
        &self,
        book: &PartnerBook,
        now: DateTime<Utc>,
    ) -> Result<PeriodLabel, ServiceError> {
        let sub = &book.partner.subscription;
        let plan = self.plan_version(&sub.plan_id, &sub.plan_version).await?;
        Ok(PeriodLabel::of(
            plan.period.containing_in(book.tz, now).start,
            book.tz,
        ))
    }

    fn no_period(book: &PartnerBook) -> ServiceError {
        ServiceError::WrongState(format!(
            "partner {} has no billing period running",
            book.partner.id
        ))
    }

    /// The draft of the period running at `now` as it stands (`id` is `upcoming`).
    async fn running_draft(
        &self,
        book: &PartnerBook,
        now: DateTime<Utc>,
        cache: &UsageCache,
    ) -> Result<InvoiceRecord, ServiceError> {
        let label = self.running_label(book, now).await?;
        let mut record = self
            .draft_with(book, label, now, cache)
            .await?
            .ok_or_else(|| Self::no_period(book))?;
        record.id = "upcoming".into();
        Ok(record)
    }

    /// The invoice of the period running now, as it stands (not stored).
    pub async fn upcoming(
        &self,
        partner: &Partner,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRecord, ServiceError> {
        let book = self.book(partner).await?;
        self.running_draft(&book, now, &UsageCache::default()).await
    }

    /// The invoice of the period running now as it would end at the pace so far: additive
    /// meters projected to the period's end, none past a hard quota (not stored; `id` is
    /// `forecast`).
    pub async fn forecast(
        &self,
        partner: &Partner,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRecord, ServiceError> {
        let book = self.book(partner).await?;
        let label = self.running_label(&book, now).await?;
        let period = self
            .period_in(&book, label)
            .await?
            .ok_or_else(|| Self::no_period(&book))?;
        let cache = UsageCache::default();
        let adjustments = self.late_usage(&book, period, &cache).await?;
        let invoice = self
            .price_paced(&book, period, adjustments, &cache, Some(now))
            .await?;
        let mut record = Self::drafted(&book, label, invoice, now);
        record.id = "forecast".into();
        Ok(record)
    }

    /// The invoices of the periods running at `now` for many partners at once, each with its
    /// period's usage of every meter (finance's overview): billing state in a handful of
    /// queries and usage one grouped query per distinct period, as the invoice run reads them.
    /// A partner whose period is not the common one is priced on its own, as
    /// [`Invoicing::upcoming`] would.
    pub async fn upcoming_many(
        &self,
        partners: Vec<Partner>,
        now: DateTime<Utc>,
    ) -> Result<
        Vec<(
            Partner,
            Result<(InvoiceRecord, Vec<MeterUsage>), ServiceError>,
        )>,
        ServiceError,
    > {
        let label = PeriodLabel::of(now, chrono_tz::UTC);
        let kept: HashMap<String, Partner> = partners
            .iter()
            .map(|p| (p.id.to_string(), p.clone()))
            .collect();
        let (books, cache) = self.prepare(partners, label).await?;
        let mut out = Vec::with_capacity(books.len());
        for (id, book) in books {
            let Some(partner) = kept.get(&id).cloned() else {
                continue;
            };
            let row = match book {
                // Its period starts in the month prepared for: priced from what was read.
                Ok(book) if self.running_label(&book, now).await.ok() == Some(label) => {
                    self.upcoming_of(&book, now, &cache).await
                }
                // Another month (an anchor day, a yearly plan, a time zone): on its own, as
                // `upcoming` does, since its late usage may reach further back.
                Ok(_) => self.upcoming_alone(&partner, now).await,
                Err(e) => Err(e),
            };
            out.push((partner, row));
        }
        Ok(out)
    }

    /// [`Invoicing::upcoming`] and the period's usage, for one partner.
    async fn upcoming_alone(
        &self,
        partner: &Partner,
        now: DateTime<Utc>,
    ) -> Result<(InvoiceRecord, Vec<MeterUsage>), ServiceError> {
        let record = self.upcoming(partner, now).await?;
        let period = record.invoice.period;
        let usage = self
            .usage_in(partner.id.as_str(), &period, &UsageCache::default())
            .await?;
        Ok((record, usage))
    }

    /// The upcoming invoice of a prepared partner, and its period's usage.
    async fn upcoming_of(
        &self,
        book: &PartnerBook,
        now: DateTime<Utc>,
        cache: &UsageCache,
    ) -> Result<(InvoiceRecord, Vec<MeterUsage>), ServiceError> {
        let record = self.running_draft(book, now, cache).await?;
        let period = record.invoice.period;
        let usage = self
            .usage_in(book.partner.id.as_str(), &period, cache)
            .await?;
        Ok((record, usage))
    }

    /// Reads billing state for every partner at once (a handful of queries, not a handful per
    /// partner) and the usage of every span the run prices, one query per span.
    async fn prepare(
        &self,
        partners: Vec<Partner>,
        label: PeriodLabel,
    ) -> Result<(Vec<(String, Result<PartnerBook, ServiceError>)>, UsageCache), ServiceError> {
        let mut subs = self.store.all_subscriptions().await?;
        let profiles: HashMap<PartnerId, BillingProfile> = self
            .store
            .billing_profiles()
            .await?
            .into_iter()
            .map(|p| (p.partner_id.clone(), p))
            .collect();
        let mut finalized: HashMap<String, Vec<InvoiceRecord>> = HashMap::new();
        // Only those late usage can still adjust: periods that ended within the backfill window
        // before a period starting in `label`'s month (two days more for time zones).
        let month_start = chrono::NaiveDate::from_ymd_opt(label.year, label.month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc());
        for r in self
            .store
            .invoices(&InvoiceFilter {
                status: Some(InvoiceStatus::Finalized),
                ended_after: month_start
                    .map(|t| t - Duration::days(BACKFILL_WINDOW_DAYS) - Duration::days(2)),
                ..Default::default()
            })
            .await?
        {
            finalized.entry(r.partner_id.clone()).or_default().push(r);
        }
        let mut balances: HashMap<PartnerId, HashMap<String, Decimal>> = HashMap::new();
        for ((partner, currency), b) in self.store.credit_balances().await? {
            balances.entry(partner).or_default().insert(currency, b);
        }
        let mut coupons: HashMap<PartnerId, Vec<PartnerCoupon>> = HashMap::new();
        for c in self.store.all_partner_coupons().await? {
            coupons.entry(c.partner_id.clone()).or_default().push(c);
        }
        let mut books = Vec::with_capacity(partners.len());
        let mut spans: HashMap<Span, Vec<String>> = HashMap::new();
        for partner in partners {
            let id = partner.id.clone();
            let book = PartnerBook::new(
                partner,
                profiles.get(&id),
                subs.remove(&id).unwrap_or_default(),
                finalized.remove(id.as_str()).unwrap_or_default(),
                balances.remove(&id).unwrap_or_default(),
                coupons.remove(&id).unwrap_or_default(),
            );
            if let Ok(book) = &book {
                if let Ok(Some(period)) = self.period_in(book, label).await {
                    let mut periods = vec![period];
                    periods.extend(Self::adjustable(book, period).map(|r| r.invoice.period));
                    for p in periods {
                        for (_, span) in Self::spans(book, p) {
                            spans
                                .entry((span.start, span.end))
                                .or_default()
                                .push(id.to_string());
                        }
                    }
                }
            }
            books.push((id.to_string(), book));
        }
        let mut cache = UsageCache::default();
        for ((from, to), ids) in spans {
            if ids.len() < 2 {
                continue; // asked for when priced
            }
            let usage = self
                .usage
                .meter_usage_many(&ids, Env::Live, from, to, &self.catalog.meters)
                .await?;
            cache.0.insert((from, to), usage);
        }
        Ok((books, cache))
    }

    /// Stores a batch of drafts in one transaction; if that fails, one by one, so one bad
    /// draft fails alone.
    async fn save(
        &self,
        drafts: Vec<InvoiceRecord>,
        summary: &mut RunSummary,
        totals: &mut BTreeMap<String, Decimal>,
    ) {
        let outcomes: Vec<Result<DraftOutcome, peage_billing_store::BillingStoreError>> =
            match self.store.save_drafts(&drafts).await {
                Ok(o) => o.into_iter().map(Ok).collect(),
                Err(_) => {
                    let mut each = Vec::with_capacity(drafts.len());
                    for d in &drafts {
                        each.push(self.store.save_draft(d).await);
                    }
                    each
                }
            };
        for (draft, outcome) in drafts.iter().zip(outcomes) {
            match outcome {
                Ok(outcome) => {
                    let r = outcome.record();
                    let total = totals
                        .entry(r.invoice.currency.code().to_string())
                        .or_default();
                    match total.checked_add(r.invoice.amount_due) {
                        Some(sum) => *total = sum,
                        None => summary.errors.push(RunError {
                            partner_id: draft.partner_id.clone(),
                            error: format!(
                                "the run's total in {} overflows; this partner's draft is saved but not counted in it",
                                r.invoice.currency.code()
                            ),
                        }),
                    }
                    match outcome {
                        DraftOutcome::Created(_) => summary.created += 1,
                        DraftOutcome::Updated(_) => summary.updated += 1,
                        DraftOutcome::Unchanged(_) => summary.unchanged += 1,
                        DraftOutcome::AlreadyFinal(_) => summary.already_finalized += 1,
                    }
                }
                Err(error) => summary.errors.push(RunError {
                    partner_id: draft.partner_id.clone(),
                    error: error.to_string(),
                }),
            }
        }
    }

    /// Computes and stores the drafts of every partner due in `label`. `progress` is called
    /// as partners are done with (done, total).
    pub async fn run(
        &self,
        label: PeriodLabel,
        now: DateTime<Utc>,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<RunSummary, ServiceError> {
        let started = std::time::Instant::now();
        let result = self.run_drafts(label, now, progress).await;
        let (computed, failed) = match &result {
            Ok(s) => (
                (s.created + s.updated + s.unchanged) as u64,
                s.errors.len() as u64,
            ),
            Err(_) => (0, 1),
        };
        peage_telemetry::emit!(peage_telemetry::InvoiceRunFinished {
            period: &label.to_string(),
            computed,
            failed,
            elapsed: started.elapsed(),
        });
        result
    }

    async fn run_drafts(
        &self,
        label: PeriodLabel,
        now: DateTime<Utc>,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<RunSummary, ServiceError> {
        self.register_plan_versions(now).await?;
        let partners = self.store.partners().await?;
        let total = partners.len();
        let mut summary = RunSummary {
            period: label.to_string(),
            partners: total,
            ..Default::default()
        };
        let (books, cache) = self.prepare(partners, label).await?;
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut batch = Vec::new();
        for (i, (partner_id, book)) in books.iter().enumerate() {
            let drafted = match book {
                Ok(book) => self.draft_with(book, label, now, &cache).await,
                Err(e) => Err(ServiceError::WrongState(e.to_string())),
            };
            match drafted {
                Ok(None) => summary.not_due += 1,
                Ok(Some(draft)) => batch.push(draft),
                Err(e) => summary.errors.push(RunError {
                    partner_id: partner_id.clone(),
                    error: e.to_string(),
                }),
            }
            if batch.len() >= SAVE_BATCH || i + 1 == total {
                self.save(std::mem::take(&mut batch), &mut summary, &mut totals)
                    .await;
                progress(i + 1, total);
            }
        }
        summary.totals = totals
            .into_iter()
            .map(|(c, t)| (c, t.to_string()))
            .collect();
        Ok(summary)
    }

    /// The invoice `raw` names, and its id; an id that is not one is "not found" too.
    async fn existing_invoice(
        &self,
        raw: &str,
    ) -> Result<(InvoiceId, InvoiceRecord), ServiceError> {
        let missing = || ServiceError::not_found("invoice", raw);
        let id = InvoiceId::parse(raw).map_err(|_| missing())?;
        let record = self.store.invoice(&id).await?.ok_or_else(missing)?;
        Ok((id, record))
    }

    /// Finalizes a draft whose period has ended, and queues `invoice.finalized`; `by` names who
    /// (the audit log's actor). Answers the invoice before and after.
    pub async fn finalize(
        &self,
        raw: &str,
        now: DateTime<Utc>,
        by: &str,
    ) -> Result<(InvoiceRecord, InvoiceRecord), ServiceError> {
        let (id, draft) = self.existing_invoice(raw).await?;
        if draft.status == InvoiceStatus::Draft && draft.invoice.period.end > now {
            return Err(ServiceError::WrongState(format!(
                "invoice {id} covers a period that ends at {}; it can be finalized once the period is over",
                draft.invoice.period.end.to_rfc3339()
            )));
        }
        let net_days = self.net_days(&draft).await?;
        // Its invoice.finalized webhook is queued in the finalizing transaction.
        let record = self
            .store
            .finalize_invoice(
                &id,
                &self.issuer.prefix,
                now,
                by,
                net_days,
                &mut webhooks::message_ids(),
            )
            .await?;
        tracing::info!(invoice = %record.id, number = ?record.number, by, "invoice finalized");
        Ok((draft, record))
    }

    /// The payment terms of an invoice about to be finalized: the partner's billing profile's,
    /// else its plan's, else [`peage_core::payment::DEFAULT_NET_DAYS`].
    async fn net_days(&self, draft: &InvoiceRecord) -> Result<u32, ServiceError> {
        let partner: PartnerId = draft
            .partner_id
            .parse()
            .map_err(|_| ServiceError::Corrupt(format!("invoice {} partner", draft.id)))?;
        if let Some(d) = self
            .store
            .billing_profile(&partner)
            .await?
            .and_then(|p| p.net_days)
        {
            return Ok(d);
        }
        let plan = match &draft.invoice.plan_version {
            v if !v.is_empty() => self.plan_version(&draft.invoice.plan_id, v).await.ok(),
            _ => None,
        };
        Ok(plan
            .and_then(|p| p.net_days)
            .unwrap_or(peage_core::payment::DEFAULT_NET_DAYS))
    }

    /// Voids an invoice; `by` names who. Answers the invoice before and after.
    pub async fn void(
        &self,
        raw: &str,
        now: DateTime<Utc>,
        by: &str,
    ) -> Result<(InvoiceRecord, InvoiceRecord), ServiceError> {
        let (id, before) = self.existing_invoice(raw).await?;
        let record = self.store.void_invoice(&id, now, by).await?;
        tracing::info!(invoice = %record.id, by, "invoice voided");
        Ok((before, record))
    }
}

/// A partner's credit balance per currency, summed with checked arithmetic: entries stored
/// before amounts were bounded (`money::MAX_AMOUNT`) give an error for this partner, never a
/// panic.
pub(crate) fn credit_balances<'a>(
    entries: impl Iterator<Item = &'a peage_billing_store::CreditEntry>,
) -> Result<std::collections::BTreeMap<String, Decimal>, ServiceError> {
    let mut balances: std::collections::BTreeMap<String, Decimal> = Default::default();
    for e in entries {
        let b = balances.entry(e.currency.clone()).or_default();
        *b = peage_core::money::checked_total([*b, e.amount]).ok_or_else(|| {
            ServiceError::Corrupt(format!(
                "the credit balance in {} is too large to add up; remove or correct its entries",
                e.currency
            ))
        })?;
    }
    Ok(balances)
}
