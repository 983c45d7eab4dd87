//! The gateway in process: its real server (two serving threads), router and stages, in front
//! of a stub upstream that resolves dot segments as nginx does, with the real embedded event
//! log behind it. Keys and quota leases come from in-memory stand-ins for billing. No binary.
//!
//! Every refusal kind is provoked and checked against the rule of docs/gateway.md
//! ("Refusals"): its status and problem type, and whether the call became an event.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use peage_core::ids::api_key;
use peage_core::pricing::QuotaKind;
use peage_core::quota::{Lease, LeaseRequest, QuotaLedger};
use peage_core::{CallEvent, Catalog, Env};
use peage_eventlog::{EmbeddedLog, EventEmitter, EventLog, EventLogError, LogConsumer};
use peage_gateway::call::refusal::RefusalKind;
use peage_gateway::quota::{LeaseError, UnreachablePolicy};
use peage_gateway::{
    EdgeLimits, Gateway, GatewayConfig, GatewayServer, JwtConfig, KeyCache, KeyLookupError,
    KeyResolver, QuotaAuthority, QuotaConfig, Quotas, ResolvedKey,
};
use rust_decimal::Decimal;
use serde_json::Value;

// ---- the stub upstream --------------------------------------------------------------------

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    /// The request target byte for byte.
    raw_path: String,
    /// The path once dot segments are resolved, as nginx resolves them before routing.
    resolved: String,
    headers: http::HeaderMap,
}

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
}

