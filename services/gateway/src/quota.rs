//! Quotas on the hot path without a network hop (PRODUCT.md §3, §6.9).
//!
//! For each quota'd meter of a partner (and env), the gateway holds a lease from billing: a
//! local balance it spends call by call. Before a call it takes the meter's estimate (1 for a
//! count, the operation's weight for `sum(units)`); after the response it settles the
//! difference with what the call really added (status filters, the upstream's `Peage-Units`).
//! When the balance runs low, a renewal goes out in the background; a call only waits for
//! billing when the balance is empty. Hard quotas answer 429 once billing grants nothing more;
//! soft quotas are always allowed, and flagged; quotas in shadow mode (hard or soft) are
//! always allowed and flagged apart, so a new limit can be watched before it is enforced.
//! The call that crosses a quota's near-limit fraction (by this gateway's count: the limit less
//! what billing has left to grant and what this gateway holds unspent) is flagged too.
//!
//! When billing cannot be reached, [`UnreachablePolicy`] decides for hard quotas (and for a
//! quota no lease has described yet): keep serving up to a bound per quota (taken out of the
//! next grant), or refuse with 503. A soft quota keeps serving whatever the policy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::pricing::QuotaKind;
use peage_core::quota::{Lease, LeaseRequest, QuotaDecision};
use peage_core::Env;
use rust_decimal::Decimal;

/// Why a lease could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// Billing did not answer, or failed: the unreachable policy applies.
    #[error("billing unreachable: {0}")]
    Unreachable(String),
    /// Billing answered that there is no such quota (catalogs out of step): not enforced.
    #[error("billing refused the lease request: {0}")]
    Refused(String),
}

/// Where leases come from: billing's `POST /v1/quota/leases`, over HTTP or in process.
#[async_trait]
pub trait QuotaAuthority: Send + Sync + 'static {
    async fn lease(&self, req: &LeaseRequest) -> Result<Lease, LeaseError>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnreachablePolicy {
    /// Keep serving while billing is away, up to `bound` units per quota beyond the last
    /// lease; the overdraft is taken out of the next grant.
    Serve { bound: Decimal },
    /// Refuse calls that need a lease while billing is away (503).
    Refuse,
}

#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// The smallest lease asked for; busier quotas ask for about 2 s of their recent rate.
    pub lease_size: Decimal,
    pub unreachable: UnreachablePolicy,
    /// How long a hard "blocked" answer is trusted before billing is asked again.
    pub blocked_recheck: Duration,
    /// How long a call waits for an empty balance to be renewed.
    pub lease_timeout: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            lease_size: Decimal::from(100),
            unreachable: UnreachablePolicy::Serve {
                bound: Decimal::from(1000),
            },
            blocked_recheck: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct QuotaStats {
    pub lease_requests: AtomicU64,
    pub lease_failures: AtomicU64,
    pub hard_blocked: AtomicU64,
    pub soft_exceeded: AtomicU64,
    /// Calls past a shadow quota: served, flagged, would have been refused or flagged.
    pub shadow_exceeded: AtomicU64,
    /// Calls that crossed a quota's near-limit fraction.
    pub near_limit: AtomicU64,
    /// Calls served on the unreachable policy's bound while billing was away.
    pub served_unreachable: AtomicU64,
    /// Calls refused because billing was away (policy `refuse`, or the bound spent).
    pub refused_unreachable: AtomicU64,
    /// 1 while the last lease request reached billing.
    pub billing_reachable: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryKey {
    partner_id: String,
    env: Env,
    meter: String,
}

#[derive(Debug)]
struct EntryState {
    kind: QuotaKind,
    shadow: bool,
    /// The near-limit fraction, and whether a call of this period crossed it here already.
    near_fraction: Decimal,
    /// `limit × near_fraction`, worked out when a lease sets the limit rather than per call.
    near_threshold: Decimal,
    near_signalled: bool,
    balance: Decimal,
    limit: Decimal,
    /// Billing's "remaining" after the last grant.
    remaining: Decimal,
    decision: QuotaDecision,
    period_start: Option<DateTime<Utc>>,
    resets_at: Option<DateTime<Utc>>,
    /// When billing last answered "nothing left".
    blocked_at: Option<Instant>,
    /// Served while billing was away; repaid from the next grant.
    overdraft: Decimal,
    /// Spent since the last lease, and when that lease came: the recent rate.
    spent: Decimal,
    leased_at: Instant,
    low_water: Decimal,
}

impl EntryState {
    /// A soft quota, or one in shadow mode: calls past it are served and flagged.
    fn never_refuses(&self) -> bool {
        self.kind == QuotaKind::Soft || self.shadow
    }

    /// The flags a call of this quota carries: past a soft or shadow quota, as its last answer
    /// said.
    fn flags(&self) -> Flags {
        Flags {
            soft: !self.shadow
                && self.kind == QuotaKind::Soft
                && self.decision == QuotaDecision::SoftExceeded,
            shadow: self.shadow && self.decision == QuotaDecision::ShadowExceeded,
            near: false,
        }
    }

    /// Whether taking `taken` just now carried this quota across its near-limit fraction, as
    /// far as this gateway can tell (once per period and gateway).
    fn crossed_near(&mut self, taken: Decimal) -> bool {
        if self.near_signalled || self.limit <= Decimal::ZERO || self.resets_at.is_none() {
            return false;
        }
        let threshold = self.near_threshold;
        let used = self.limit - self.remaining - self.balance.max(Decimal::ZERO);
        if used >= threshold && used - taken < threshold {
            self.near_signalled = true;
            return true;
        }
        false
    }
}

/// What a call is flagged with for one quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    soft: bool,
    shadow: bool,
    near: bool,
}

