//! Péage's internal events, in the style of vector's `emit!`: each thing worth counting is a
//! typed event whose `emit` writes its metric and its log line, so both come from one place and
//! cannot drift apart. The metrics go through the `metrics` facade; a process that serves
//! `/metrics` installs the Prometheus recorder once ([`install`]) and appends [`render`] to its
//! own gauges. Without a recorder (libraries in unit tests) emitting only logs.
//!
//! Every metric this crate emits is described in [`describe`], which also registers the series
//! without labels (and each outcome of the labelled ones) at zero, so a dashboard finds them
//! before the first event.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// An event of Péage's own operation: `emit` records its metrics and writes its log line.
pub trait InternalEvent {
    fn emit(self);
}

/// `emit!(Event { … })`: records the event's metrics and writes its log line.
#[macro_export]
macro_rules! emit {
    ($event:expr) => {
        $crate::InternalEvent::emit($event)
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from 1 ms to 60 s (every `*_seconds` histogram).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder for this process (once; later calls are no-ops) and
/// describes every metric. Fails only if another recorder was installed first.
pub fn install() -> Result<(), String> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

/// The metrics emitted through [`InternalEvent`]s so far, in the Prometheus text format
/// (empty without [`install`]).
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Describes every metric and registers the series a dashboard needs before the first event.
fn describe() {
    describe_counter!(
        CONTROL_REQUESTS,
        "Control API requests answered, by method, route template and status."
    );
    describe_histogram!(
        CONTROL_DURATION,
        Unit::Seconds,
        "Time the control API took to answer, by method and route template."
    );
    describe_counter!(
        INVOICE_RUNS,
        "Invoice runs finished, by outcome (ok: every partner's draft computed; partial: some failed)."
    );
    describe_counter!(
        INVOICE_RUN_DRAFTS,
        "Drafts computed by invoice runs, by outcome (computed or failed)."
    );
    describe_histogram!(
        INVOICE_RUN_DURATION,
        Unit::Seconds,
        "Time an invoice run took."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts, by outcome (delivered, retrying, failed)."
    );
    describe_histogram!(
        WEBHOOK_DURATION,
        Unit::Seconds,
        "Time a webhook attempt took, until the endpoint's answer or the error."
    );
    describe_counter!(
        QUOTA_LEASES,
        "Quota lease requests decided by billing, by outcome (granted, refused, failed)."
    );
    describe_counter!(
        CATALOG_RELOADS,
        "Catalog reloads, by outcome (applied, unchanged, refused)."
    );
    describe_counter!(
        ALERTS_TRIGGERED,
        "Spend and usage alert thresholds reached (each notified once per period)."
    );
    for outcome in ["ok", "partial"] {
        counter!(INVOICE_RUNS, "outcome" => outcome).absolute(0);
    }
    for outcome in ["computed", "failed"] {
        counter!(INVOICE_RUN_DRAFTS, "outcome" => outcome).absolute(0);
    }
    for outcome in WebhookOutcome::ALL {
        counter!(WEBHOOK_DELIVERIES, "outcome" => outcome.as_str()).absolute(0);
    }
    for outcome in LeaseOutcome::ALL {
        counter!(QUOTA_LEASES, "outcome" => outcome.as_str()).absolute(0);
    }
    for outcome in ["applied", "unchanged", "refused"] {
        counter!(CATALOG_RELOADS, "outcome" => outcome).absolute(0);
    }
    counter!(ALERTS_TRIGGERED).absolute(0);
    describe_counter!(
        RETENTION_MONTHS_DROPPED,
        "Months of raw call events dropped by retention (rollups and invoices are kept)."
    );
    counter!(RETENTION_MONTHS_DROPPED).absolute(0);
}

pub const CONTROL_REQUESTS: &str = "peage_control_requests_total";
pub const CONTROL_DURATION: &str = "peage_control_request_duration_seconds";
pub const INVOICE_RUNS: &str = "peage_invoice_runs_total";
pub const INVOICE_RUN_DRAFTS: &str = "peage_invoice_run_drafts_total";
pub const INVOICE_RUN_DURATION: &str = "peage_invoice_run_duration_seconds";
pub const WEBHOOK_DELIVERIES: &str = "peage_webhook_deliveries_total";
pub const WEBHOOK_DURATION: &str = "peage_webhook_delivery_duration_seconds";
pub const QUOTA_LEASES: &str = "peage_quota_leases_total";
pub const CATALOG_RELOADS: &str = "peage_catalog_reloads_total";
pub const ALERTS_TRIGGERED: &str = "peage_alerts_triggered_total";
pub const RETENTION_MONTHS_DROPPED: &str = "peage_retention_months_dropped_total";

/// The control API answered a request.
pub struct ControlRequestAnswered<'a> {
    pub method: &'a str,
    /// The route's template (`/v1/partners/{id}`), never the raw path: bounded labels.
    pub route: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub request_id: &'a str,
}

impl InternalEvent for ControlRequestAnswered<'_> {
    fn emit(self) {
        let status = self.status.to_string();
        counter!(CONTROL_REQUESTS, "method" => self.method.to_string(), "route" => self.route.to_string(), "status" => status).increment(1);
        histogram!(CONTROL_DURATION, "method" => self.method.to_string(), "route" => self.route.to_string())
            .record(self.elapsed.as_secs_f64());
        let ms = self.elapsed.as_secs_f64() * 1000.0;
        if self.status >= 500 {
            tracing::warn!(
                method = self.method,
                route = self.route,
                status = self.status,
                ms,
                request_id = self.request_id,
                "control API request failed"
            );
        } else {
            tracing::debug!(
                method = self.method,
                route = self.route,
                status = self.status,
                ms,
                request_id = self.request_id,
                "control API request"
            );
        }
    }
}