/// RFC 3986 §5.2.4 on a raw path, decoding `%2e` first (as nginx does).
fn resolve_dots(raw: &str) -> String {
    let decoded = raw.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

async fn start_upstream() -> (SocketAddr, Arc<Upstream>) {
    let upstream = Arc::new(Upstream::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::clone(&upstream);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let raw = req.uri().path().to_string();
                            let resolved = resolve_dots(&raw);
                            state.seen.lock().unwrap().push(Seen {
                                raw_path: raw.clone(),
                                resolved: resolved.clone(),
                                headers: req.headers().clone(),
                            });
                            let _ = req.into_body().collect().await;
                            if resolved.ends_with("/slow") {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            let body = serde_json::json!({ "path": resolved }).to_string();
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            if resolved.ends_with("/units") {
                                r.headers_mut()
                                    .insert("peage-units", "2.5".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, upstream)
}

// ---- billing stand-ins --------------------------------------------------------------------

const LIVE: &str = "pk_live_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TEST: &str = "pk_test_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SCOPED: &str = "pk_live_cccccccccccccccccccccccccccccccc";
const TIGHT: &str = "pk_live_dddddddddddddddddddddddddddddddd";
const CAPPED: &str = "pk_live_eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const NO_BILLING: &str = "pk_live_ffffffffffffffffffffffffffffffff";
const LOOKUP_FAILS: &str = "pk_live_gggggggggggggggggggggggggggggggg";
const REVOKED: &str = "pk_live_hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh";
const SHADOW: &str = "pk_live_iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii";
const NEAR: &str = "pk_live_jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj";
const LIMITED: &str = "pk_live_kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";
const ROTATED_OUT: &str = "pk_live_llllllllllllllllllllllllllllllll";
const ROTATED_IN_OVERLAP: &str = "pk_live_mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm";

struct Keys(HashMap<String, ResolvedKey>);

fn key(id: &str, partner: &str, env: Env, plan: &str) -> ResolvedKey {
    ResolvedKey {
        key_id: id.into(),
        partner_id: partner.into(),
        env,
        revoked: false,
        expires_at: None,
        plan_id: plan.into(),
        scopes: None,
    }
}

impl Keys {
    fn new() -> Keys {
        let mut m = HashMap::new();
        for (secret, k) in [
            (LIVE, key("key_live", "prt_a", Env::Live, "open")),
            (TEST, key("key_test", "prt_a", Env::Sandbox, "open")),
            (
                SCOPED,
                ResolvedKey {
                    scopes: Some(vec!["other".into()]),
                    ..key("key_scoped", "prt_a", Env::Live, "open")
                },
            ),
            (TIGHT, key("key_tight", "prt_t", Env::Live, "tight")),
            (CAPPED, key("key_capped", "prt_c", Env::Live, "capped")),
            (SHADOW, key("key_shadow", "prt_s", Env::Live, "shadowed")),
            (NEAR, key("key_near", "prt_n", Env::Live, "near")),
            (LIMITED, key("key_limited", "prt_l", Env::Live, "limited")),
            (
                ROTATED_OUT,
                ResolvedKey {
                    expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
                    ..key("key_rotated_out", "prt_a", Env::Live, "open")
                },
            ),
            (
                ROTATED_IN_OVERLAP,
                ResolvedKey {
                    expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(24)),
                    ..key("key_rotated_in", "prt_a", Env::Live, "open")
                },
            ),
            (
                NO_BILLING,
                key("key_nobill", "prt_down", Env::Live, "capped"),
            ),
            (
                REVOKED,
                ResolvedKey {
                    revoked: true,
                    expires_at: None,
                    ..key("key_revoked", "prt_a", Env::Live, "open")
                },
            ),
        ] {
            m.insert(api_key::secret_hash(secret), k);
        }
        Keys(m)
    }
}

#[async_trait]
impl KeyResolver for Keys {
    async fn resolve(&self, hash: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
        if hash == api_key::secret_hash(LOOKUP_FAILS) {
            return Err(KeyLookupError::Unavailable(
                "billing database unreachable".into(),
            ));
        }
        Ok(self.0.get(hash).cloned())
    }
}

/// Grants as billing does (the real `decide`), and cannot be reached for partner `prt_down`.
#[derive(Default)]
struct Billing {
    granted: Mutex<HashMap<String, Decimal>>,
}

#[async_trait]
impl QuotaAuthority for Billing {
    async fn lease(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        if req.partner_id == "prt_down" {
            return Err(LeaseError::Unreachable("connection refused".into()));
        }
        // As the catalog's plans say: prt_s's quota is in shadow mode, prt_n's is 10.
        let quota = peage_core::pricing::Quota {
            meter: req.meter.clone(),
            limit: Decimal::from(if req.partner_id == "prt_n" { 10 } else { 1 }),
            kind: QuotaKind::Hard,
            shadow: req.partner_id == "prt_s",
            near_limit: None,
        };
        let mut granted = self.granted.lock().unwrap();
        let g = granted.entry(req.partner_id.clone()).or_default();
        let ledger = QuotaLedger {
            used: Decimal::ZERO,
            granted: *g,
            gateways: 1,
        };
        let grant = peage_core::quota::decide(&quota, &ledger, req.want);
        *g += grant.granted;
        let start = chrono::Utc::now() - chrono::Duration::days(1);
        Ok(Lease {
            partner_id: req.partner_id.clone(),
            meter: req.meter.clone(),
            env: req.env,
            kind: QuotaKind::Hard,
            shadow: quota.shadow,
            granted: grant.granted,
            remaining: grant.remaining,
            limit: quota.limit,
            period_start: start,
            resets_at: start + chrono::Duration::days(30),
            decision: grant.decision,
        })
    }
}

/// The real embedded log, with a switch that makes it refuse new events (a full spool).
struct Gated {
    log: EmbeddedLog,
    open: AtomicBool,
}

#[async_trait]
impl EventLog for Gated {
    async fn append(&self, events: &[CallEvent]) -> Result<(), EventLogError> {
        self.log.append(events).await
    }
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, EventLogError> {
        self.log.consumer(group).await
    }
    fn accepting(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
}

// ---- the gateway under test ---------------------------------------------------------------

fn catalog(upstream: SocketAddr, dead: SocketAddr) -> Catalog {
    let text = format!(
        r#"
[[api]]
name = "demo"
[[api.versions]]
id = "v1"
live = "http://{upstream}/live"
sandbox = "http://{upstream}/sandbox"
operations = {{ "GET /hello" = {{ units = 1 }} }}
[[api.versions]]
id = "v2"
live = "http://{upstream}/v2base"
cors = {{ origins = ["https://app.partner.example", "https://*.apps.example"], max_age = 300 }}
[[api.versions]]
id = "v0"
status = "retired"
live = "http://{upstream}/v0"
[[api.versions]]
id = "old"
status = "deprecated"
deprecated = 2026-01-01
sunset = 2027-01-01
successor = "v1"
live = "http://{upstream}/old"

[[api]]
name = "nosb"
[[api.versions]]
id = "v1"
live = "http://{upstream}/nosb"

[[api]]
name = "dead"
[[api.versions]]
id = "v1"
live = "http://{dead}"

[[api]]
name = "gql"
[[api.versions]]
id = "v1"
protocol = "graphql"
live = "http://{upstream}/graphql"

[[api]]
name = "greet"
[[api.versions]]
id = "v1"
protocol = "grpc"
grpc_services = ["greet.v1.Greeter"]
live = "http://{dead}"

[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "open"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]

[[plan]]
id = "tight"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]
rate_limit = {{ per_second = 1, burst = 1 }}

[[plan]]
id = "capped"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]
quotas = [{{ meter = "calls", limit = 1, kind = "hard" }}]

[[plan]]
id = "shadowed"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]
quotas = [{{ meter = "calls", limit = 1, kind = "hard", shadow = true }}]
rate_limit = {{ per_second = 1, burst = 1, shadow = true }}

[[plan]]
id = "near"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]
quotas = [{{ meter = "calls", limit = 10, kind = "hard", near_limit = "0.8" }}]

[[plan]]
id = "limited"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]
apis = [{{ api = "demo", versions = ["v1", "v2"], operations = ["GET /hello"] }}, {{ api = "gql" }}]
"#
    );
    Catalog::parse("catalog.toml", &text, &|_| None).unwrap()
}

struct Suite {
    addr: SocketAddr,
    upstream_addr: SocketAddr,
    gateway: Arc<Gateway>,
    upstream: Arc<Upstream>,
    log: Arc<Gated>,
    emitter: EventEmitter,
    _server: GatewayServer,
    _dir: tempfile::TempDir,
}

const HEADER_TIMEOUT: Duration = Duration::from_millis(600);
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

async fn suite(edge: EdgeLimits) -> Suite {
    suite_with(edge, None).await
}