struct Entry {
    key: EntryKey,
    state: Mutex<EntryState>,
    /// One lease request in flight per quota.
    renewing: tokio::sync::Mutex<()>,
    renew_queued: AtomicBool,
}

/// What a refused call is answered with.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaRefusal {
    HardBlocked {
        meter: String,
        limit: Decimal,
        period_seconds: i64,
        resets_at: DateTime<Utc>,
    },
    Unavailable {
        meter: String,
    },
}

/// Amounts taken for one call, settled when the call ends.
pub struct Taken {
    taken: Vec<(Arc<Entry>, Decimal)>,
    /// Soft quotas passed (meter names), to flag the call.
    pub soft_exceeded: Vec<String>,
    /// Shadow quotas passed: the call would have been refused (or flagged) if enforced.
    pub shadow_exceeded: Vec<String>,
    /// Quotas this call carried across their near-limit fraction.
    pub near_limit: Vec<String>,
}

impl Taken {
    pub fn none() -> Taken {
        Taken {
            taken: vec![],
            soft_exceeded: vec![],
            shadow_exceeded: vec![],
            near_limit: vec![],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// Settles each quota with what the call really added: `actual(meter)`.
    pub fn settle(self, actual: impl Fn(&str) -> Decimal) {
        for (entry, estimate) in self.taken {
            let real = actual(&entry.key.meter);
            if real != estimate {
                if let Ok(mut s) = entry.state.lock() {
                    s.balance += estimate - real;
                    s.spent += real - estimate;
                }
            }
        }
    }
}

enum Try {
    Taken(Flags),
    Blocked(QuotaRefusal),
    NeedLease,
}

/// Quota entries by partner, then meter, then env: looked up by borrowed names, so a call
/// allocates nothing to find its entries.
type Entries = foldhash::HashMap<String, foldhash::HashMap<String, [Option<Arc<Entry>>; 2]>>;

pub struct Quotas {
    authority: Arc<dyn QuotaAuthority>,
    config: QuotaConfig,
    gateway_id: String,
    entries: std::sync::RwLock<Entries>,
    stats: Arc<QuotaStats>,
    /// Lease requests run here (the runtime that made `Quotas`), never on serving threads:
    /// billing's connections belong to it.
    background: tokio::runtime::Handle,
}

/// One serving thread's copy of the entries it has used.
#[derive(Default)]
pub(crate) struct LocalEntries(Mutex<Entries>);

fn env_slot(env: Env) -> usize {
    match env {
        Env::Live => 0,
        Env::Sandbox => 1,
    }
}

/// One quota'd meter a call is about to spend, with its estimate.
pub struct Demand<'a> {
    pub meter: &'a str,
    pub kind: QuotaKind,
    /// Shadow mode, as the catalog says until billing's first lease answers.
    pub shadow: bool,
    /// The quota's near-limit fraction.
    pub near_fraction: Decimal,
    pub estimate: Decimal,
}

impl Quotas {
    pub fn new(
        authority: Arc<dyn QuotaAuthority>,
        config: QuotaConfig,
        gateway_id: String,
    ) -> Arc<Quotas> {
        let stats = Arc::new(QuotaStats::default());
        stats.billing_reachable.store(1, Ordering::Relaxed);
        Arc::new(Quotas {
            authority,
            config,
            gateway_id,
            entries: Default::default(),
            stats,
            background: tokio::runtime::Handle::current(),
        })
    }

