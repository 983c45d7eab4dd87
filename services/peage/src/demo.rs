//! The built-in demo upstream and the demo catalog that `peage up --demo` seeds.

use std::net::SocketAddr;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// The variable the demo catalog's upstream URLs read, set to the demo upstream's address.
pub const UPSTREAM_VAR: &str = "PEAGE_DEMO_UPSTREAM";

/// Written to `<data-dir>/catalog.toml` by `peage up --demo` when none is there.
pub const CATALOG: &str = include_str!("demo-catalog.toml");
/// The demo API's OpenAPI document, written beside the demo catalog.
pub const OPENAPI: &str = include_str!("demo-openapi.yaml");

#[derive(Deserialize)]
struct SlowParams {
    ms: Option<u64>,
}

pub fn router() -> Router {
    Router::new()
        .route("/hello", get(|| async { Json(json!({ "message": "Bonjour from the Péage demo API" })) }))
        .route(
            "/weather/{city}",
            get(|Path(city): Path<String>| async move {
                // Deterministic "forecast": the same city always gets the same weather.
                let t = city.bytes().fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32)) % 30;
                Json(json!({ "city": city, "temperature_c": t, "sky": if t % 2 == 0 { "clear" } else { "cloudy" } }))
            }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: axum::body::Bytes| async move {
                let ct = headers.get("content-type").cloned();
                let mut r = body.into_response();
                if let Some(ct) = ct {
                    r.headers_mut().insert("content-type", ct);
                }
                r
            }),
        )
        // What an upstream behind Péage is told: partner, forwarding headers, trace context.
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let seen: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
                    .collect();
                Json(json!({ "headers": seen }))
            }),
        )
        .route(
            "/slow",
            get(|Query(p): Query<SlowParams>| async move {
                let ms = p.ms.unwrap_or(1000).min(10_000);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Json(json!({ "slept_ms": ms }))
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({ "error": "no such demo route" }))) })
}

/// Binds the demo upstream and serves it in the background; returns its base URL.
pub async fn spawn(
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router())
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "demo upstream stopped");
        }
    });
    Ok(format!("http://{addr}"))
}

pub async fn serve_standalone(
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "demo upstream listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
