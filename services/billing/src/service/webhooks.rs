//! Webhooks signed per the Standard Webhooks specification (standardwebhooks.com): each message
//! carries `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed by the endpoint's `whsec_<base64>` secret. Deliveries are
//! queued in the billing store (so none is lost on restart), retried with backoff, and logged.

use peage_telemetry::WebhookOutcome;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use peage_billing_store::{Attempt, BillingStore, WebhookDelivery, WebhookEndpoint};
use peage_core::WebhookMessageId;
use sha2::Sha256;

use super::error::ServiceError;
use super::secrets::{webhook_row, SecretBox};

/// The event types Péage sends.
pub const EVENT_TYPES: &[&str] = &[
    "invoice.finalized",
    "invoice.paid",
    "invoice.overdue",
    "credit_note.created",
    "quota.soft_exceeded",
    "quota.hard_blocked",
    "quota.shadow_exceeded",
    "quota.near_limit",
    "alert.triggered",
];

/// Why a message cannot be signed or sent.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook secret is not base64: {0}")]
    SecretNotBase64(#[from] base64::DecodeError),
    #[error("webhook secret: {0}")]
    SecretLength(#[from] hmac::digest::InvalidLength),
    #[error("loading the system's CA roots: {0}")]
    CaRoots(std::io::Error),
}

/// The signature header value for one message.
pub fn sign(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &str,
) -> Result<String, WebhookError> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)?;
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// A new endpoint secret: 24 random bytes.
pub fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 24]>()))
}

pub(crate) fn message_ids() -> impl Iterator<Item = String> + Send {
    std::iter::repeat_with(|| WebhookMessageId::from_random(rand::random()).to_string())
}

/// Queues an event for every subscribed endpoint, once per `key`.
pub async fn enqueue(
    store: &dyn BillingStore,
    event_type: &str,
    key: &str,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<usize, ServiceError> {
    let payload = peage_core::invoice::webhook_message(event_type, now, data);
    Ok(store
        .enqueue_webhook(event_type, key, &payload, &mut message_ids(), now)
        .await?)
}

/// When to retry: after the n-th failed attempt wait `schedule[n-1]`; give up after the last.
/// The default follows the Standard Webhooks recommendation (5 s … 10 h, about a day in all).
#[derive(Debug, Clone)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule(
            [5, 300, 1800, 7200, 18000, 36000, 36000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

type HttpsClient = Client<
    peage_net::Guarded<
        hyper_rustls::HttpsConnector<
            hyper_util::client::legacy::connect::HttpConnector<peage_net::GuardedResolver>,
        >,
    >,
    Full<Bytes>,
>;

/// Deliveries go only where the outbound policy allows, checked after DNS at each connection
/// (an endpoint whose name later resolves to a private address is refused then).
fn client(policy: Arc<peage_net::OutboundPolicy>) -> Result<HttpsClient, WebhookError> {
    let mut http = peage_net::http_connector(peage_net::GuardedResolver::new(Arc::clone(&policy)));
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(WebhookError::CaRoots)?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(peage_net::Guarded::new(https, policy)))
}

/// What the delivery log says about a failed send. Deliberately coarse: a log that told
/// "connection refused" from "reset" from "no route" would map the network the endpoint's
/// address points at. The outbound policy's own refusals are shown as they are.
fn delivery_error(e: &hyper_util::client::legacy::Error) -> String {
    match peage_net::refusal_in(e) {
        Some(refused) => format!("refused by the outbound policy: {refused}"),
        None if e.is_connect() => "could not connect to the endpoint".into(),
        None => "the connection failed before an answer".into(),
    }
}

async fn deliver(
    client: &HttpsClient,
    secrets: &SecretBox,
    d: &WebhookDelivery,
    ep: &WebhookEndpoint,
    now: DateTime<Utc>,
) -> Result<i64, (Option<i64>, String)> {
    let ts = now.timestamp();
    let secret = secrets
        .open(&webhook_row(ep.id.as_str()), &ep.secret)
        .map_err(|e| (None, format!("the endpoint's secret: {e}")))?;
    let signature =
        sign(&secret, d.id.as_str(), ts, &d.payload).map_err(|e| (None, e.to_string()))?;
    let req = http::Request::post(&ep.url)
        .header("content-type", "application/json")
        .header("user-agent", "peage-webhooks/1")
        .header("webhook-id", d.id.as_str())
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(d.payload.clone())))
        .map_err(|e| (None, format!("bad request to {}: {e}", ep.url)))?;
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .map_err(|_| (None, "no answer within 15 s".to_string()))?
        .map_err(|e| {
            tracing::debug!(endpoint = %ep.url, error = %e, "webhook delivery failed");
            (None, delivery_error(&e))
        })?;
    let status = i64::from(resp.status().as_u16());
    if resp.status().is_success() {
        Ok(status)
    } else {
        Err((Some(status), format!("HTTP {status}")))
    }
}

/// How the webhook worker sends.
pub struct WorkerSettings {
    pub schedule: RetrySchedule,
    /// How often due deliveries are looked for.
    pub poll: Duration,
    /// Where deliveries may go.
    pub policy: Arc<peage_net::OutboundPolicy>,
    /// Opens the endpoints' secrets.
    pub secrets: Arc<SecretBox>,
}

/// Sends due deliveries until `shutdown` resolves.
pub async fn run_worker(
    store: Arc<dyn BillingStore>,
    settings: WorkerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let WorkerSettings {
        schedule,
        poll,
        policy,
        secrets,
    } = settings;
    let client = match client(policy) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; deliveries stay queued");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let now = Utc::now();
        let due = match store.due_webhooks(now, 50).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: reading the queue failed");
                continue;
            }
        };
        for (d, ep) in due {
            let at = Utc::now();
            let started = std::time::Instant::now();
            let attempt = match deliver(&client, &secrets, &d, &ep, at).await {
                Ok(status) => Attempt::Delivered { status },
                Err((status, error)) => match schedule.0.get(d.attempts as usize) {
                    Some(wait) => Attempt::Retry {
                        next: at + chrono::Duration::from_std(*wait).unwrap_or_default(),
                        status,
                        error,
                    },
                    None => Attempt::GaveUp { status, error },
                },
            };
            let (outcome, detail) = match &attempt {
                Attempt::Delivered { status } => (WebhookOutcome::Delivered, status.to_string()),
                Attempt::Retry { status, error, .. } => (
                    WebhookOutcome::Retrying,
                    format!(
                        "{} {error}",
                        status.map(|s| s.to_string()).unwrap_or_default()
                    ),
                ),
                Attempt::GaveUp { status, error } => (
                    WebhookOutcome::Failed,
                    format!(
                        "{} {error}",
                        status.map(|s| s.to_string()).unwrap_or_default()
                    ),
                ),
            };
            peage_telemetry::emit!(peage_telemetry::WebhookAttempted {
                delivery_id: d.id.as_ref(),
                event_type: &d.event_type,
                attempt: d.attempts.saturating_add(1) as u32,
                outcome,
                detail: detail.trim(),
                elapsed: started.elapsed(),
            });
            if let Err(e) = store.record_webhook_attempt(&d.id, at, &attempt).await {
                tracing::warn!(error = %e, "webhooks: recording an attempt failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        // The test vector of the Standard Webhooks reference libraries (standard-webhooks
        // repository, libraries/*/tests): secret, msg id, timestamp and payload below.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_that_is_not_base64_is_an_error() {
        assert!(sign("whsec_***", "msg", 1, "{}").is_err());
    }
}