async fn suite_with(edge: EdgeLimits, tls: Option<peage_gateway::tls::TlsFiles>) -> Suite {
    let (upstream_addr, upstream) = start_upstream().await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Gated {
        log: EmbeddedLog::open(dir.path()).unwrap(),
        open: AtomicBool::new(true),
    });
    let emitter = EventEmitter::start(Arc::clone(&log) as Arc<dyn EventLog>, 10_000);
    let quotas = Quotas::new(
        Arc::new(Billing::default()),
        QuotaConfig {
            lease_size: Decimal::ONE,
            unreachable: UnreachablePolicy::Refuse,
            lease_timeout: Duration::from_millis(500),
            ..QuotaConfig::default()
        },
        "gw-test".into(),
    );
    let gateway = Gateway::new(
        Arc::new(catalog(upstream_addr, dead)),
        KeyCache::new(Arc::new(Keys::new()), Duration::from_secs(60)),
        emitter.clone(),
        Some(quotas),
        GatewayConfig {
            gateway_id: "gw-test".into(),
            upstream_timeout: Duration::from_millis(400),
            max_request_body_bytes: 1024,
            jwt: Some(JwtConfig {
                issuer: "https://peage.test".into(),
                audience: "peage".into(),
                jwks_url: format!("http://{dead}/.well-known/jwks.json"),
                leeway: Duration::from_secs(30),
            }),
            threads: 2,
            edge,
            credential_failures_per_minute: FAILURES_PER_MINUTE,
            tls,
            ..GatewayConfig::default()
        },
    );
    let server = GatewayServer::bind(Arc::clone(&gateway), "127.0.0.1:0".parse().unwrap()).unwrap();
    Suite {
        addr: server.local_addr(),
        upstream_addr,
        gateway,
        upstream,
        log,
        emitter,
        _server: server,
        _dir: dir,
    }
}

/// Wrong credentials one address may send in a minute in these suites.
const FAILURES_PER_MINUTE: u32 = 5;

fn edge() -> EdgeLimits {
    EdgeLimits {
        header_read_timeout: HEADER_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        max_connections: 256,
    }
}

/// One raw HTTP/1.1 exchange on a fresh connection: the request target and headers are sent
/// byte for byte (clients normalize `..`; an attacker's does not).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, BTreeMap<String, String>, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (
        status,
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

fn bearer(secret: &str) -> String {
    format!("Authorization: Bearer {secret}\r\n")
}

/// Every event the log holds, once metering has caught up.
async fn events(s: &Suite) -> Vec<CallEvent> {
    s.emitter.flush().await;
    let mut c = s
        .log
        .consumer(&format!("t{}", uuid::Uuid::now_v7().simple()))
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let batch = c.poll(10_000, Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        out.extend(
            batch
                .iter()
                .map(|r| serde_json::from_slice::<CallEvent>(&r.payload).unwrap()),
        );
    }
    out
}

// ---- the tests ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_goes_below_its_version_base_named_and_metered_once() {
    let s = suite(edge()).await;
    let (status, _, body) = raw(s.addr, &get("/demo/v1/hello?x=1", &bearer(LIVE)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/live/hello");
    let (status, headers, body) = raw(s.addr, &get("/demo/v1/units", &bearer(TEST)));
    assert_eq!(status, 200);
    assert_eq!(
        body["path"], "/sandbox/units",
        "a test key goes to the sandbox"
    );
    assert!(
        !headers.contains_key("peage-units"),
        "read by the gateway, not passed on"
    );

    let seen = s.upstream.seen.lock().unwrap().clone();
    let h = &seen[0].headers;
    assert!(
        h.get("authorization").is_none(),
        "the credential stays at the gateway"
    );
    assert_eq!(h["peage-partner-id"], "prt_a");
    assert_eq!(h["peage-env"], "live");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "gw");
    assert_eq!(h["host"], s.upstream_addr.to_string());

    let evs = events(&s).await;
    assert_eq!(evs.len(), 2, "one event per call: {evs:?}");
    let live = evs.iter().find(|e| e.env == Env::Live).unwrap();
    assert_eq!(
        (
            live.api.as_str(),
            live.version.as_str(),
            live.operation.as_str()
        ),
        ("demo", "v1", "GET /hello")
    );
    assert_eq!((live.status, live.units), (200, Decimal::ONE));
    assert!(live.response_bytes > 0);
    let sandbox = evs.iter().find(|e| e.env == Env::Sandbox).unwrap();
    assert_eq!(
        sandbox.units,
        Decimal::new(25, 1),
        "units from the upstream's Peage-Units"
    );
    assert!(!live.attributes.contains_key("refusal"));
}

/// The rule of docs/gateway.md ("Refusals"), written out on its own: each kind's status,
/// whether the call becomes an event, and whether that event counts as forwarded.
const RULE: [(RefusalKind, u16, bool, bool); 22] = {
    use RefusalKind::*;
    [
        (BadPath, 400, false, false),
        (BadApiVersion, 400, false, false),
        (ApiVersionConflict, 400, false, false),
        (UnknownApi, 404, false, false),
        (Unauthorized, 401, false, false),
        (KeyLookupUnavailable, 503, false, false),
        (TokenCheckUnavailable, 503, false, false),
        (MeteringUnavailable, 503, false, false),
        (InsufficientScope, 403, true, false),
        (NotEntitled, 403, true, false),
        (VersionRetired, 410, true, false),
        (NoSandbox, 403, true, false),
        (RateLimited, 429, true, false),
        (QuotaExceeded, 429, true, false),
        (QuotaUnavailable, 503, true, false),
        (RequestTooLarge, 413, true, false),
        (BadRequestBody, 400, true, false),
        (BadGraphql, 400, true, false),
        (UpstreamUnavailable, 502, true, true),
        (UpstreamTimeout, 504, true, true),
        (TooManyFailures, 429, false, false),
        (CorsRefused, 403, false, false),
    ]
};

