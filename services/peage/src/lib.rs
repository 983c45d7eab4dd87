//! The `peage` binary's library: each command wires the service crates together.

pub mod backup_cli;
pub mod catalog_cli;
pub mod catalog_reload;
pub mod config;
pub mod demo;
pub mod events_cli;
pub mod events_sink;
pub mod invoice_cli;
pub mod metrics;
pub mod node;
pub mod partners_cli;
pub mod plans_cli;
pub mod roles;
pub mod secrets_cli;
pub mod service_token_cli;
pub mod sign_in_cli;
pub mod staff_cli;
pub mod up;
pub mod usage_keys;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
