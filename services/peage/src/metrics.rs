//! The operations listener of every role, `peage up` included (`metrics.listen`), never on the
//! partner-facing port: `/metrics` (Prometheus text format), `/healthz` (the process answers)
//! and `/readyz` (it can do its work: 200, or 503 naming the failing check, JSON).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// One sample: name, help text, type (`counter` or `gauge`), value.
pub type Sample = (&'static str, &'static str, &'static str, u64);

/// Renders samples in the Prometheus text exposition format.
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    for (name, help, kind, value) in samples {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

/// `peage_catalog_info{version="…"} 1`: the catalog version a role runs.
pub fn catalog_info(version: &str) -> String {
    let name = "peage_catalog_info";
    let version = version.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "# HELP {name} The catalog version this role runs (1 for the version in force).\n# TYPE {name} gauge\n{name}{{version=\"{version}\"}} 1\n"
    )
}

pub fn read(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// The gateway's call events and quota leases (every gateway, `peage up`'s included).
pub fn gateway_samples(
    e: &peage_eventlog::EmitterStats,
    q: &peage_gateway::quota::QuotaStats,
) -> Vec<Sample> {
    vec![
        ("peage_events_emitted_total", "Call events emitted by the gateway.", "counter", read(&e.emitted)),
        ("peage_events_spooled_total", "Call events written to the disk spool (the event log in peage up).", "counter", read(&e.persisted)),
        ("peage_quota_lease_requests_total", "Quota lease requests sent to billing.", "counter", read(&q.lease_requests)),
        ("peage_quota_lease_failures_total", "Quota lease requests that failed.", "counter", read(&q.lease_failures)),
        ("peage_quota_billing_reachable", "1 while the last lease request reached billing; 0 while the unreachable policy is in force.", "gauge", read(&q.billing_reachable)),
        ("peage_quota_hard_blocked_total", "Calls answered 429 for a hard quota.", "counter", read(&q.hard_blocked)),
        ("peage_quota_soft_exceeded_total", "Calls allowed past a soft quota (flagged).", "counter", read(&q.soft_exceeded)),
        ("peage_quota_shadow_exceeded_total", "Calls allowed past a quota in shadow mode (flagged, never refused).", "counter", read(&q.shadow_exceeded)),
        ("peage_quota_near_limit_total", "Calls that carried a quota across its near-limit fraction (Peage-Quota-Near-Limit).", "counter", read(&q.near_limit)),
        ("peage_quota_served_unreachable_total", "Calls served on the unreachable policy's bound while billing was away.", "counter", read(&q.served_unreachable)),
        ("peage_quota_refused_unreachable_total", "Calls refused (503) because billing was away.", "counter", read(&q.refused_unreachable)),
    ]
}

/// A distributed gateway's disk spool in front of Kafka.
pub fn spool_samples(spool: &peage_eventlog::kafka::SpooledKafkaLog) -> Vec<Sample> {
    use peage_eventlog::EventLog;
    let s = spool.stats();
    vec![
        ("peage_spool_pending_events", "Events in the spool not yet acknowledged by Kafka.", "gauge", spool.pending()),
        ("peage_spool_forwarded_events_total", "Events acknowledged by Kafka.", "counter", read(&s.forwarded)),
        ("peage_spool_read_from_disk_events_total", "Events the forwarder read back from the spool's files (a backlog) rather than from memory.", "counter", read(&s.read_from_disk)),
        ("peage_spool_forward_failures_total", "Failed attempts to forward a batch to Kafka (each retried).", "counter", read(&s.forward_failures)),
        ("peage_spool_dropped_events_total", "Events dropped because the spool was full (fail_open).", "counter", read(&s.dropped)),
        ("peage_spool_accepting", "1 while the gateway admits calls; 0 while a full spool refuses them (fail_closed).", "gauge", u64::from(spool.accepting())),
    ]
}

/// The aggregator's two ingesters: call events and usage events.
pub fn aggregator_samples(
    st: &peage_aggregator::AggregatorStats,
    usage: &peage_aggregator::AggregatorStats,
    stall_recoveries: u64,
) -> Vec<Sample> {
    vec![
        (
            "peage_aggregator_inserted_events_total",
            "Events stored in the usage store.",
            "counter",
            read(&st.inserted),
        ),
        (
            "peage_aggregator_duplicate_events_total",
            "Events skipped because the usage store already held them.",
            "counter",
            read(&st.duplicates),
        ),
        (
            "peage_aggregator_dead_lettered_total",
            "Records sent to the dead letters.",
            "counter",
            read(&st.dead_lettered),
        ),
        (
            "peage_aggregator_store_failures_total",
            "Failed usage-store calls (each retried).",
            "counter",
            read(&st.store_failures),
        ),
        (
            "peage_aggregator_batches_total",
            "Batches processed.",
            "counter",
            read(&st.batches),
        ),
        (
            "peage_aggregator_abandoned_batches_total",
            "Batches given up unwritten because their partitions may have moved.",
            "counter",
            read(&st.abandoned_batches),
        ),
        (
            "peage_aggregator_usage_inserted_events_total",
            "Usage events (POST /v1/events) stored in the usage store.",
            "counter",
            read(&usage.inserted),
        ),
        (
            "peage_aggregator_usage_duplicate_events_total",
            "Usage events skipped because the usage store already held them (re-sends).",
            "counter",
            read(&usage.duplicates),
        ),
        (
            "peage_aggregator_usage_conflicts_total",
            "Usage events whose id was already used with other content (dead-lettered).",
            "counter",
            read(&usage.conflicts),
        ),
        (
            "peage_aggregator_stall_recoveries_total",
            "Times the consumer found partitions stalled and rejoined its group.",
            "counter",
            stall_recoveries,
        ),
    ]
}

/// The control API's limits on wrong credentials (billing, `peage up`).
pub fn control_samples(api: &peage_billing::ControlApi) -> Vec<Sample> {
    let f = &api.failures.stats;
    vec![
        (
            "peage_control_credential_failures_total",
            "Wrong admin tokens, sessions, sign-in links and OAuth client secrets.",
            "counter",
            read(&f.failures),
        ),
        (
            "peage_control_credential_throttled_total",
            "Attempts refused (429) because their address sent too many wrong credentials.",
            "counter",
            read(&f.throttled),
        ),
        (
            "peage_control_credential_untracked_total",
            "Wrong credentials from addresses not tracked because the table of addresses was full.",
            "counter",
            read(&f.untracked),
        ),
    ]
}

/// Several expositions as one: the samples of a family (its `# HELP`/`# TYPE` and every
/// line of its name, `_bucket`, `_sum` and `_count` included) grouped together, each family
/// once, a sample repeated verbatim kept once (two roles of one process reporting the same
/// catalog version).
pub fn merge_expositions(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        Default::default();
    let mut current = String::new();
    for text in texts {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (family, is_meta) = if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                (rest.split(' ').next().unwrap_or_default().to_string(), true)
            } else if line.starts_with('#') {
                continue;
            } else {
                let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
                // A histogram's series belong to the family whose TYPE came before them.
                let family = if !current.is_empty() && name.starts_with(current.as_str()) {
                    current.clone()
                } else {
                    name.to_string()
                };
                (family, false)
            };
            if is_meta {
                current = family.clone();
            }
            let entry = families.entry(family.clone()).or_insert_with(|| {
                order.push(family.clone());
                Default::default()
            });
            let list = if is_meta { &mut entry.0 } else { &mut entry.1 };
            if !list.iter().any(|l| l == line) {
                list.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let (meta, samples) = &families[&name];
        for l in meta.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `peage_build_info{version="…",role="…"} 1`: which build and role answer.
pub fn build_info(role: &str) -> String {
    let name = "peage_build_info";
    format!(
        "# HELP {name} The Péage version and role of this process.\n# TYPE {name} gauge\n{name}{{version=\"{}\",role=\"{role}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// `peage_consumer_lag_events{group,topic,partition}`: records behind the end of each
/// partition a consumer holds.
pub fn consumer_lag(rows: &[(String, String, i32, i64)]) -> String {
    let name = "peage_consumer_lag_events";
    let mut out = format!(
        "# HELP {name} Records a consumer has not processed yet, per partition it holds.\n# TYPE {name} gauge\n"
    );
    for (group, topic, partition, lag) in rows {
        let _ = writeln!(
            out,
            "{name}{{group=\"{group}\",topic=\"{topic}\",partition=\"{partition}\"}} {lag}"
        );
    }
    out
}

/// One readiness check: its name, whether it passes, and what it saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// What `/readyz` runs at each probe.
pub type Readiness = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Vec<Check>> + Send + Sync>;

/// Readiness from a synchronous closure.
pub fn ready_when(f: impl Fn() -> Vec<Check> + Send + Sync + 'static) -> Readiness {
    let f = Arc::new(f);
    Arc::new(move || {
        let f = Arc::clone(&f);
        Box::pin(async move { f() })
    })
}

/// A check that a store answers within 2 s.
pub async fn store_check<T, E: std::fmt::Display>(
    name: &'static str,
    query: impl std::future::Future<Output = Result<T, E>>,
) -> Check {
    match tokio::time::timeout(std::time::Duration::from_secs(2), query).await {
        Ok(Ok(_)) => Check::new(name, true, "answers"),
        Ok(Err(e)) => Check::new(name, false, e.to_string()),
        Err(_) => Check::new(name, false, "no answer within 2 s"),
    }
}

/// Serves `GET /metrics` with what `exposition` returns at each scrape followed by the
/// metrics of [`peage_telemetry`]'s internal events, `GET /healthz` and `GET /readyz`, until
/// `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    exposition: Arc<dyn Fn() -> String + Send + Sync>,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let exposition = Arc::clone(&exposition);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        exposition() + &peage_telemetry::render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = Arc::clone(&readiness);
                async move {
                    let checks = readiness().await;
                    let ready = checks.iter().all(|c| c.ok);
                    let status = if ready {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(listen = %addr, "operations endpoints on /metrics, /healthz and /readyz");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expositions_of_several_roles_merge_by_family() {
        let gateway = catalog_info("v1")
            + &render(&[("peage_events_emitted_total", "Events.", "counter", 2)])
            + "# HELP peage_x_seconds Latency.\n# TYPE peage_x_seconds histogram\npeage_x_seconds_bucket{le=\"1\"} 1\npeage_x_seconds_sum 0.5\npeage_x_seconds_count 1\n";
        let billing = render(&[(
            "peage_control_credential_failures_total",
            "Wrong.",
            "counter",
            0,
        )]) + &catalog_info("v1");
        let merged = merge_expositions(&[gateway, billing]);
        assert_eq!(
            merged.matches("# TYPE peage_catalog_info gauge").count(),
            1,
            "{merged}"
        );
        assert_eq!(
            merged
                .matches("peage_catalog_info{version=\"v1\"} 1")
                .count(),
            1,
            "{merged}"
        );
        assert!(
            merged.contains("# TYPE peage_x_seconds histogram\npeage_x_seconds_bucket{le=\"1\"} 1\npeage_x_seconds_sum 0.5\npeage_x_seconds_count 1\n"),
            "{merged}"
        );
        assert!(merged.contains("peage_control_credential_failures_total 0"));
    }

    #[test]
    fn samples_render_in_the_exposition_format() {
        let text = render(&[(
            "peage_spool_dropped_events_total",
            "Events dropped because the spool was full (fail_open).",
            "counter",
            3,
        )]);
        assert_eq!(
            text,
            "# HELP peage_spool_dropped_events_total Events dropped because the spool was full (fail_open).\n\
             # TYPE peage_spool_dropped_events_total counter\n\
             peage_spool_dropped_events_total 3\n"
        );
    }
}