/// One way to provoke each refusal.
fn provoke(s: &Suite, kind: RefusalKind) -> Vec<u8> {
    use RefusalKind::*;
    let path = format!("/demo/v1/case/{}", kind.slug());
    match kind {
        BadPath => get("/demo/v1/../../case/bad-path", &bearer(LIVE)),
        BadApiVersion => {
            let mut r = b"GET /demo/case/bad-api-version HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nApi-Version: \xff\r\n".to_vec();
            r.extend_from_slice(bearer(LIVE).as_bytes());
            r.extend_from_slice(b"\r\n");
            r
        }
        ApiVersionConflict => get(&path, &format!("Api-Version: v2\r\n{}", bearer(LIVE))),
        UnknownApi => get("/nope/v1/case/unknown-api", &bearer(LIVE)),
        Unauthorized => get(&path, ""),
        KeyLookupUnavailable => get(&path, &bearer(LOOKUP_FAILS)),
        TokenCheckUnavailable => {
            // A JWT's shape from Péage's own issuer: its JWKS cannot be fetched.
            use base64::Engine;
            let b64 = |v: &Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            let token = format!(
                "{}.{}.c2ln",
                b64(&serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"})),
                b64(&serde_json::json!({"iss": "https://peage.test", "aud": "peage", "exp": 4102444800u64}))
            );
            get(&path, &bearer(&token))
        }
        MeteringUnavailable => {
            s.log.open.store(false, Ordering::Relaxed);
            get(&path, &bearer(LIVE))
        }
        InsufficientScope => get(&path, &bearer(SCOPED)),
        // The plan grants demo v1's `GET /hello` only.
        NotEntitled => get(&path, &bearer(LIMITED)),
        VersionRetired => get("/demo/v0/case/version-retired", &bearer(LIVE)),
        NoSandbox => get("/nosb/v1/case/no-sandbox", &bearer(TEST)),
        RateLimited => get("/demo/v1/case/rate-limited", &bearer(TIGHT)),
        QuotaExceeded => get("/demo/v1/case/quota-exceeded", &bearer(CAPPED)),
        QuotaUnavailable => get(&path, &bearer(NO_BILLING)),
        RequestTooLarge => format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{}Content-Length: 2000\r\n\r\n{}",
            bearer(LIVE),
            "x".repeat(2000)
        )
        .into_bytes(),
        BadRequestBody => format!(
            "POST /gql/v1/case/bad-request-body HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
            bearer(LIVE)
        )
        .into_bytes(),
        BadGraphql => format!(
            "POST /gql/v1/case/bad-graphql-request HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{}Content-Type: application/json\r\nContent-Length: 8\r\n\r\nnot json",
            bearer(LIVE)
        )
        .into_bytes(),
        UpstreamUnavailable => get("/dead/v1/case/upstream-unavailable", &bearer(LIVE)),
        UpstreamTimeout => get("/demo/v1/case/upstream-timeout/slow", &bearer(LIVE)),
        TooManyFailures => {
            // Guessing keys: each wrong one is a 401 until the address has used its minute's
            // allowance; from then on every attempt is a 429, the right key's too.
            for i in 0..FAILURES_PER_MINUTE {
                let guess = format!("pk_live_{i:0>32}");
                assert_eq!(raw(s.addr, &get(&path, &bearer(&guess))).0, 401, "guess {i}");
            }
            get(&path, &bearer(LIVE))
        }
        // demo v1 has no CORS policy: its preflights are refused.
        CorsRefused => preflight(&path, "https://app.partner.example", "GET", "authorization"),
    }
}

