//! `/metrics` (Prometheus text format) for the distributed roles, on its own listener
//! (`metrics.listen`), never on the partner-facing port.

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

/// Serves `GET /metrics` with what `exposition` returns at each scrape (text format), until
/// `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    exposition: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let exposition = Arc::clone(&exposition);
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    exposition(),
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
    tracing::info!(listen = %addr, "metrics on /metrics");
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
