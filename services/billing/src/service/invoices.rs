//! Finance's invoices as callers see them: listed and read (a partner its own finalized ones,
//! without who finalized them), run, finalized and voided; partners' billing profiles and
//! prepaid credits.

use std::collections::BTreeMap;

use chrono::Utc;
use peage_billing_store::{BillingProfile, CreditEntry, InvoiceFilter, Partner};
use peage_core::period::{parse_time_zone, PeriodLabel};
use peage_core::pricing::TaxRate;
use peage_core::{CreditId, Currency, InvoiceId, InvoiceRecord, InvoiceStatus, PartnerId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::invoicing::{credit_balances, RunSummary};
use super::principal::Principal;

/// Which invoices to list.
#[derive(Debug, Default)]
pub struct InvoiceQuery<'a> {
    /// `YYYY-MM`.
    pub period: Option<&'a str>,
    /// `draft`, `finalized` or `void`.
    pub status: Option<&'a str>,
    pub partner_id: Option<&'a str>,
}

/// `PUT /v1/partners/{id}/billing`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    /// An IANA time zone: billing periods start at its midnight.
    pub timezone: String,
    #[serde(default)]
    pub tax: Option<TaxRequest>,
    /// Payment terms: days from finalization to the due date (the plan's, or 30, when left
    /// out).
    #[serde(default)]
    pub net_days: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxRequest {
    /// A fraction: "0.20" for 20 %.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub rate: Decimal,
    pub label: String,
}

/// `POST /v1/partners/{id}/credits`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// A positive decimal string, at most 1000000000000000 and the currency's decimals.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
    pub description: String,
}

/// A partner's prepaid credits: the balance per currency and every entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Credits {
    pub partner_id: PartnerId,
    /// Currency code → balance (a decimal string).
    pub balances: BTreeMap<String, String>,
    pub entries: Vec<CreditEntry>,
}

/// Who finalized or voided an invoice is the company's business, not its partner's.
fn hide_staff(who: &Principal, records: &mut [InvoiceRecord]) {
    if who.own_partner().is_some() {
        for r in records {
            r.finalized_by = None;
            r.voided_by = None;
        }
    }
}

impl Billing {
    /// The invoices the caller may see that match `q`: a partner session lists its own
    /// finalized and void invoices only, and asking for another partner's is "not found".
    pub async fn invoices(
        &self,
        who: &Principal,
        q: InvoiceQuery<'_>,
    ) -> Result<Vec<InvoiceRecord>, ServiceError> {
        if let Some(p) = q.partner_id {
            who.may_see(p)?;
        }
        let period_label = q
            .period
            .map(|p| super::values::period(p).map(|l| l.to_string()))
            .transpose()?;
        let status = q
            .status
            .map(|s| {
                InvoiceStatus::parse(s).ok_or_else(|| {
                    ServiceError::Invalid(format!(
                        "status must be draft, finalized or void, not {s:?}"
                    ))
                })
            })
            .transpose()?;
        let partner_id = match (q.partner_id, who.own_partner()) {
            (Some(raw), _) => match PartnerId::parse(raw) {
                Ok(id) => Some(id),
                // No partner has an id of another form: it has no invoices.
                Err(_) => return Ok(Vec::new()),
            },
            (None, own) => own.cloned(),
        };
        let mut records = self
            .store
            .invoices(&InvoiceFilter {
                period_label,
                status,
                partner_id,
                ended_after: None,
            })
            .await?;
        records.retain(|r| who.may_see_invoice(r));
        hide_staff(who, &mut records);
        Ok(records)
    }

    /// One invoice, if the caller may see it.
    pub async fn invoice(&self, who: &Principal, id: &str) -> Result<InvoiceRecord, ServiceError> {
        let missing = || ServiceError::not_found("invoice", id);
        let invoice_id = InvoiceId::parse(id).map_err(|_| missing())?;
        let record = self
            .store
            .invoice(&invoice_id)
            .await?
            .filter(|r| who.may_see_invoice(r))
            .ok_or_else(missing)?;
        let mut records = [record];
        hide_staff(who, &mut records);
        let [record] = records;
        Ok(record)
    }

    /// The partner's invoice of the period running now, as it stands (not stored).
    pub async fn upcoming_invoice(&self, partner: &Partner) -> Result<InvoiceRecord, ServiceError> {
        self.invoicing().upcoming(partner, Utc::now()).await
    }

    /// The current period's invoice at the pace so far (`GET …/invoices/forecast`).
    pub async fn forecast_invoice(&self, partner: &Partner) -> Result<InvoiceRecord, ServiceError> {
        self.invoicing().forecast(partner, Utc::now()).await
    }

    /// Drafts (or updates) the invoices of every partner due in `period` (`YYYY-MM`).
    pub async fn run_invoices(&self, period: &str) -> Result<RunSummary, ServiceError> {
        let label: PeriodLabel = super::values::period(period)?;
        self.invoicing().run(label, Utc::now(), &|_, _| {}).await
    }