/// An invoice run finished.
pub struct InvoiceRunFinished<'a> {
    pub period: &'a str,
    pub computed: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl InvoiceRunFinished<'_> {
    fn outcome(&self) -> &'static str {
        if self.failed == 0 {
            "ok"
        } else {
            "partial"
        }
    }
}

impl InternalEvent for InvoiceRunFinished<'_> {
    fn emit(self) {
        counter!(INVOICE_RUNS, "outcome" => self.outcome()).increment(1);
        counter!(INVOICE_RUN_DRAFTS, "outcome" => "computed").increment(self.computed);
        counter!(INVOICE_RUN_DRAFTS, "outcome" => "failed").increment(self.failed);
        histogram!(INVOICE_RUN_DURATION).record(self.elapsed.as_secs_f64());
        if self.failed == 0 {
            tracing::info!(
                period = self.period,
                computed = self.computed,
                seconds = self.elapsed.as_secs_f64(),
                "invoice run finished"
            );
        } else {
            tracing::warn!(
                period = self.period,
                computed = self.computed,
                failed = self.failed,
                seconds = self.elapsed.as_secs_f64(),
                "invoice run finished with failures"
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Delivered,
    /// Failed, another attempt is scheduled.
    Retrying,
    /// Failed for the last time.
    Failed,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 3] = [
        WebhookOutcome::Delivered,
        WebhookOutcome::Retrying,
        WebhookOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retrying => "retrying",
            WebhookOutcome::Failed => "failed",
        }
    }
}

/// A webhook delivery attempt ended.
pub struct WebhookAttempted<'a> {
    pub delivery_id: &'a str,
    pub event_type: &'a str,
    pub attempt: u32,
    pub outcome: WebhookOutcome,
    /// The endpoint's status, or why there was none.
    pub detail: &'a str,
    pub elapsed: Duration,
}

impl InternalEvent for WebhookAttempted<'_> {
    fn emit(self) {
        counter!(WEBHOOK_DELIVERIES, "outcome" => self.outcome.as_str()).increment(1);
        histogram!(WEBHOOK_DURATION).record(self.elapsed.as_secs_f64());
        match self.outcome {
            WebhookOutcome::Delivered => tracing::debug!(
                delivery = self.delivery_id,
                event_type = self.event_type,
                attempt = self.attempt,
                detail = self.detail,
                "webhook delivered"
            ),
            WebhookOutcome::Retrying => tracing::info!(
                delivery = self.delivery_id,
                event_type = self.event_type,
                attempt = self.attempt,
                detail = self.detail,
                "webhook attempt failed; retrying later"
            ),
            WebhookOutcome::Failed => tracing::warn!(
                delivery = self.delivery_id,
                event_type = self.event_type,
                attempt = self.attempt,
                detail = self.detail,
                "webhook delivery failed for good"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    Granted,
    /// The quota is spent (a refusal, not an error).
    Refused,
    /// Billing could not decide (its store failed).
    Failed,
}

impl LeaseOutcome {
    pub const ALL: [LeaseOutcome; 3] = [
        LeaseOutcome::Granted,
        LeaseOutcome::Refused,
        LeaseOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseOutcome::Granted => "granted",
            LeaseOutcome::Refused => "refused",
            LeaseOutcome::Failed => "failed",
        }
    }
}

/// Billing decided a gateway's quota lease request.
pub struct QuotaLeaseDecided<'a> {
    pub partner_id: &'a str,
    pub meter: &'a str,
    pub gateway_id: &'a str,
    pub outcome: LeaseOutcome,
    pub detail: &'a str,
}