    /// False while billing is away and the policy refuses calls that need a lease.
    pub fn can_serve(&self) -> bool {
        self.stats.billing_reachable.load(Ordering::Relaxed) == 1
            || matches!(self.config.unreachable, UnreachablePolicy::Serve { .. })
    }

    pub fn stats(&self) -> Arc<QuotaStats> {
        Arc::clone(&self.stats)
    }

    fn entry(&self, partner_id: &str, env: Env, d: &Demand<'_>) -> Arc<Entry> {
        let meter = d.meter;
        let slot = env_slot(env);
        {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries
                .get(partner_id)
                .and_then(|m| m.get(meter))
                .and_then(|e| e[slot].as_ref())
            {
                return Arc::clone(e);
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let by_env = entries
            .entry(partner_id.to_string())
            .or_default()
            .entry(meter.to_string())
            .or_default();
        Arc::clone(by_env[slot].get_or_insert_with(|| {
            Arc::new(Entry {
                key: EntryKey {
                    partner_id: partner_id.to_string(),
                    env,
                    meter: meter.to_string(),
                },
                state: Mutex::new(EntryState {
                    kind: d.kind,
                    shadow: d.shadow,
                    near_fraction: d.near_fraction,
                    near_threshold: Decimal::ZERO,
                    near_signalled: false,
                    balance: Decimal::ZERO,
                    limit: Decimal::ZERO,
                    remaining: Decimal::ZERO,
                    decision: QuotaDecision::Allow,
                    period_start: None,
                    resets_at: None,
                    blocked_at: None,
                    overdraft: Decimal::ZERO,
                    spent: Decimal::ZERO,
                    leased_at: Instant::now(),
                    low_water: Decimal::ZERO,
                }),
                renewing: tokio::sync::Mutex::new(()),
                renew_queued: AtomicBool::new(false),
            })
        }))
    }

    /// [`Quotas::entry`], first in a serving thread's own copy of the entries it has used
    /// (entries live as long as the gateway, so a copy never goes stale).
    fn entry_in(
        &self,
        local: &LocalEntries,
        partner_id: &str,
        env: Env,
        d: &Demand<'_>,
    ) -> Arc<Entry> {
        let (slot, meter) = (env_slot(env), d.meter);
        let mut entries = local.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries
            .get(partner_id)
            .and_then(|m| m.get(meter))
            .and_then(|e| e[slot].as_ref())
        {
            return Arc::clone(e);
        }
        let entry = self.entry(partner_id, env, d);
        entries
            .entry(partner_id.to_string())
            .or_default()
            .entry(meter.to_string())
            .or_default()[slot] = Some(Arc::clone(&entry));
        entry
    }

    /// Takes every demand of a call, or refuses it (giving back what was already taken).
    pub async fn admit(
        self: &Arc<Self>,
        partner_id: &str,
        env: Env,
        demands: &[Demand<'_>],
    ) -> Result<Taken, QuotaRefusal> {
        self.admit_in(None, partner_id, env, demands).await
    }

    /// [`Quotas::admit`] from a serving thread, with its own copy of the entries.
    pub(crate) async fn admit_in(
        self: &Arc<Self>,
        local: Option<&LocalEntries>,
        partner_id: &str,
        env: Env,
        demands: &[Demand<'_>],
    ) -> Result<Taken, QuotaRefusal> {
        let mut taken = Taken::none();
        for d in demands {
            let entry = match local {
                Some(l) => self.entry_in(l, partner_id, env, d),
                None => self.entry(partner_id, env, d),
            };
            match self.take(&entry, d.estimate).await {
                Ok(flags) => {
                    for (on, counter, list) in [
                        (
                            flags.soft,
                            &self.stats.soft_exceeded,
                            &mut taken.soft_exceeded,
                        ),
                        (
                            flags.shadow,
                            &self.stats.shadow_exceeded,
                            &mut taken.shadow_exceeded,
                        ),
                        (flags.near, &self.stats.near_limit, &mut taken.near_limit),
                    ] {
                        if on {
                            counter.fetch_add(1, Ordering::Relaxed);
                            list.push(d.meter.to_string());
                        }
                    }
                    taken.taken.push((entry, d.estimate));
                }
                Err(refusal) => {
                    if matches!(refusal, QuotaRefusal::HardBlocked { .. }) {
                        self.stats.hard_blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    taken.settle(|_| Decimal::ZERO);
                    return Err(refusal);
                }
            }
        }
        Ok(taken)
    }

    /// Takes `estimate` from the entry's balance, renewing the lease first if it must.
    async fn take(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        estimate: Decimal,
    ) -> Result<Flags, QuotaRefusal> {
        match self.try_take(entry, estimate) {
            Try::Taken(flags) => Ok(flags),
            Try::Blocked(r) => Err(r),
            // Rare, and its future is large: kept off the call's own.
            Try::NeedLease => Box::pin(self.take_leased(entry, estimate)).await,
        }
    }

    /// The balance is empty: waits for a lease (one request per quota at a time), then takes.
    async fn take_leased(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        estimate: Decimal,
    ) -> Result<Flags, QuotaRefusal> {
        let guard = tokio::time::timeout(self.config.lease_timeout, entry.renewing.lock()).await;
        let Ok(_guard) = guard else {
            return self.unreachable(entry, estimate, "lease request still in flight");
        };
        for _ in 0..8 {
            match self.try_take(entry, estimate) {
                Try::Taken(flags) => return Ok(flags),
                Try::Blocked(r) => return Err(r),
                Try::NeedLease => {}
            }
            let want = {
                let s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
                self.want(&s).max(estimate - s.balance)
            };
            match self.request(entry, want).await {
                Ok(()) => {}
                Err(LeaseError::Refused(e)) => {
                    tracing::warn!(meter = %entry.key.meter, partner_id = %entry.key.partner_id, error = %e,
                        "gateway: billing has no such quota; the call is not limited by it");
                    return Ok(Flags::default());
                }
                Err(LeaseError::Unreachable(e)) => {
                    return self.unreachable(entry, estimate, &e);
                }
            }
        }
        // Granted slivers smaller than this call needs, eight times over: treat as blocked,
        // unless the quota is soft or in shadow mode (they never refuse).
        let s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.never_refuses() {
            return Ok(s.flags());
        }
        Err(blocked(&entry.key.meter, &s))
    }

    fn try_take(self: &Arc<Self>, entry: &Arc<Entry>, estimate: Decimal) -> Try {
        let mut s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        if s.resets_at.is_some_and(|r| now >= r) {
            // A new period: the old lease is void.
            s.balance = Decimal::ZERO;
            s.resets_at = None;
            s.blocked_at = None;
            return Try::NeedLease;
        }
        let enough = if estimate.is_zero() {
            s.balance > Decimal::ZERO || (s.never_refuses() && s.resets_at.is_some())
        } else {
            s.balance >= estimate
        };
        if enough {
            s.balance -= estimate;
            s.spent += estimate;
            let mut flags = s.flags();
            flags.near = s.crossed_near(estimate);
            if s.balance < s.low_water && !entry.renew_queued.swap(true, Ordering::AcqRel) {
                self.renew_in_background(Arc::clone(entry));
            }
            return Try::Taken(flags);
        }
        if s.kind == QuotaKind::Hard && s.decision == QuotaDecision::HardBlocked {
            if let Some(at) = s.blocked_at {
                if at.elapsed() < self.config.blocked_recheck {
                    return Try::Blocked(blocked(&entry.key.meter, &s));
                }
            }
        }
        Try::NeedLease
    }

    fn want(&self, s: &EntryState) -> Decimal {
        let elapsed = s.leased_at.elapsed().as_secs_f64().max(0.05);
        // About two seconds of the recent rate. The f64 only sizes a request; amounts granted
        // and spent stay exact.
        let rate = Decimal::try_from(2.0 / elapsed).unwrap_or(Decimal::ONE) * s.spent;
        rate.round()
            .max(self.config.lease_size)
            .min(Decimal::from(1_000_000))
    }

    fn renew_in_background(self: &Arc<Self>, entry: Arc<Entry>) {
        let quotas = Arc::clone(self);
        self.background.spawn(async move {
            let _g = entry.renewing.lock().await;
            let want = {
                let s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
                (s.balance < s.low_water).then(|| quotas.want(&s))
            };
            if let Some(want) = want {
                if let Err(e) = quotas.request(&entry, want).await {
                    tracing::warn!(meter = %entry.key.meter, partner_id = %entry.key.partner_id,
                        error = %e, "gateway: quota lease renewal failed");
                }
            }
            entry.renew_queued.store(false, Ordering::Release);
        });
    }

    async fn request(&self, entry: &Entry, want: Decimal) -> Result<(), LeaseError> {
        let req = LeaseRequest {
            partner_id: entry.key.partner_id.clone(),
            meter: entry.key.meter.clone(),
            env: entry.key.env,
            gateway_id: self.gateway_id.clone(),
            want,
        };
        self.stats.lease_requests.fetch_add(1, Ordering::Relaxed);
        let authority = Arc::clone(&self.authority);
        let asked = self
            .background
            .spawn(async move { authority.lease(&req).await })
            .await
            .unwrap_or_else(|e| Err(LeaseError::Unreachable(format!("lease task failed: {e}"))));
        let lease = match asked {
            Ok(l) => {
                self.stats.billing_reachable.store(1, Ordering::Relaxed);
                l
            }
            Err(e) => {
                self.stats.lease_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(e, LeaseError::Unreachable(_)) {
                    self.stats.billing_reachable.store(0, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        let mut s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.period_start != Some(lease.period_start) {
            s.balance = Decimal::ZERO;
            s.period_start = Some(lease.period_start);
            s.near_signalled = false;
        }
        s.kind = lease.kind;
        s.shadow = lease.shadow;
        s.near_threshold = lease
            .limit
            .checked_mul(s.near_fraction)
            .unwrap_or(lease.limit);
        s.limit = lease.limit;
        s.remaining = lease.remaining;
        s.decision = lease.decision;
        s.resets_at = Some(lease.resets_at);
        s.blocked_at = (lease.decision == QuotaDecision::HardBlocked).then(Instant::now);
        // What was served while billing was away comes out of this grant first.
        let repaid = s.overdraft.min(lease.granted);
        s.overdraft -= repaid;
        s.balance += lease.granted - repaid;
        s.spent = Decimal::ZERO;
        s.leased_at = Instant::now();
        // Renew when a quarter of a grant is left, so calls rarely wait.
        s.low_water = (lease.granted / Decimal::from(4)).min(s.remaining);
        Ok(())
    }

    fn unreachable(
        &self,
        entry: &Entry,
        estimate: Decimal,
        error: &str,
    ) -> Result<Flags, QuotaRefusal> {
        let mut s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
        // A soft (or shadow) quota never refuses a call, so billing being away changes nothing for it
        // (once a lease said it is soft): served, flagged as its last answer said, metered.
        // A local allowance of one lease keeps the next calls from each waiting on billing;
        // renewals go on in the background as the allowance is spent.
        if s.never_refuses() && s.resets_at.is_some() {
            self.stats
                .served_unreachable
                .fetch_add(1, Ordering::Relaxed);
            s.balance += self.config.lease_size;
            return Ok(s.flags());
        }
        if let UnreachablePolicy::Serve { bound } = self.config.unreachable {
            if s.overdraft + estimate <= bound {
                s.overdraft += estimate;
                self.stats
                    .served_unreachable
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(Flags::default());
            }
        }
        tracing::warn!(meter = %entry.key.meter, partner_id = %entry.key.partner_id, error,
            "gateway: refusing a call, billing cannot be reached for a quota lease");
        self.stats
            .refused_unreachable
            .fetch_add(1, Ordering::Relaxed);
        Err(QuotaRefusal::Unavailable {
            meter: entry.key.meter.clone(),
        })
    }
}

/// Billing's `POST /v1/quota/leases` over HTTP (distributed mode), with the control API's
/// bearer token.
pub struct HttpQuotaAuthority {
    client: crate::clients::HttpClient<http_body_util::Full<bytes::Bytes>>,
    url: http::Uri,
    authorization: http::HeaderValue,
    timeout: Duration,
}

impl HttpQuotaAuthority {
    /// `billing_url` is the control API's base (`http://billing:8090`); connections are made
    /// as the gateway's `clients` make them (connect timeout, trusted CAs).
    pub fn new(
        billing_url: &str,
        token: &str,
        timeout: Duration,
        clients: &crate::Clients,
    ) -> Result<Self, crate::billing::BillingClientError> {
        let url = format!("{}/v1/quota/leases", billing_url.trim_end_matches('/'))
            .parse()
            .map_err(
                |e: http::uri::InvalidUri| crate::billing::BillingClientError::Url {
                    url: billing_url.to_string(),
                    why: e.to_string(),
                },
            )?;
        let authorization = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| crate::billing::BillingClientError::Token)?;
        Ok(HttpQuotaAuthority {
            client: clients.http(),
            url,
            authorization,
            timeout,
        })
    }
}

#[async_trait]
impl QuotaAuthority for HttpQuotaAuthority {
    async fn lease(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        use http_body_util::BodyExt;
        let body = serde_json::to_vec(req).map_err(|e| LeaseError::Refused(e.to_string()))?;
        let request = http::Request::post(self.url.clone())
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| LeaseError::Refused(e.to_string()))?;
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| LeaseError::Unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| LeaseError::Unreachable(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                serde_json::from_slice(&bytes)
                    .map_err(|e| LeaseError::Unreachable(format!("unreadable lease: {e}")))
            } else {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                // 404/409: billing has no such quota (catalogs out of step). Anything else,
                // a bad token included, is billing not doing its job: the policy applies.
                if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::CONFLICT {
                    Err(LeaseError::Refused(format!("{status}: {text}")))
                } else {
                    Err(LeaseError::Unreachable(format!("{status}: {text}")))
                }
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(LeaseError::Unreachable("timed out".into())))
    }
}

fn blocked(meter: &str, s: &EntryState) -> QuotaRefusal {
    let resets_at = s.resets_at.unwrap_or_else(Utc::now);
    QuotaRefusal::HardBlocked {
        meter: meter.to_string(),
        limit: s.limit,
        period_seconds: s.period_start.map_or(0, |p| (resets_at - p).num_seconds()),
        resets_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A billing with one quota (hard unless `soft`), deciding with the real `decide`,
    /// unreachable on demand.
    struct FakeBilling {
        limit: Decimal,
        granted: Mutex<Decimal>,
        down: AtomicBool,
        soft: bool,
        asked: AtomicU64,
    }

    impl FakeBilling {
        fn kind(&self) -> QuotaKind {
            if self.soft {
                QuotaKind::Soft
            } else {
                QuotaKind::Hard
            }
        }
    }

    #[async_trait]
    impl QuotaAuthority for FakeBilling {
        async fn lease(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(LeaseError::Unreachable("connection refused".into()));
            }
            let quota = peage_core::pricing::Quota {
                meter: req.meter.clone(),
                limit: self.limit,
                kind: self.kind(),
                shadow: false,
                near_limit: None,
            };
            let mut granted = self.granted.lock().unwrap();
            let ledger = peage_core::quota::QuotaLedger {
                used: Decimal::ZERO,
                granted: *granted,
                gateways: 1,
            };
            let g = peage_core::quota::decide(&quota, &ledger, req.want);
            *granted += g.granted;
            let start = Utc::now() - chrono::Duration::days(1);
            Ok(Lease {
                partner_id: req.partner_id.clone(),
                meter: req.meter.clone(),
                env: req.env,
                kind: self.kind(),
                shadow: false,
                granted: g.granted,
                remaining: g.remaining,
                limit: self.limit,
                period_start: start,
                resets_at: start + chrono::Duration::days(30),
                decision: g.decision,
            })
        }
    }

    fn demand(estimate: i64) -> Demand<'static> {
        Demand {
            meter: "calls",
            kind: QuotaKind::Hard,
            shadow: false,
            near_fraction: peage_core::pricing::DEFAULT_NEAR_LIMIT,
            estimate: Decimal::from(estimate),
        }
    }

    fn setup(limit: i64, policy: UnreachablePolicy) -> (Arc<FakeBilling>, Arc<Quotas>) {
        let billing = Arc::new(FakeBilling {
            limit: Decimal::from(limit),
            granted: Mutex::new(Decimal::ZERO),
            down: AtomicBool::new(false),
            soft: false,
            asked: AtomicU64::new(0),
        });
        let config = QuotaConfig {
            lease_size: Decimal::from(10),
            unreachable: policy,
            ..QuotaConfig::default()
        };
        let quotas = Quotas::new(billing.clone(), config, "gw-test".into());
        (billing, quotas)
    }

    #[tokio::test]
    async fn a_hard_quota_allows_exactly_its_limit_then_429() {
        let (_, quotas) = setup(57, UnreachablePolicy::Refuse);
        let mut allowed = 0;
        for _ in 0..100 {
            if let Ok(t) = quotas.admit("prt_a", Env::Live, &[demand(1)]).await {
                t.settle(|_| Decimal::ONE);
                allowed += 1;
            }
        }
        assert_eq!(allowed, 57);
        let refusal = quotas
            .admit("prt_a", Env::Live, &[demand(1)])
            .await
            .err()
            .unwrap();
        assert!(
            matches!(refusal, QuotaRefusal::HardBlocked { limit, .. } if limit == Decimal::from(57))
        );
    }

    #[tokio::test]
    async fn a_call_that_did_not_count_gives_its_unit_back() {
        let (_, quotas) = setup(5, UnreachablePolicy::Refuse);
        for _ in 0..20 {
            // A status the meter's filter excludes: it settles at zero.
            let t = quotas
                .admit("prt_a", Env::Live, &[demand(1)])
                .await
                .unwrap();
            t.settle(|_| Decimal::ZERO);
        }
    }

    #[tokio::test]
    async fn unreachable_billing_follows_the_policy() {
        let (billing, quotas) = setup(1000, UnreachablePolicy::Refuse);
        billing.down.store(true, Ordering::Relaxed);
        let r = quotas.admit("prt_a", Env::Live, &[demand(1)]).await;
        assert!(matches!(r, Err(QuotaRefusal::Unavailable { .. })));
        assert_eq!(quotas.stats().billing_reachable.load(Ordering::Relaxed), 0);

        let (billing, quotas) = setup(
            1000,
            UnreachablePolicy::Serve {
                bound: Decimal::from(3),
            },
        );
        billing.down.store(true, Ordering::Relaxed);
        let mut served = 0;
        for _ in 0..5 {
            if quotas.admit("prt_a", Env::Live, &[demand(1)]).await.is_ok() {
                served += 1;
            }
        }
        assert_eq!(served, 3, "served up to the bound, then refused");
        assert_eq!(quotas.stats().served_unreachable.load(Ordering::Relaxed), 3);
        assert_eq!(
            quotas.stats().refused_unreachable.load(Ordering::Relaxed),
            2
        );
        // Back: the overdraft is repaid from the first grant.
        billing.down.store(false, Ordering::Relaxed);
        quotas
            .admit("prt_a", Env::Live, &[demand(1)])
            .await
            .unwrap();
        let e = quotas.entry("prt_a", Env::Live, &demand(1));
        let s = e.state.lock().unwrap();
        assert_eq!(s.overdraft, Decimal::ZERO);
        assert_eq!(s.balance, Decimal::from(10 - 3 - 1));
    }

    #[tokio::test]
    async fn a_soft_quota_keeps_serving_while_billing_is_away_whatever_the_policy() {
        let billing = Arc::new(FakeBilling {
            limit: Decimal::from(1000),
            granted: Mutex::new(Decimal::ZERO),
            down: AtomicBool::new(false),
            soft: true,
            asked: AtomicU64::new(0),
        });
        let config = QuotaConfig {
            lease_size: Decimal::from(10),
            unreachable: UnreachablePolicy::Refuse,
            ..QuotaConfig::default()
        };
        let quotas = Quotas::new(billing.clone(), config, "gw-test".into());
        let soft = Demand {
            meter: "calls",
            kind: QuotaKind::Soft,
            shadow: false,
            near_fraction: peage_core::pricing::DEFAULT_NEAR_LIMIT,
            estimate: Decimal::ONE,
        };
        quotas
            .admit("prt_a", Env::Live, std::slice::from_ref(&soft))
            .await
            .unwrap()
            .settle(|_| Decimal::ONE);
        billing.down.store(true, Ordering::Relaxed);
        let asked = billing.asked.load(Ordering::Relaxed);
        for _ in 0..100 {
            quotas
                .admit("prt_a", Env::Live, std::slice::from_ref(&soft))
                .await
                .expect("a soft quota never refuses")
                .settle(|_| Decimal::ONE);
        }
        tokio::task::yield_now().await;
        let asked = billing.asked.load(Ordering::Relaxed) - asked;
        assert!(
            asked <= 25,
            "calls do not each wait on billing while it is away: {asked} lease requests"
        );
        assert_eq!(
            quotas.stats().refused_unreachable.load(Ordering::Relaxed),
            0
        );
        assert!(quotas.stats().served_unreachable.load(Ordering::Relaxed) > 0);
    }
}
