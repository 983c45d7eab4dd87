//! The control API on fresh embedded stores, served on a free port, for the integration tests.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use peage_billing::service::invoicing::Issuer;
use peage_billing::{ControlApi, ControlSettings, OAuthConfig};
use peage_billing_store::{BillingStore, SqliteBillingStore};
use peage_core::{CallEvent, Catalog, Env};
use peage_usage_store::SqliteUsageStore;

pub const TOKEN: &str = "admin-test-token";

// Each test crate reads its own subset of the fields.
#[allow(dead_code)]
pub struct Served {
    pub base: String,
    pub api: Arc<ControlApi>,
    pub store: Arc<dyn BillingStore>,
    pub usage: Arc<SqliteUsageStore>,
    /// Kept for the stores' files: dropped, the directory goes.
    pub dir: tempfile::TempDir,
}

/// A key-encryption key for the tests' stores.
pub fn secrets() -> Arc<peage_billing::service::secrets::SecretBox> {
    Arc::new(peage_billing::service::secrets::SecretBox::new(&[7; 32], &[]).unwrap())
}

/// What the tests' webhook endpoints and identity providers need: http on loopback.
pub fn loopback_policy() -> Arc<peage_net::OutboundPolicy> {
    Arc::new(peage_net::OutboundPolicy::new(
        true,
        vec!["127.0.0.0/8".parse().unwrap()],
    ))
}

/// Parses `catalog`, opens the stores in a temporary directory and serves the control API,
/// letting outbound calls reach loopback ([`loopback_policy`]).
pub async fn serve(catalog: &str) -> Served {
    serve_with(catalog, loopback_policy()).await
}

