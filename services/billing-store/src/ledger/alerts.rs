//! Spend and usage alerts, and the notices of thresholds reached: one per alert, period and
//! threshold, kept by the notices' primary key whichever billing instance records it first.
//! The rules are `peage_core::alert`'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::alert::{AlertMetric, AlertRule};
use peage_core::ids::{AlertId, PartnerId};
use rust_decimal::Decimal;
use serde::Serialize;

use super::db::{args, LedgerDb, Row};
use super::ts;
use crate::BillingStoreError;

/// An alert as set.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertRecord {
    pub id: AlertId,
    pub partner_id: PartnerId,
    #[serde(flatten)]
    pub rule: AlertRule,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A threshold an alert reached in a billing period.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertNotice {
    pub alert_id: AlertId,
    pub partner_id: PartnerId,
    pub period_start: DateTime<Utc>,
    /// Percent of the budget.
    pub threshold: u32,
    /// What the threshold stands for (budget × threshold ÷ 100).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub level: Decimal,
    /// The running cost or usage when it was reached.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub value: Decimal,
    /// The currency code of a spend alert, the meter's name of a usage alert.
    pub unit: String,
    pub reached_at: DateTime<Utc>,
}

const ALERT_COLUMNS: &str =
    "id, partner_id, metric, meter, budget, thresholds, created_at, created_by";
const NOTICE_COLUMNS: &str =
    "alert_id, partner_id, period_start, threshold, level, value, unit, reached_at";

fn alert(r: &Row) -> Result<AlertRecord, BillingStoreError> {
    let corrupt = |reason: String| BillingStoreError::Corrupt {
        what: "alert",
        reason,
    };
    let metric = r.text("metric")?;
    let thresholds = r.text("thresholds")?;
    Ok(AlertRecord {
        id: r.id("alert", "id")?,
        partner_id: r.id("alert", "partner_id")?,
        rule: AlertRule {
            metric: AlertMetric::parse(&metric)
                .ok_or_else(|| corrupt(format!("metric {metric:?}")))?,
            meter: r.opt_text("meter")?,
            budget: r.decimal("alert", "budget")?,
            thresholds: serde_json::from_str(&thresholds)
                .map_err(|e| corrupt(format!("thresholds {thresholds:?}: {e}")))?,
        },
        created_at: r.time("alert", "created_at")?,
        created_by: r.text("created_by")?,
    })
}

fn notice(r: &Row) -> Result<AlertNotice, BillingStoreError> {
    let threshold = r.int("threshold")?;
    Ok(AlertNotice {
        alert_id: r.id("alert notice", "alert_id")?,
        partner_id: r.id("alert notice", "partner_id")?,
        period_start: r.time("alert notice", "period_start")?,
        threshold: u32::try_from(threshold).map_err(|_| BillingStoreError::Corrupt {
            what: "alert notice",
            reason: format!("threshold {threshold}"),
        })?,
        level: r.decimal("alert notice", "level")?,
        value: r.decimal("alert notice", "value")?,
        unit: r.text("unit")?,
        reached_at: r.time("alert notice", "reached_at")?,
    })
}

#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    async fn create_alert(&self, alert: &AlertRecord) -> Result<(), BillingStoreError>;
    /// Deletes the partner's alert (its notices stay); false when it has none by that id.
    async fn delete_alert(
        &self,
        partner_id: &PartnerId,
        id: &AlertId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<bool, BillingStoreError>;
    /// The alerts in force, of one partner or of all, oldest first.
    async fn alerts(
        &self,
        partner_id: Option<&PartnerId>,
    ) -> Result<Vec<AlertRecord>, BillingStoreError>;
    /// Records a threshold reached: true the first time for its alert, period and threshold.
    async fn record_alert_notice(&self, notice: &AlertNotice) -> Result<bool, BillingStoreError>;
    /// The partner's notices of periods starting at or after `since`, the latest first.
    async fn alert_notices(
        &self,
        partner_id: &PartnerId,
        since: DateTime<Utc>,
    ) -> Result<Vec<AlertNotice>, BillingStoreError>;
}

#[async_trait]
impl<D: LedgerDb> AlertStore for D {
    async fn create_alert(&self, a: &AlertRecord) -> Result<(), BillingStoreError> {
        let thresholds =
            serde_json::to_string(&a.rule.thresholds).map_err(|e| BillingStoreError::Corrupt {
                what: "alert",
                reason: e.to_string(),
            })?;
        self.sql()
            .execute(
                &format!(
                    "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                ),
                args![
                    a.id.as_str(),
                    a.partner_id.as_str(),
                    a.rule.metric.as_str(),
                    a.rule.meter.clone(),
                    a.rule.budget.to_string(),
                    thresholds,
                    ts(a.created_at),
                    a.created_by.as_str()
                ],
            )
            .await?;
        Ok(())
    }

    async fn delete_alert(
        &self,
        partner_id: &PartnerId,
        id: &AlertId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<bool, BillingStoreError> {
        let changed = self
            .sql()
            .execute(
                "UPDATE alerts SET deleted_at = $1, deleted_by = $2 \
                 WHERE id = $3 AND partner_id = $4 AND deleted_at IS NULL",
                args![ts(at), by, id.as_str(), partner_id.as_str()],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn alerts(
        &self,
        partner_id: Option<&PartnerId>,
    ) -> Result<Vec<AlertRecord>, BillingStoreError> {
        let rows = match partner_id {
            Some(p) => {
                self.sql()
                    .fetch(
                        &format!(
                            "SELECT {ALERT_COLUMNS} FROM alerts WHERE partner_id = $1 \
                             AND deleted_at IS NULL ORDER BY created_at, id"
                        ),
                        args![p.as_str()],
                    )
                    .await?
            }
            None => {
                self.sql()
                    .fetch(
                        &format!(
                            "SELECT {ALERT_COLUMNS} FROM alerts WHERE deleted_at IS NULL \
                             ORDER BY partner_id, created_at, id"
                        ),
                        args![],
                    )
                    .await?
            }
        };
        rows.iter().map(alert).collect()
    }

    async fn record_alert_notice(&self, n: &AlertNotice) -> Result<bool, BillingStoreError> {
        let changed = self
            .sql()
            .execute(
                &format!(
                    "INSERT INTO alert_notices ({NOTICE_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (alert_id, period_start, threshold) DO NOTHING"
                ),
                args![
                    n.alert_id.as_str(),
                    n.partner_id.as_str(),
                    ts(n.period_start),
                    i64::from(n.threshold),
                    n.level.to_string(),
                    n.value.to_string(),
                    n.unit.as_str(),
                    ts(n.reached_at)
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn alert_notices(
        &self,
        partner_id: &PartnerId,
        since: DateTime<Utc>,
    ) -> Result<Vec<AlertNotice>, BillingStoreError> {
        self.sql()
            .fetch(
                &format!(
                    "SELECT {NOTICE_COLUMNS} FROM alert_notices \
                     WHERE partner_id = $1 AND period_start >= $2 \
                     ORDER BY reached_at DESC, threshold DESC"
                ),
                args![partner_id.as_str(), ts(since)],
            )
            .await?
            .iter()
            .map(notice)
            .collect()
    }
}