fn preflight(path: &str, origin: &str, method: &str, headers: &str) -> Vec<u8> {
    format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_answered_as_its_kind_and_recorded_by_the_rule() {
    let s = suite(edge()).await;
    // Spends the quota of 1 of the capped key.
    assert_eq!(raw(s.addr, &get("/demo/v1/first", &bearer(CAPPED))).0, 200);
    assert_eq!(
        RULE.len(),
        RefusalKind::ALL.len(),
        "every kind is in the rule"
    );
    for (kind, status, recorded, forwarded) in RULE {
        assert_eq!(kind.status().as_u16(), status, "{kind:?}");
        assert_eq!(kind.recorded(), recorded, "{kind:?}");
        assert_eq!(kind.forwarded(), forwarded, "{kind:?}");
    }
    for kind in RefusalKind::ALL {
        if kind == RefusalKind::RateLimited {
            // The key may call once a second: this call passes, the next is refused.
            assert_eq!(raw(s.addr, &get("/demo/v1/first", &bearer(TIGHT))).0, 200);
        }
        let request = provoke(&s, kind);
        let addr = s.addr;
        let (status, headers, body) = tokio::task::spawn_blocking(move || raw(addr, &request))
            .await
            .unwrap();
        s.log.open.store(true, Ordering::Relaxed);
        if kind == RefusalKind::KeyLookupUnavailable {
            // A failed lookup leaves the resolver alone for a second (keys never seen get a
            // quick 503 meanwhile): let it pass before the next kind.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(status, kind.status().as_u16(), "{kind:?}: {body}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{kind:?}"
        );
        assert_eq!(
            body["type"],
            format!("https://peage.dev/problems/{}", kind.slug()),
            "{kind:?}"
        );
        assert_eq!(body["status"], kind.status().as_u16());
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        match kind {
            RefusalKind::RateLimited | RefusalKind::QuotaExceeded => {
                assert!(headers.contains_key("ratelimit-policy"), "{kind:?}");
                assert!(headers.contains_key("retry-after"), "{kind:?}");
            }
            RefusalKind::TooManyFailures => {
                assert!(headers.contains_key("retry-after"), "{kind:?}");
            }
            RefusalKind::Unauthorized | RefusalKind::InsufficientScope => {
                assert!(headers.contains_key("www-authenticate"), "{kind:?}");
            }
            RefusalKind::KeyLookupUnavailable
            | RefusalKind::TokenCheckUnavailable
            | RefusalKind::MeteringUnavailable
            | RefusalKind::QuotaUnavailable => {
                assert!(
                    headers.contains_key("retry-after"),
                    "{kind:?} is a quick 503 to retry"
                );
            }
            _ => {}
        }
    }

    let evs = events(&s).await;
    for kind in RefusalKind::ALL {
        let recorded: Vec<&CallEvent> = evs
            .iter()
            .filter(|e| e.operation.contains(&format!("/case/{}", kind.slug())))
            .collect();
        if !kind.recorded() {
            assert!(
                recorded.is_empty(),
                "{kind:?} is not recorded: {recorded:?}"
            );
            continue;
        }
        assert_eq!(recorded.len(), 1, "{kind:?} is recorded once: {evs:#?}");
        let e = recorded[0];
        assert_eq!(e.status, kind.status().as_u16(), "{kind:?}");
        assert!(!e.partner_id.is_empty());
        if kind.forwarded() {
            assert!(!e.attributes.contains_key("refusal"), "{kind:?}");
        } else {
            assert_eq!(
                e.attributes.get("refusal").map(String::as_str),
                Some(kind.slug())
            );
            assert_eq!(e.units, Decimal::ZERO, "{kind:?}: nothing was served");
        }
    }
    // The upstream saw none of the calls refused before forwarding.
    let seen = s.upstream.seen.lock().unwrap();
    for kind in RefusalKind::ALL.iter().filter(|k| !k.forwarded()) {
        assert!(
            seen.iter().all(|r| !r.raw_path.contains(kind.slug())),
            "{kind:?} reached the upstream"
        );
    }
    let metrics = s.gateway.render_metrics();
    assert!(
        metrics.contains("peage_gateway_refusals_total{reason=\"bad-path\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_grants_its_apis_versions_and_operations_and_refuses_the_rest() {
    let s = suite(edge()).await;
    // Granted: demo v1's GET /hello, the whole of gql.
    assert_eq!(raw(s.addr, &get("/demo/v1/hello", &bearer(LIMITED))).0, 200);
    let gql = format!(
        "POST /gql/v1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{}Content-Type: application/json\r\nContent-Length: 25\r\n\r\n{{\"query\":\"query Q {{ a }}\"}}",
        bearer(LIMITED)
    );
    assert_eq!(raw(s.addr, gql.as_bytes()).0, 200);
    // Not granted: another API, a version left out, another operation of a granted version.
    for (path, says) in [
        ("/nosb/v1/x", "does not include nosb v1"),
        ("/demo/old/hello", "does not include demo old"),
        ("/demo/v1/other", "does not include GET /other of demo v1"),
        ("/demo/v2/other", "does not include GET /other of demo v2"),
    ] {
        let (status, _, body) = raw(s.addr, &get(path, &bearer(LIMITED)));
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["type"], "https://peage.dev/problems/not-entitled");
        assert_eq!(body["title"], "Not included in the plan");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{path}: {detail}");
    }
    // A plan that names no APIs grants them all.
    assert_eq!(raw(s.addr, &get("/nosb/v1/x", &bearer(LIVE))).0, 200);
    // Refused calls are recorded against the partner, served nothing.
    let refused: Vec<CallEvent> = events(&s)
        .await
        .into_iter()
        .filter(|e| e.partner_id == "prt_l" && e.status == 403)
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused
        .iter()
        .all(|e| e.attributes.get("refusal").map(String::as_str) == Some("not-entitled")));
    // Nothing refused reached the upstream.
    let seen = s.upstream.seen.lock().unwrap();
    assert!(
        seen.iter().all(|r| !r.raw_path.contains("/other")),
        "{:?}",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_versions_answer_with_their_lifecycle_even_when_refusing() {
    let s = suite(edge()).await;
    for (request, status) in [
        (get("/demo/old/hello", &bearer(LIVE)), 200),
        (get("/demo/old/hello", ""), 401),
    ] {
        let (got, headers, _) = raw(s.addr, &request);
        assert_eq!(got, status);
        assert_eq!(headers["deprecation"], "@1767225600");
        assert_eq!(headers["sunset"], "Fri, 01 Jan 2027 00:00:00 GMT");
        assert_eq!(headers["link"], "</demo/v1>; rel=\"successor-version\"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_refusals_as_grpc_statuses() {
    let s = suite(edge()).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .post(format!("http://{}/greet.v1.Greeter/SayHello", s.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "16", "UNAUTHENTICATED");
    assert!(r.headers()["grpc-message"]
        .to_str()
        .unwrap()
        .contains("API key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_leave_the_version_base_against_an_upstream_that_resolves_dot_segments() {
    let s = suite(edge()).await;
    let attacks = [
        // Out of v1 into v2's base, or from the sandbox into live.
        "/demo/v1/../v2/secret",
        "/demo/v1/../../demo/v2/secret",
        "/demo/v1/%2e%2e/v2/secret",
        "/demo/v1/%2E%2E/v2/secret",
        "/demo/v1/.%2e/v2/secret",
        "/demo/v1/%2e./v2/secret",
        "/demo/v1/a/../../v2/secret",
        "/demo/v1/..;/v2/secret",
        "/demo/v1/..%2fv2/secret",
        "/demo/v1/..%2Fv2/secret",
        "/demo/v1/..%5cv2/secret",
        "/demo/v1/x%00",
        "/demo/%2e%2e/demo/v2/secret",
    ];
    for path in attacks {
        for secret in [LIVE, TEST] {
            let (status, headers, body) = raw(s.addr, &get(path, &bearer(secret)));
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(headers["content-type"], "application/problem+json");
            assert_eq!(
                body["type"], "https://peage.dev/problems/bad-path",
                "{path}"
            );
        }
    }
    assert!(
        s.upstream.seen.lock().unwrap().is_empty(),
        "no escape attempt was forwarded"
    );
    // Dot segments that stay inside the version are resolved before forwarding.
    let (status, _, body) = raw(s.addr, &get("/demo/v1/a/./b/../hello", &bearer(TEST)));
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/sandbox/a/hello");
    let seen = s.upstream.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].raw_path, "/sandbox/a/hello",
        "forwarded already normalized"
    );
    for r in seen.iter() {
        assert!(r.resolved.starts_with("/sandbox/") || r.resolved.starts_with("/live/"));
    }
}

/// Writes half a request head and waits; returns how long until the gateway closed it.
fn slow_header_client(addr: SocketAddr) -> Option<Duration> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let started = Instant::now();
    s.write_all(b"GET /demo/v1/hello HTTP/1.1\r\nHost: gw\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off_at_the_timeout_while_calls_go_on() {
    let s = suite(edge()).await;
    let addr = s.addr;
    let slow: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || slow_header_client(addr)))
        .collect();
    // Meanwhile calls are answered as usual, on connections of their own.
    let client = reqwest::Client::new();
    let answered = Arc::new(AtomicUsize::new(0));
    for _ in 0..50 {
        let r = client
            .get(format!("http://{addr}/demo/v1/hello"))
            .bearer_auth(LIVE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        answered.fetch_add(1, Ordering::Relaxed);
    }
    for t in slow {
        let closed_after = t.join().unwrap().expect("the slow connection was closed");
        assert!(
            closed_after >= HEADER_TIMEOUT.mul_f32(0.9),
            "closed too early: {closed_after:?}"
        );
        assert!(
            closed_after < HEADER_TIMEOUT + Duration::from_secs(3),
            "not cut off near the header timeout: {closed_after:?}"
        );
    }
    assert_eq!(answered.load(Ordering::Relaxed), 50);
    // Each cut-off is counted just after the socket is shut: the clients may see it first.
    metric_reaches(&s, "peage_gateway_header_timeouts_total 20").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let s = suite(edge()).await;
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /demo/v1/hello HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        bearer(LIVE)
    );
    // A keep-alive connection making calls closer together than the idle timeout stays open.
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        conn.write_all(request.as_bytes()).unwrap();
        let n = conn.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        std::thread::sleep(IDLE_TIMEOUT / 2);
    }
    // Then left idle: closed, between the idle timeout and a little after.
    let idle = Instant::now();
    assert_eq!(conn.read(&mut buf).unwrap_or(0), 0, "closed by the gateway");
    let after = idle.elapsed() + IDLE_TIMEOUT / 2;
    assert!(after >= IDLE_TIMEOUT.mul_f32(0.9), "{after:?}");
    assert!(after < IDLE_TIMEOUT + Duration::from_secs(3), "{after:?}");
    // The close is counted just after the socket is shut: the client may see it first.
    metric_reaches(&s, "peage_gateway_idle_closed_total 1").await;
}

/// Waits up to a second for the gateway's metrics to show `line`, and fails if they do not.
async fn metric_reaches(s: &Suite, line: &str) {
    for _ in 0..100 {
        if s.gateway.render_metrics().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {line:?} in {}", s.gateway.render_metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_in_the_backlog() {
    let s = suite(EdgeLimits {
        max_connections: 2,
        ..edge()
    })
    .await;
    let request = format!(
        "GET /demo/v1/hello HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        bearer(LIVE)
    );
    let open = |addr| {
        let c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c
    };
    let mut held: Vec<_> = (0..2).map(|_| open(s.addr)).collect();
    let mut buf = vec![0u8; 4096];
    for c in &mut held {
        c.write_all(request.as_bytes()).unwrap();
        assert!(c.read(&mut buf).unwrap() > 0);
    }
    let mut third = open(s.addr);
    third.write_all(request.as_bytes()).unwrap();
    assert!(
        third.read(&mut buf).is_err(),
        "not served while two are open"
    );
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = third.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_without_credentials() {
    let s = suite(edge()).await;
    let (status, _, _) = raw(s.addr, &get("/healthz", ""));
    assert_eq!(status, 200);
    let (status, _, body) = raw(s.addr, &get("/readyz", ""));
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
    s.log.open.store(false, Ordering::Relaxed);
    let (status, _, body) = raw(s.addr, &get("/readyz", ""));
    assert_eq!(status, 503, "not ready while metering refuses calls");
    assert_eq!(body["checks"]["metering"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_works_until_its_overlap_ends() {
    let s = suite(edge()).await;
    assert_eq!(
        raw(s.addr, &get("/demo/v1/hello", &bearer(ROTATED_IN_OVERLAP))).0,
        200
    );
    let (status, _, body) = raw(s.addr, &get("/demo/v1/hello", &bearer(ROTATED_OUT)));
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("overlap window has ended"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_and_an_unknown_one_are_refused() {
    let s = suite(edge()).await;
    for (secret, why) in [
        (REVOKED, "revoked"),
        ("pk_live_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "unknown"),
    ] {
        let (status, _, body) = raw(s.addr, &get("/demo/v1/hello", &bearer(secret)));
        assert_eq!(status, 401);
        assert!(body["detail"].as_str().unwrap().contains(why), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_at_the_edge_and_real_calls_get_the_headers() {
    let s = suite(edge()).await;
    let origin = "https://app.partner.example";
    // Allowed: 204 from the gateway, no key asked for, nothing forwarded or metered.
    let (status, h, _) = raw(
        s.addr,
        &preflight(
            "/demo/v2/things",
            origin,
            "POST",
            "Authorization, Content-Type",
        ),
    );
    assert_eq!(status, 204, "{h:?}");
    assert_eq!(h["access-control-allow-origin"], origin);
    assert!(h["access-control-allow-methods"].contains("POST"));
    assert_eq!(
        h["access-control-allow-headers"],
        "Authorization, Content-Type"
    );
    assert_eq!(h["access-control-max-age"], "300");
    assert!(!h.contains_key("access-control-allow-credentials"));
    // A subdomain pattern.
    let (status, h, _) = raw(
        s.addr,
        &preflight(
            "/demo/v2/things",
            "https://a.apps.example",
            "GET",
            "authorization",
        ),
    );
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], "https://a.apps.example");
    // Refused, each with its reason, and no Access-Control-Allow-Origin for the browser.
    for (origin, method, headers, why) in [
        (
            "https://evil.example",
            "GET",
            "authorization",
            "origin https://evil.example may not call",
        ),
        (
            origin,
            "TRACE",
            "authorization",
            "method TRACE is not allowed",
        ),
        (
            origin,
            "GET",
            "authorization, x-secret",
            "request header x-secret is not allowed",
        ),
    ] {
        let (status, h, body) = raw(
            s.addr,
            &preflight("/demo/v2/things", origin, method, headers),
        );
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["type"], "https://peage.dev/problems/cors-refused");
        assert!(body["detail"].as_str().unwrap().contains(why), "{body}");
        assert!(!h.contains_key("access-control-allow-origin"));
    }
    // A version without a policy says so.
    let (status, _, body) = raw(
        s.addr,
        &preflight("/demo/v1/things", origin, "GET", "authorization"),
    );
    assert_eq!(status, 403);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("has no CORS policy"),
        "{body}"
    );
    assert!(
        s.upstream.seen.lock().unwrap().is_empty(),
        "no preflight forwarded"
    );

    // A real call from the origin: the upstream's answer carries the CORS headers; so does a
    // refusal (a browser script can read why it was refused).
    let with_origin = |o: &str| format!("Origin: {o}\r\n{}", bearer(LIVE));
    let (status, h, _) = raw(s.addr, &get("/demo/v2/things", &with_origin(origin)));
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], origin);
    assert_eq!(h["vary"], "Origin");
    assert!(h["access-control-expose-headers"].contains("peage-quota-near-limit"));
    let (status, h, _) = raw(
        s.addr,
        &get("/demo/v2/things", &format!("Origin: {origin}\r\n")),
    );
    assert_eq!(status, 401);
    assert_eq!(h["access-control-allow-origin"], origin);
    // Another origin's call is served (CORS binds browsers, not servers) without the headers.
    let (status, h, _) = raw(
        s.addr,
        &get("/demo/v2/things", &with_origin("https://evil.example")),
    );
    assert_eq!(status, 200);
    assert!(!h.contains_key("access-control-allow-origin"));
    // Only the two real calls were metered.
    let evs = events(&s).await;
    assert_eq!(evs.len(), 2, "{evs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_limits_let_calls_through_flagged_and_the_near_limit_call_is_told() {
    let s = suite(edge()).await;
    // A quota of 1 and 1 call a second, both in shadow mode: every call passes.
    for i in 0..4 {
        let (status, h, body) = raw(s.addr, &get(&format!("/demo/v1/s{i}"), &bearer(SHADOW)));
        assert_eq!(status, 200, "call {i}: {body}");
        assert!(
            !h.contains_key("peage-quota-exceeded"),
            "shadow flags stay out of answers"
        );
    }
    // A hard quota of 10, near at 0.8: the 8th call crosses it, and only that one says so.
    let mut told = vec![];
    for i in 1..=10 {
        let (status, h, _) = raw(s.addr, &get(&format!("/demo/v1/n{i}"), &bearer(NEAR)));
        assert_eq!(status, 200, "call {i}");
        if let Some(v) = h.get("peage-quota-near-limit") {
            told.push((i, v.clone()));
        }
    }
    assert_eq!(told, vec![(8, "calls".to_string())]);
    assert_eq!(raw(s.addr, &get("/demo/v1/n11", &bearer(NEAR))).0, 429);

    let evs = events(&s).await;
    let shadowed: Vec<&CallEvent> = evs.iter().filter(|e| e.partner_id == "prt_s").collect();
    assert_eq!(shadowed.len(), 4);
    let flagged = |attr: &str| {
        shadowed
            .iter()
            .filter(|e| e.attributes.contains_key(attr))
            .count()
    };
    // The first call is within both limits; the three after it are past the quota, and (sent
    // back to back) past 1 call a second.
    assert_eq!(flagged("quota_shadow_exceeded"), 3, "{shadowed:?}");
    assert!(flagged("rate_limit_shadow_exceeded") >= 2, "{shadowed:?}");
    assert!(shadowed
        .iter()
        .all(|e| e.status == 200 && !e.attributes.contains_key("refusal")));
    // The shadow quota of 1 was near from its first call, like any quota.
    assert_eq!(flagged("quota_near_limit"), 1);
    let near: Vec<&CallEvent> = evs
        .iter()
        .filter(|e| e.partner_id == "prt_n")
        .filter(|e| {
            e.attributes
                .get("quota_near_limit")
                .is_some_and(|m| m == "calls")
        })
        .collect();
    assert_eq!(near.len(), 1, "{near:?}");
    assert_eq!(near[0].operation, "GET /n8");
}

// ---- TLS termination ------------------------------------------------------------------------

/// A private CA, and leaf certificates for `localhost` it signs.
struct PrivateCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Péage test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        PrivateCa { issuer }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// A leaf for localhost: (certificate PEM, key PEM, certificate DER).
    fn leaf(&self) -> (String, String, Vec<u8>) {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the gateway trusting `roots`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
}

fn served_cert(s: &TlsStream) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn hello(i: usize) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("https://localhost/demo/v1/tls{i}"))
        .header("authorization", format!("Bearer {LIVE}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_a_certificate_swapped_without_dropping_connections() {
    let ca = PrivateCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = peage_gateway::tls::TlsFiles {
        cert: dir.path().join("gateway.crt"),
        key: dir.path().join("gateway.key"),
    };
    let (cert_a, key_a, der_a) = ca.leaf();
    std::fs::write(&files.cert, &cert_a).unwrap();
    std::fs::write(&files.key, &key_a).unwrap();
    let s = suite_with(edge(), Some(files.clone())).await;

    // HTTP/2 by ALPN, then HTTP/1.1 by ALPN: both served, upstreams told it was https.
    let h2_tls = tls_connect(s.addr, ca.roots(), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2_tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    assert_eq!(served_cert(&h2_tls), der_a);
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2_tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let h1_tls = tls_connect(s.addr, ca.roots(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        h1_tls.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
    let (mut h1, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(h1_tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(h2.send_request(hello(1)).await.unwrap().status(), 200);
    assert_eq!(h1.send_request(hello(2)).await.unwrap().status(), 200);
    let seen = s.upstream.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|r| r.headers["x-forwarded-proto"] == "https"),
        "{seen:?}"
    );

    // A client that does not trust the private CA is refused at the handshake; plain HTTP on
    // the TLS port gets nothing served.
    let stranger = PrivateCa::new();
    assert!(tls_connect(s.addr, stranger.roots(), &[b"http/1.1"])
        .await
        .is_err());
    let addr = s.addr;
    let (status, _, _) =
        tokio::task::spawn_blocking(move || raw(addr, &get("/demo/v1/plain", &bearer(LIVE))))
            .await
            .unwrap();
    assert_eq!(status, 0, "no HTTP answer on the TLS port");

    // A new certificate is written over the files (key first, as a careless deploy would):
    // new connections get it within seconds, without a restart.
    let (cert_b, key_b, der_b) = ca.leaf();
    std::fs::write(&files.key, &key_b).unwrap();
    std::fs::write(&files.cert, &cert_b).unwrap();
    let swapped = Instant::now();
    loop {
        let fresh = tls_connect(s.addr, ca.roots(), &[b"http/1.1"])
            .await
            .unwrap();
        if served_cert(&fresh) == der_b {
            break;
        }
        assert_eq!(served_cert(&fresh), der_a);
        assert!(
            swapped.elapsed() < Duration::from_secs(5),
            "the new certificate was not taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "new certificate served {:?} after the swap",
        swapped.elapsed()
    );
    // The connections opened before the swap were not dropped: they go on serving.
    for i in 3..6 {
        assert_eq!(h2.send_request(hello(i)).await.unwrap().status(), 200);
        assert_eq!(h1.send_request(hello(i + 10)).await.unwrap().status(), 200);
    }
    let metrics = s.gateway.render_metrics();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(value("peage_gateway_tls_reloads_total") >= 1);
    assert!(value("peage_gateway_tls_handshake_failures_total") >= 2);
    // Every call over TLS was metered once.
    let evs = events(&s).await;
    assert_eq!(
        evs.iter()
            .filter(|e| e.operation.starts_with("GET /tls"))
            .count(),
        8
    );
}
