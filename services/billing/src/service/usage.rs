//! A partner's usage: every meter over a range, and the usage series the dashboard charts.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use peage_billing_store::Partner;
use peage_core::series::{Granularity, SplitBy, UsageSeries};
use peage_core::{Env, MeterUsage, PartnerId};
use peage_usage_store::{EventTypeSeen, RefusedCalls, UsageQuery};
use serde::Serialize;

use super::billing::Billing;
use super::error::ServiceError;
use super::invoicing::partner_time_zone;

/// Every meter over a range, and the usage event types received in it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub partner_id: PartnerId,
    pub env: Env,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub meters: Vec<MeterUsage>,
    /// The usage event types received (`POST /v1/events`), whether a meter reads them or not:
    /// what finance checks when a meter shows nothing.
    pub event_types: Vec<EventTypeSeen>,
    /// The calls the gateway refused (429, 403…) in the range, by refusal and status, the
    /// most first: never billed, so in no meter unless one asks for them.
    pub refused: Vec<RefusedCalls>,
}

/// Usage per bucket over a range.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesReport {
    pub partner_id: PartnerId,
    pub env: Env,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub usage: UsageSeries,
}

/// How a series is cut.
pub struct SeriesCut {
    pub granularity: Granularity,
    pub by: SplitBy,
    /// The buckets' time zone; the partner's own when `None`.
    pub tz: Option<Tz>,
}

impl Billing {
    /// `[from, to)`, each defaulting to the partner's current billing period in their time zone
    /// (as quotas and invoices count it), and that time zone.
    async fn usage_range(
        &self,
        partner: &Partner,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>, Tz), ServiceError> {
        let now = Utc::now();
        let tz = partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let period = self
            .catalog()
            .plan(&partner.subscription.plan_id)
            .map(|p| p.period.containing_in(tz, now));
        let from =
            from.unwrap_or_else(|| period.map_or(now - chrono::Duration::days(30), |p| p.start));
        let to = to.unwrap_or_else(|| period.map_or(now, |p| p.end));
        if from >= to {
            return Err(ServiceError::Invalid("from must be before to".into()));
        }
        Ok((from, to, tz))
    }

    /// Every meter of the catalog over `[from, to)` (the current period by default).
    pub async fn usage_report(
        &self,
        partner: &Partner,
        env: Env,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<UsageReport, ServiceError> {
        let (from, to, _) = self.usage_range(partner, from, to).await?;
        let query = UsageQuery {
            partner_id: partner.id.to_string(),
            env,
            from,
            to,
        };
        let meters = self
            .usage
            .meter_usage(&query, &self.catalog().meters)
            .await?;
        let event_types = self.usage.usage_event_types(&query).await?;
        let refused = self.usage.refused_calls(&query).await?;
        Ok(UsageReport {
            refused,
            partner_id: partner.id.clone(),
            env,
            from,
            to,
            meters,
            event_types,
        })
    }

    /// Usage per hour or day over `[from, to)`, split by meter, API, version or operation, read
    /// from the hourly rollups; meters of usage events from the raw events, split by meter.
    pub async fn usage_series(
        &self,
        partner: &Partner,
        env: Env,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        cut: SeriesCut,
    ) -> Result<SeriesReport, ServiceError> {
        use peage_core::series::{bucket_end, buckets, usage_series as series};

        let (from, to, partner_tz) = self.usage_range(partner, from, to).await?;
        let (g, by) = (cut.granularity, cut.by);
        let tz = cut.tz.unwrap_or(partner_tz);
        let cells = buckets(from, to, g, tz).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let (Some(first), Some(last)) = (cells.first(), cells.last()) else {
            return Err(ServiceError::Invalid("the range holds no bucket".into()));
        };
        let query = UsageQuery {
            partner_id: partner.id.to_string(),
            env,
            from: *first,
            to: bucket_end(*last, g, tz),
        };
        let rows = self.usage.hourly_rollups(&query).await?;
        let catalog = self.catalog();
        let meters = &catalog.meters;
        let mut out = series(meters, &rows, &cells, g, by, tz);
        // Meters of usage events, from the raw events: per bucket, and their total over the
        // range. Split by meter only: usage events have no API, version or operation.
        if by == SplitBy::Meter && meters.iter().any(|m| m.events.is_some()) {
            let mut edges = cells.clone();
            edges.push(query.to);
            for m in meters.iter().filter(|m| m.events.is_some()) {
                let s = if env == Env::Live {
                    self.usage
                        .event_meter_series(partner.id.as_str(), m, &edges)
                        .await?
                } else {
                    peage_usage_store::MeterSeries {
                        values: vec![rust_decimal::Decimal::ZERO; cells.len()],
                        total: rust_decimal::Decimal::ZERO,
                    }
                };
                out.series.push(peage_core::series::Series {
                    meter: m.name.clone(),
                    key: String::new(),
                    values: s.values,
                    total: s.total,
                });
            }
            // In the catalog's order, as the other meters.
            let rank = |name: &str| meters.iter().position(|m| m.name == name);
            out.series.sort_by_key(|s| rank(&s.meter));
        }
        Ok(SeriesReport {
            partner_id: partner.id.clone(),
            env,
            from,
            to,
            usage: out,
        })
    }
}
