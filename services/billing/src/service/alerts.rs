//! Spend and usage alerts (docs/pricing.md, "Alerts"): partners and finance set budgets on a
//! partner's running cost or on a meter, with thresholds in percent of them. Billing's upkeep
//! checks them: each threshold reached is recorded once per period (the notice's primary key)
//! and sent as `alert.triggered` (the webhook's event key), whichever instance sees it first.

use chrono::{DateTime, Utc};
use peage_billing_store::{AlertNotice, AlertRecord, Partner};
use peage_core::alert::{AlertMetric, AlertRule};
use peage_core::ids::AlertId;
use peage_core::Env;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::webhooks;

/// The most alerts a partner may have.
pub const MAX_ALERTS: usize = 20;

/// An alert and where it stands this period.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertState {
    #[serde(flatten)]
    pub alert: AlertRecord,
    /// The running cost (tax included) or the meter's usage now.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub value: Decimal,
    /// The currency code of a spend alert, the meter's name of a usage alert.
    pub unit: String,
    /// The thresholds reached this period, as notified, the latest first.
    pub reached: Vec<AlertNotice>,
}

/// A partner's alerts over the current billing period.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub alerts: Vec<AlertState>,
}

/// What one check of every alert did.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct AlertsChecked {
    /// Partners whose alerts were evaluated (the others had nothing left to reach).
    pub partners: usize,
    /// Thresholds newly reached and notified.
    pub notified: usize,
    /// Partners that could not be evaluated, with why (tried again next pass).
    pub errors: Vec<(String, String)>,
}

/// A partner's values this period: its running cost and its meters' usage.
struct Standing {
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    spend: Decimal,
    currency: String,
    meters: Vec<peage_core::MeterUsage>,
}

impl Standing {
    fn value(&self, rule: &AlertRule) -> (Decimal, String) {
        match (rule.metric, &rule.meter) {
            (AlertMetric::Usage, Some(m)) => (
                self.meters
                    .iter()
                    .find(|u| &u.meter == m)
                    .map_or(Decimal::ZERO, |u| u.quantity),
                m.clone(),
            ),
            _ => (self.spend, self.currency.clone()),
        }
    }
}

impl Billing {
    /// `POST /v1/partners/{id}/alerts`.
    pub async fn create_alert(
        &self,
        partner: &Partner,
        rule: AlertRule,
        by: &str,
    ) -> Result<AlertRecord, ServiceError> {
        let rule = rule
            .checked(&self.catalog().meters)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if self.store.alerts(Some(&partner.id)).await?.len() >= MAX_ALERTS {
            return Err(ServiceError::WrongState(format!(
                "partner {} has {MAX_ALERTS} alerts already; delete one first",
                partner.id
            )));
        }
        let record = AlertRecord {
            id: AlertId::from_random(rand::random()),
            partner_id: partner.id.clone(),
            rule,
            created_at: Utc::now(),
            created_by: by.to_string(),
        };
        self.store.create_alert(&record).await?;
        tracing::info!(alert = %record.id, partner_id = %partner.id, metric = record.rule.metric.as_str(), by, "alert set");
        Ok(record)
    }

    /// `DELETE /v1/partners/{id}/alerts/{alert_id}`.
    pub async fn delete_alert(
        &self,
        partner: &Partner,
        id: &str,
        by: &str,
    ) -> Result<(), ServiceError> {
        let id = AlertId::parse(id).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if !self
            .store
            .delete_alert(&partner.id, &id, Utc::now(), by)
            .await?
        {
            return Err(ServiceError::not_found("alert", id.as_str()));
        }
        Ok(())
    }

    /// `GET /v1/partners/{id}/alerts`: each alert with its value now and the thresholds it
    /// reached this period.
    pub async fn alerts(&self, partner: &Partner) -> Result<AlertList, ServiceError> {
        let alerts = self.store.alerts(Some(&partner.id)).await?;
        let standing = self.standing(partner, Utc::now()).await?;
        let notices = self
            .store
            .alert_notices(&partner.id, standing.period_start)
            .await?;
        Ok(AlertList {
            period_start: standing.period_start,
            period_end: standing.period_end,
            alerts: alerts
                .into_iter()
                .map(|alert| {
                    let (value, unit) = standing.value(&alert.rule);
                    let reached = notices
                        .iter()
                        .filter(|n| n.alert_id == alert.id)
                        .cloned()
                        .collect();
                    AlertState {
                        alert,
                        value,
                        unit,
                        reached,
                    }
                })
                .collect(),
        })
    }

