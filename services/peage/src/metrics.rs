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