/// [`serve`] under another outbound policy.
pub async fn serve_with(catalog: &str, outbound: Arc<peage_net::OutboundPolicy>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(peage_core::catalog::LiveCatalog::new(
        Catalog::parse("catalog.toml", catalog, &|_| None).unwrap(),
    ));
    let store: Arc<dyn BillingStore> = Arc::new(
        SqliteBillingStore::open(&dir.path().join("billing.db"))
            .await
            .unwrap(),
    );
    let usage = Arc::new(
        SqliteUsageStore::open(&dir.path().join("usage.db"))
            .await
            .unwrap(),
    );
    let api = ControlApi::new(
        catalog,
        Arc::clone(&store),
        usage.clone(),
        TOKEN.into(),
        None,
        ControlSettings {
            oauth: OAuthConfig::default(),
            issuer: Issuer {
                name: "Acme APIs SAS".into(),
                address: vec!["1 rue de la Paix".into(), "75002 Paris".into()],
                tax_id: Some("FR12345678901".into()),
                prefix: "PEAGE".into(),
            },
            outbound,
            secrets: secrets(),
            credential_failures_per_minute: 20,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(peage_billing::serve(
        listener,
        Arc::clone(&api),
        std::future::pending(),
    ));
    Served {
        base,
        api,
        store,
        usage,
        dir,
    }
}

/// The first day of the month `back` months before this one, UTC.
#[allow(dead_code)] // not every test crate bills past periods
pub fn month_start(back: i32) -> DateTime<Utc> {
    use chrono::{Datelike, TimeZone};
    let now = Utc::now();
    let months = now.year() * 12 + now.month0() as i32 - back;
    Utc.with_ymd_and_hms(months / 12, (months % 12) as u32 + 1, 1, 0, 0, 0)
        .unwrap()
}

/// `n` live `200` calls of the partner to `maps v1`, a second apart from `at`.
#[allow(dead_code)] // not every test crate bills calls
pub fn calls(partner: &str, at: DateTime<Utc>, n: usize) -> Vec<CallEvent> {
    (0..n)
        .map(|i| {
            let mut e: CallEvent = serde_json::from_str(include_str!(
                "../../../../schemas/events/examples/rest_call.json"
            ))
            .unwrap();
            e.id = uuid::Uuid::now_v7();
            e.time = at + chrono::Duration::seconds(i as i64);
            e.partner_id = partner.into();
            e.env = Env::Live;
            e.api = "maps".into();
            e.version = "v1".into();
            e.status = 200;
            e
        })
        .collect()
}

/// Stores accepted usage events at once, as the aggregator would: the events API's sink for
/// tests that post events and read invoices.
#[allow(dead_code)] // not every test crate posts events
pub struct StoreDirectly(pub Arc<SqliteUsageStore>, pub std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl peage_billing::service::events::UsageEventSink for StoreDirectly {
    async fn append(
        &self,
        events: &[peage_core::UsageEvent],
    ) -> Result<(), peage_billing::service::events::SinkRefused> {
        use peage_usage_store::UsageStore;
        let logged: Vec<peage_usage_store::LoggedUsageEvent> = events
            .iter()
            .map(|e| peage_usage_store::LoggedUsageEvent {
                partition: 0,
                offset: self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                event: e.clone(),
            })
            .collect();
        self.0
            .insert_usage_events("test", &logged)
            .await
            .map(|_| ())
            .map_err(|e| peage_billing::service::events::SinkRefused(e.to_string()))
    }
}

// Each test crate uses its own subset of these.
#[allow(dead_code)]
impl Served {
    /// A call with the admin token: the status and the JSON answer (`Null` when there is none).
    pub async fn call(
        &self,
        method: &str,
        path: String,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// A GET with the admin token answered as bytes: status, content type, body.
    pub async fn raw(&self, path: String) -> (u16, String, Vec<u8>) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (r.status().as_u16(), ct, r.bytes().await.unwrap().to_vec())
    }

    /// Puts `partner` (as `POST /v1/partners` answered it) on its plan since `start`, through
    /// the store: the API starts subscriptions now.
    pub async fn on_plan_since(&self, partner: &serde_json::Value, start: DateTime<Utc>) {
        self.store
            .change_subscription(
                &partner["id"].as_str().unwrap().parse().unwrap(),
                &peage_billing_store::Subscription {
                    plan_id: partner["subscription"]["plan_id"].as_str().unwrap().into(),
                    plan_version: partner["subscription"]["plan_version"]
                        .as_str()
                        .unwrap()
                        .into(),
                    started_at: start,
                    ended_at: None,
                },
            )
            .await
            .unwrap();
    }

    /// `POST /v1/partners` with `body`, which must succeed: the partner's id and record.
    pub async fn create_partner(&self, body: serde_json::Value) -> (String, serde_json::Value) {
        let (s, partner) = self.call("POST", "/v1/partners".into(), body).await;
        assert_eq!(s, 201, "{partner}");
        (partner["id"].as_str().unwrap().to_string(), partner)
    }

    /// Runs the invoices of period `label` (`2026-10`) and answers the partner's: the entry of
    /// `GET /v1/invoices` (`id`, `invoice`, …).
    pub async fn invoice_of_period(&self, label: &str, partner_id: &str) -> serde_json::Value {
        let (s, run) = self
            .call(
                "POST",
                "/v1/invoices/run".into(),
                serde_json::json!({"period": label}),
            )
            .await;
        assert_eq!(s, 200, "{run}");
        let (s, list) = self
            .call(
                "GET",
                format!("/v1/invoices?period={label}&partner_id={partner_id}"),
                serde_json::Value::Null,
            )
            .await;
        assert_eq!(s, 200, "{list}");
        list["invoices"][0].clone()
    }

    /// Lets `POST /v1/events` store accepted events at once, as the aggregator would.
    pub fn store_events_directly(&self) {
        assert!(self
            .api
            .take_events(peage_billing::service::events::EventsIntake {
                sink: Arc::new(StoreDirectly(
                    self.usage.clone(),
                    std::sync::atomic::AtomicU64::new(0)
                )),
                window: Default::default(),
                max_events: 1000,
                max_bytes: 1 << 20,
                known_keys: None,
            }));
    }
}
