//! Automatic finalization (docs/pricing.md, "Automatic finalization"): once a period has been
//! over for the grace period, during which late usage still lands on its draft, billing
//! refreshes the draft one last time and finalizes it. One billing instance does it at a time:
//! it holds the `auto-finalize` job lease while it works, and another takes over only once the
//! lease has expired. Finalizing is itself conditional (a draft becomes finalized once), so
//! even two instances at once could not finalize an invoice twice.

use chrono::{DateTime, Duration, Months, Utc};
use peage_billing_store::InvoiceFilter;
use peage_core::invoice::InvoiceStatus;
use peage_core::period::PeriodLabel;
use serde::Serialize;

use super::billing::Billing;
use super::error::ServiceError;

/// The job lease automatic finalization runs under.
pub const JOB: &str = "auto-finalize";

/// When billing finalizes drafts by itself.
#[derive(Debug, Clone, Copy)]
pub struct AutoFinalize {
    /// How long after its period ends a draft stays open to late usage.
    pub grace: Duration,
    /// How long a lease lasts without being renewed: another instance takes over after it.
    pub lease: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct AutoFinalized {
    /// Whether this instance held the lease (else it did nothing).
    pub leader: bool,
    /// Drafts refreshed by the invoice runs of the recent months.
    pub refreshed: usize,
    /// Invoices finalized, by id.
    pub finalized: Vec<String>,
    /// Drafts another instance or a person finalized or voided meanwhile.
    pub skipped: usize,
    /// Drafts that could not be finalized, with why (tried again next pass).
    pub errors: Vec<(String, String)>,
}

impl Billing {
    /// One pass of automatic finalization at `now`: under the lease, the invoice runs of the
    /// months whose periods may have ended a grace period ago refresh their drafts, then every
    /// draft whose period ended at least `grace` ago is finalized by `scheduler:<instance>`.
    pub async fn auto_finalize(
        &self,
        now: DateTime<Utc>,
        settings: AutoFinalize,
    ) -> Result<AutoFinalized, ServiceError> {
        let holder = self.instance();
        let holder = if holder.is_empty() {
            "billing".into()
        } else {
            holder
        };
        let mut out = AutoFinalized::default();
        if !self
            .store
            .try_lease(JOB, &holder, now, settings.lease)
            .await?
        {
            return Ok(out);
        }
        out.leader = true;
        let invoicing = self.invoicing();
        let cutoff = now - settings.grace;
        // Late usage up to the cutoff lands on the drafts first: the runs of the months whose
        // periods end by the cutoff, a month before it (monthly plans) and a year before
        // (yearly ones), and the month before that to catch up after a pause.
        let mut labels: Vec<PeriodLabel> = [12, 2, 1]
            .into_iter()
            .map(|m| PeriodLabel::of(cutoff - Months::new(m), chrono_tz::UTC))
            .collect();
        labels.dedup();
        for label in labels {
            let summary = invoicing.run(label, now, &|_, _| {}).await?;
            out.refreshed += summary.created + summary.updated + summary.unchanged;
        }
        let drafts = self
            .store
            .invoices(&InvoiceFilter {
                status: Some(InvoiceStatus::Draft),
                ..Default::default()
            })
            .await?;
        let by = format!("scheduler:{holder}");
        for d in drafts.iter().filter(|d| d.invoice.period.end <= cutoff) {
            // Renewed as it goes: a long pass keeps its lease.
            if !self
                .store
                .try_lease(JOB, &holder, Utc::now(), settings.lease)
                .await?
            {
                break;
            }
            match invoicing.finalize(&d.id, Utc::now(), &by).await {
                Ok((_, record)) => out.finalized.push(record.id),
                Err(ServiceError::Store(peage_billing_store::BillingStoreError::Conflict(_))) => {
                    out.skipped += 1
                }
                Err(e) => out.errors.push((d.id.clone(), e.to_string())),
            }
        }
        if !out.finalized.is_empty() || !out.errors.is_empty() {
            tracing::info!(
                finalized = out.finalized.len(),
                skipped = out.skipped,
                errors = out.errors.len(),
                by,
                "automatic finalization"
            );
        }
        for (id, error) in &out.errors {
            tracing::warn!(invoice = %id, %error, "automatic finalization failed; trying again next pass");
        }
        Ok(out)
    }
}

/// What finalizing a period's drafts did (`POST /v1/invoices/finalize`).
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct PeriodFinalized {
    pub period: String,
    /// The invoices finalized, by number.
    pub finalized: Vec<String>,
    /// Drafts whose period is not over yet, left as they are.
    pub not_over: usize,
    /// Drafts that could not be finalized, with why.
    pub errors: Vec<super::invoicing::RunError>,
}

impl Billing {
    /// Finalizes every draft of period `period` (`YYYY-MM`) whose period is over, by `by`.
    pub async fn finalize_period(
        &self,
        period: &str,
        by: &str,
    ) -> Result<PeriodFinalized, ServiceError> {
        let label: PeriodLabel = super::values::period(period)?;
        let drafts = self
            .store
            .invoices(&InvoiceFilter {
                status: Some(InvoiceStatus::Draft),
                period_label: Some(label.to_string()),
                ..Default::default()
            })
            .await?;
        let invoicing = self.invoicing();
        let mut out = PeriodFinalized {
            period: label.to_string(),
            ..Default::default()
        };
        for d in drafts {
            let now = Utc::now();
            if d.invoice.period.end > now {
                out.not_over += 1;
                continue;
            }
            match invoicing.finalize(&d.id, now, by).await {
                Ok((_, record)) => out.finalized.push(record.number.unwrap_or(record.id)),
                Err(e) => out.errors.push(super::invoicing::RunError {
                    partner_id: d.partner_id.clone(),
                    error: e.to_string(),
                }),
            }
        }
        tracing::info!(period = %out.period, finalized = out.finalized.len(), not_over = out.not_over, errors = out.errors.len(), by, "period finalized");
        Ok(out)
    }
}