    /// The name of the partner an invoice is for, for its PDF (empty if it is gone).
    pub async fn partner_name(&self, partner_id: &str) -> Result<String, ServiceError> {
        let Ok(partner_id) = PartnerId::parse(partner_id) else {
            return Ok(String::new());
        };
        Ok(self
            .store
            .partner(&partner_id)
            .await?
            .map(|p| p.name)
            .unwrap_or_default())
    }

    /// The partner's billing profile; UTC and the plan's tax when none was set.
    pub async fn billing_profile(&self, partner: &Partner) -> Result<BillingProfile, ServiceError> {
        let profile = self.store.billing_profile(&partner.id).await?;
        Ok(profile.unwrap_or(BillingProfile {
            partner_id: partner.id.clone(),
            timezone: "UTC".into(),
            tax: None,
            net_days: None,
            details: None,
            updated_at: partner.created_at,
        }))
    }

    /// `PUT /v1/partners/{id}/billing-details` (the partner or finance): checked and stored;
    /// the next draft carries them. Answers them as stored.
    pub async fn put_billing_details(
        &self,
        partner: &Partner,
        details: peage_core::invoice::BillTo,
    ) -> Result<peage_core::invoice::BillTo, ServiceError> {
        let details = details.checked().map_err(ServiceError::Invalid)?;
        self.store
            .put_billing_details(&partner.id, &details, Utc::now())
            .await?;
        Ok(details)
    }

    /// The partner's billing details (empty when none were set).
    pub async fn billing_details(
        &self,
        partner: &Partner,
    ) -> Result<peage_core::invoice::BillTo, ServiceError> {
        Ok(self
            .store
            .billing_profile(&partner.id)
            .await?
            .and_then(|p| p.details)
            .unwrap_or_default())
    }

    /// Sets the partner's billing time zone and tax: the profile before (if any) and after.
    pub async fn put_billing_profile(
        &self,
        partner: Partner,
        req: ProfileRequest,
    ) -> Result<(Option<BillingProfile>, BillingProfile), ServiceError> {
        parse_time_zone(&req.timezone).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if let Some(t) = &req.tax {
            if t.rate < Decimal::ZERO || t.rate >= Decimal::ONE {
                return Err(ServiceError::Invalid(format!(
                    "tax.rate must be a fraction from 0 to below 1 (0.20 for 20 %), not {}",
                    t.rate
                )));
            }
            if t.label.trim().is_empty() {
                return Err(ServiceError::Invalid("tax.label must not be empty".into()));
            }
        }
        if let Some(d) = req
            .net_days
            .filter(|d| *d > peage_core::payment::MAX_NET_DAYS)
        {
            return Err(ServiceError::Invalid(format!(
                "net_days is 0 to {} days, not {d}",
                peage_core::payment::MAX_NET_DAYS
            )));
        }
        let profile = BillingProfile {
            partner_id: partner.id,
            net_days: req.net_days,
            timezone: req.timezone,
            tax: req.tax.map(|t| TaxRate {
                rate: t.rate,
                label: t.label,
            }),
            details: None,
            updated_at: Utc::now(),
        };
        let before = self.store.billing_profile(&profile.partner_id).await?;
        self.store.put_billing_profile(&profile).await?;
        let profile = BillingProfile {
            details: before.as_ref().and_then(|b| b.details.clone()),
            ..profile
        };
        Ok((before, profile))
    }

    /// Grants the partner prepaid credit, rounded to the currency's minor unit.
    pub async fn add_credit(
        &self,
        partner: &Partner,
        req: CreditRequest,
    ) -> Result<CreditEntry, ServiceError> {
        let currency = Currency::parse(&req.currency)
            .ok_or_else(|| ServiceError::Invalid(format!("unknown currency {:?}", req.currency)))?;
        if req.amount <= Decimal::ZERO
            || req.amount > peage_core::money::MAX_AMOUNT
            || req.amount.normalize().scale() > currency.minor_units()
        {
            return Err(ServiceError::Invalid(format!(
                "amount must be positive, at most {} and with at most {} decimals for {}",
                peage_core::money::MAX_AMOUNT,
                currency.minor_units(),
                currency.code()
            )));
        }
        let entry = CreditEntry {
            id: CreditId::from_random(rand::random()).to_string(),
            partner_id: partner.id.clone(),
            currency: currency.code().to_string(),
            amount: currency.round(req.amount),
            description: req.description,
            invoice_id: None,
            created_at: Utc::now(),
        };
        self.store.add_credit(&entry).await?;
        Ok(entry)
    }

    /// The partner's credit balances and entries.
    pub async fn credits(&self, partner: &Partner) -> Result<Credits, ServiceError> {
        let entries = self.store.credit_entries(&partner.id).await?;
        let balances = credit_balances(entries.iter())?
            .into_iter()
            .map(|(c, b)| (c, b.to_string()))
            .collect();
        Ok(Credits {
            partner_id: partner.id.clone(),
            balances,
            entries,
        })
    }
}