impl InternalEvent for QuotaLeaseDecided<'_> {
    fn emit(self) {
        counter!(QUOTA_LEASES, "outcome" => self.outcome.as_str()).increment(1);
        match self.outcome {
            LeaseOutcome::Granted => tracing::trace!(
                partner = self.partner_id,
                meter = self.meter,
                gateway = self.gateway_id,
                granted = self.detail,
                "quota lease granted"
            ),
            LeaseOutcome::Refused => tracing::debug!(
                partner = self.partner_id,
                meter = self.meter,
                gateway = self.gateway_id,
                reason = self.detail,
                "quota lease refused"
            ),
            LeaseOutcome::Failed => tracing::warn!(
                partner = self.partner_id,
                meter = self.meter,
                gateway = self.gateway_id,
                error = self.detail,
                "quota lease failed"
            ),
        }
    }
}

/// A catalog reload was tried.
pub struct CatalogReloaded<'a> {
    /// applied, unchanged or refused.
    pub outcome: &'a str,
    pub version: &'a str,
    pub trigger: &'a str,
    pub detail: &'a str,
}

impl InternalEvent for CatalogReloaded<'_> {
    fn emit(self) {
        let outcome: &'static str = match self.outcome {
            "applied" => "applied",
            "unchanged" => "unchanged",
            _ => "refused",
        };
        counter!(CATALOG_RELOADS, "outcome" => outcome).increment(1);
        match outcome {
            "refused" => tracing::warn!(
                version = self.version,
                trigger = self.trigger,
                problems = self.detail,
                "catalog reload rejected; the version in force stays"
            ),
            "applied" => tracing::info!(
                version = self.version,
                trigger = self.trigger,
                "catalog applied"
            ),
            _ => tracing::debug!(
                version = self.version,
                trigger = self.trigger,
                "catalog unchanged"
            ),
        }
    }
}

/// Retention dropped whole months of raw call events.
pub struct RawMonthsDropped<'a> {
    /// `YYYYMM`, oldest first; empty when nothing was old enough.
    pub months: &'a [u32],
    /// The first instant kept.
    pub before: &'a str,
}

impl InternalEvent for RawMonthsDropped<'_> {
    fn emit(self) {
        counter!(RETENTION_MONTHS_DROPPED).increment(self.months.len() as u64);
        if self.months.is_empty() {
            tracing::debug!(
                before = self.before,
                "retention: no raw month old enough to drop"
            );
        } else {
            tracing::info!(months = ?self.months, before = self.before, "retention: dropped raw call events of whole months");
        }
    }
}

/// A spend or usage alert reached a threshold.
pub struct AlertTriggered<'a> {
    pub partner_id: &'a str,
    pub alert_id: &'a str,
    pub threshold_percent: u32,
}

impl InternalEvent for AlertTriggered<'_> {
    fn emit(self) {
        counter!(ALERTS_TRIGGERED).increment(1);
        tracing::info!(
            partner = self.partner_id,
            alert = self.alert_id,
            threshold = self.threshold_percent,
            "alert threshold reached"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_the_exposition_with_their_labels() {
        install().unwrap();
        install().unwrap(); // a second install is a no-op
        let before = render();
        assert!(
            before.contains("peage_webhook_deliveries_total{outcome=\"failed\"} 0"),
            "{before}"
        );
        emit!(WebhookAttempted {
            delivery_id: "d1",
            event_type: "invoice.finalized",
            attempt: 1,
            outcome: WebhookOutcome::Delivered,
            detail: "200",
            elapsed: Duration::from_millis(12),
        });
        emit!(ControlRequestAnswered {
            method: "GET",
            route: "/v1/partners/{id}",
            status: 200,
            elapsed: Duration::from_millis(3),
            request_id: "r1",
        });
        let text = render();
        assert!(
            text.contains("peage_webhook_deliveries_total{outcome=\"delivered\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# HELP peage_control_requests_total"),
            "{text}"
        );
        assert!(
            text.contains("peage_control_requests_total{method=\"GET\",route=\"/v1/partners/{id}\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("peage_control_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/partners/{id}\",le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