    async fn standing(
        &self,
        partner: &Partner,
        now: DateTime<Utc>,
    ) -> Result<Standing, ServiceError> {
        let invoicing = self.invoicing();
        let upcoming = invoicing.upcoming(partner, now).await?;
        let period = upcoming.invoice.period;
        // The meters alone: the usage report would also read the time zone again, the event
        // types and the refused calls, none of which an alert needs.
        let query = peage_usage_store::UsageQuery {
            partner_id: partner.id.to_string(),
            env: Env::Live,
            from: period.start,
            to: period.end,
        };
        let meters = self
            .usage
            .meter_usage(&query, &invoicing.catalog.meters)
            .await?;
        Ok(Standing {
            period_start: period.start,
            period_end: period.end,
            spend: upcoming.invoice.total,
            currency: upcoming.invoice.currency.code().to_string(),
            meters,
        })
    }

    /// Checks every alert at `now`: each threshold newly reached this period is notified once.
    /// Partners whose thresholds were all reached already are not evaluated.
    pub async fn check_alerts(&self, now: DateTime<Utc>) -> Result<AlertsChecked, ServiceError> {
        let mut out = AlertsChecked::default();
        let all = self.store.alerts(None).await?;
        let mut by_partner: Vec<(peage_core::PartnerId, Vec<AlertRecord>)> = Vec::new();
        for a in all {
            match by_partner.last_mut() {
                Some((p, list)) if *p == a.partner_id => list.push(a),
                _ => by_partner.push((a.partner_id.clone(), vec![a])),
            }
        }
        for (partner_id, alerts) in by_partner {
            match self.check_partner_alerts(&partner_id, &alerts, now).await {
                Ok(Some(n)) => {
                    out.partners += 1;
                    out.notified += n;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(partner_id = %partner_id, error = %e, "cannot check the partner's alerts now");
                    out.errors.push((partner_id.to_string(), e.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// The thresholds newly notified, or `None` when there was nothing left to reach.
    async fn check_partner_alerts(
        &self,
        partner_id: &peage_core::PartnerId,
        alerts: &[AlertRecord],
        now: DateTime<Utc>,
    ) -> Result<Option<usize>, ServiceError> {
        let Some(partner) = self.store.partner(partner_id).await? else {
            return Ok(None);
        };
        // Cheap first: which thresholds this period already notified (the period from the
        // plan and the partner's time zone, as invoices count it).
        let tz = super::invoicing::partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let Some(plan) = self.catalog().plan(&partner.subscription.plan_id).cloned() else {
            return Ok(None);
        };
        let period = plan.period.containing_in(tz, now);
        let known = self.store.alert_notices(&partner.id, period.start).await?;
        let noticed = |id: &AlertId, threshold: u32, start: DateTime<Utc>| {
            known
                .iter()
                .any(|n| &n.alert_id == id && n.threshold == threshold && n.period_start == start)
        };
        let open = alerts.iter().any(|a| {
            a.rule
                .thresholds
                .iter()
                .any(|&t| !noticed(&a.id, t, period.start))
        });
        if !open {
            return Ok(None);
        }
        let standing = self.standing(&partner, now).await?;
        let mut notified = 0;
        for alert in alerts {
            let (value, unit) = standing.value(&alert.rule);
            let reached = alert
                .rule
                .reached(value)
                .map_err(|e| ServiceError::WrongState(format!("alert {}: {e}", alert.id)))?;
            for threshold in reached {
                if noticed(&alert.id, threshold, standing.period_start) {
                    continue;
                }
                let notice = AlertNotice {
                    alert_id: alert.id.clone(),
                    partner_id: partner.id.clone(),
                    period_start: standing.period_start,
                    threshold,
                    level: alert.rule.level(threshold).map_err(|e| {
                        ServiceError::WrongState(format!("alert {}: {e}", alert.id))
                    })?,
                    value,
                    unit: unit.clone(),
                    reached_at: now,
                };
                // The webhook first: its event key makes it once, so a crash between the two
                // sends nothing twice, and the notice is recorded only once it is queued.
                let key = format!(
                    "alert.triggered:{}:{}:{threshold}",
                    alert.id,
                    standing.period_start.timestamp()
                );
                let data = serde_json::json!({
                    "alert_id": alert.id,
                    "partner_id": partner.id,
                    "metric": alert.rule.metric,
                    "meter": alert.rule.meter,
                    "budget": alert.rule.budget.to_string(),
                    "threshold": threshold,
                    "level": notice.level.to_string(),
                    "value": value.to_string(),
                    "unit": unit,
                    "period_start": standing.period_start,
                    "period_end": standing.period_end,
                });
                webhooks::enqueue(self.store.as_ref(), "alert.triggered", &key, data, now).await?;
                if self.store.record_alert_notice(&notice).await? {
                    notified += 1;
                    peage_telemetry::emit!(peage_telemetry::AlertTriggered {
                        partner_id: partner.id.as_str(),
                        alert_id: alert.id.as_ref(),
                        threshold_percent: threshold,
                    });
                }
            }
        }
        Ok(Some(notified))
    }
}
