//! The usage store: where the aggregator writes call events and where billing, quotas and
//! dashboards read usage from. `UsageStore` is the seam; [`embedded::SqliteUsageStore`] runs
//! in `peage up`, a ClickHouse implementation plugs in behind the same trait.
//!
//! Both keep the same dedup rule: an event is identified by `(partner_id, id)`, and inserting it
//! again changes nothing, so replaying the log after a crash never counts a call twice.

pub mod clickhouse;
pub mod embedded;
mod key_filter;
pub use key_filter::{KeySet, KeysOut};

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::{CallEvent, Env, Meter, MeterUsage, UsageEvent};
use rust_decimal::Decimal;

pub use self::clickhouse::{ClickHouseConfig, ClickHouseUsageStore};
pub use embedded::SqliteUsageStore;

#[derive(Debug, thiserror::Error)]
pub enum UsageStoreError {
    #[error("usage store database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("usage store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    /// The server did not answer (refused, reset, timed out): worth retrying shortly.
    #[error("clickhouse unavailable: {0}")]
    Unavailable(String),
    #[error("usage store configuration: {0}")]
    Config(String),
    #[error("event {id} cannot be stored: {reason}")]
    Corrupt { id: String, reason: String },
    /// The error of a look-up made for several requests at once, as each of them reports it.
    #[error("{0}")]
    Shared(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    pub inserted: u64,
    /// Events already stored (same partner and id): ignored, never counted twice.
    pub duplicates: u64,
}

/// Which events a usage query covers: one partner, one environment, `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub partner_id: String,
    pub env: Env,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Calls the gateway refused over a range, by refusal (docs/gateway.md, "Refusals") and
/// status: what a partner's usage page shows beside what it was billed for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RefusedCalls {
    /// The refusal's problem type slug: `rate-limited`, `quota-exceeded`, `not-entitled`…
    pub refusal: String,
    pub status: u16,
    pub calls: u64,
}

/// One type of usage event a partner sent over a range: how many, and the latest one's time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct EventTypeSeen {
    #[serde(rename = "type")]
    pub event_type: String,
    pub events: u64,
    pub last_time: DateTime<Utc>,
}

impl EventTypeSeen {
    /// From a store's row: the type, its count, and the latest time in microseconds.
    pub(crate) fn from_row(
        event_type: String,
        events: u64,
        last_us: i64,
    ) -> Result<EventTypeSeen, UsageStoreError> {
        let last_time =
            DateTime::from_timestamp_micros(last_us).ok_or_else(|| UsageStoreError::Corrupt {
                id: event_type.clone(),
                reason: format!("time_us {last_us}"),
            })?;
        Ok(EventTypeSeen {
            event_type,
            events,
            last_time,
        })
    }
}

/// A meter of usage events per time bucket, and over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSeries {
    /// One quantity per bucket, each evaluated on its own.
    pub values: Vec<Decimal>,
    /// The meter over the whole range (a maximum or a unique count is not the sum of its
    /// buckets).
    pub total: Decimal,
}

/// The live range `edges` span (the buckets' starts, then the last one's end) for
/// [`UsageStore::event_meter_series`]; none without two edges.
pub(crate) fn series_range(partner_id: &str, edges: &[DateTime<Utc>]) -> Option<UsageQuery> {
    match (edges.first(), edges.last()) {
        (Some(from), Some(to)) if edges.len() >= 2 => Some(UsageQuery {
            partner_id: partner_id.to_string(),
            env: Env::Live,
            from: *from,
            to: *to,
        }),
        _ => None,
    }
}

/// An event with the position it was read from in the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged<E> {
    pub partition: u32,
    pub offset: u64,
    pub event: E,
}

/// A call event with its log position.
pub type LoggedEvent = Logged<CallEvent>;

/// A usage event (`POST /v1/events`) with its log position.
pub type LoggedUsageEvent = Logged<UsageEvent>;

/// The identity of a stored usage event: partner id and key ([`UsageEvent::key`]).
pub type UsageKey = (String, uuid::Uuid);

/// `keys` grouped by partner (a request's or a batch's keys are mostly one partner's), for
/// look-ups that name the partner once.
pub(crate) fn keys_by_partner(keys: &[UsageKey]) -> HashMap<&str, Vec<uuid::Uuid>> {
    let mut by_partner: HashMap<&str, Vec<uuid::Uuid>> = HashMap::new();
    for (partner, key) in keys {
        by_partner.entry(partner).or_default().push(*key);
    }
    by_partner
}

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Stores events, ignoring ones already stored. Durable when it returns.
    async fn insert(&self, events: &[CallEvent]) -> Result<InsertOutcome, UsageStoreError>;

    /// Stores events read from the log `topic` together with their positions, which
    /// [`UsageStore::stored_positions`] reports back. The caller has already left out what the
    /// store holds. Stores that deduplicate by id on insert need no positions (the default).
    async fn insert_logged(
        &self,
        topic: &str,
        events: &[LoggedEvent],
    ) -> Result<InsertOutcome, UsageStoreError> {
        let _ = topic;
        let plain: Vec<CallEvent> = events.iter().map(|l| l.event.clone()).collect();
        self.insert(&plain).await
    }

    /// The highest log offset stored per partition of `topic` (partitions with nothing stored
    /// are absent). Empty for stores that deduplicate by id on insert.
    async fn stored_positions(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<HashMap<u32, u64>, UsageStoreError> {
        let _ = (topic, partitions);
        Ok(HashMap::new())
    }

    /// Which of these events (partner id, event id) are already stored. Empty for stores that
    /// deduplicate by id on insert.
    async fn stored_ids(
        &self,
        events: &[CallEvent],
    ) -> Result<HashSet<(String, uuid::Uuid)>, UsageStoreError> {
        let _ = events;
        Ok(HashSet::new())
    }

    /// Stores usage events read from the log `topic` with their positions (reported by
    /// [`UsageStore::stored_positions`] as call events' are), ignoring keys already stored.
    /// Durable when it returns.
    async fn insert_usage_events(
        &self,
        topic: &str,
        events: &[LoggedUsageEvent],
    ) -> Result<InsertOutcome, UsageStoreError>;

    /// The digests of the stored usage events with these keys (absent: not stored). The
    /// aggregator drops re-sent events and reports an id re-used with other content from it;
    /// `POST /v1/events` answers duplicates and refuses such re-uses from it.
    async fn stored_usage_digests(
        &self,
        keys: &[UsageKey],
    ) -> Result<HashMap<UsageKey, String>, UsageStoreError>;

    /// The stored usage event of `partner_id` with `key`, if any (what a cancellation names).
    async fn stored_usage_event(
        &self,
        partner_id: &str,
        key: uuid::Uuid,
    ) -> Result<Option<UsageEvent>, UsageStoreError>;

    /// Evaluates `meters` over the query's events; one result per meter, in order. Meters
    /// of usage events read the partner's usage events (live only: usage events have no
    /// sandbox) but those a cancellation record names, the others its call events.
    async fn meter_usage(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<MeterUsage>, UsageStoreError>;

    /// The amounts of a `sum` meter of usage events, one per event of the query's range that
    /// has the value, in time order (ties by key text), scaled as the meter is; cancelled
    /// events left out; live only ([`peage_core::meter::event_amounts`]). What a charge that
    /// prices each event reads.
    async fn event_amounts(
        &self,
        query: &UsageQuery,
        meter: &Meter,
    ) -> Result<Vec<Decimal>, UsageStoreError>;

    /// A meter of usage events per time bucket, live only: `edges` are the buckets' starts
    /// then the last one's end (one more than the buckets, in order); one quantity per bucket,
    /// each evaluated on its own (maxima, unique counts and latest values included), and the
    /// total over the range. What dashboards chart for meters of usage events, which have no
    /// rollups.
    async fn event_meter_series(
        &self,
        partner_id: &str,
        meter: &Meter,
        edges: &[DateTime<Utc>],
    ) -> Result<MeterSeries, UsageStoreError>;

    /// The types of usage events the query's partner sent in its range (live only), by type:
    /// every event received, cancelled ones included, cancellation records not.
    async fn usage_event_types(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<EventTypeSeen>, UsageStoreError>;

    /// When each of the partner's keys last made a call (served or refused), since `since`,
    /// live and sandbox alike.
    async fn keys_last_used(
        &self,
        partner_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, UsageStoreError>;

    /// The calls the gateway refused to the query's partner and env in its range, by refusal
    /// and status, the most first (refusals are kept raw, never in rollups).
    async fn refused_calls(&self, query: &UsageQuery)
        -> Result<Vec<RefusedCalls>, UsageStoreError>;

    /// The hourly rollup rows of the query's partner and env for every hour that overlaps
    /// `[from, to)` (whole hours: the first and last may hold calls outside the range), each
    /// with the start of its hour. What dashboards chart: a month costs hours, not calls.
    async fn hourly_rollups(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<(DateTime<Utc>, peage_core::meter::RollupRow)>, UsageStoreError>;

    /// Retention: drops the raw call events of every calendar month (UTC) before `before`,
    /// which must be the first instant of a month, whole months only (a ClickHouse partition
    /// each); the rollups stay, and usage events are never dropped (recurring meters carry
    /// their readings in from before any period). Answers the months dropped, `YYYYMM`, oldest
    /// first.
    async fn drop_raw_call_months(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<u32>, UsageStoreError>;

    /// Erasure: deletes the partner's raw call and usage events (their attributes and data may
    /// hold personal data); the rollups, which hold counts and sums only, stay. ClickHouse
    /// applies it as a mutation, in the background.
    async fn erase_partner_events(&self, partner_id: &str) -> Result<(), UsageStoreError>;

    /// [`UsageStore::meter_usage`] for many partners over one range (an invoice run): one entry
    /// per partner asked for, zero usage included. Stores answer it with one query when they
    /// can; this default asks partner by partner.
    async fn meter_usage_many(
        &self,
        partners: &[String],
        env: Env,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        meters: &[Meter],
    ) -> Result<HashMap<String, Vec<MeterUsage>>, UsageStoreError> {
        meter_usage_each(self, partners, env, from, to, meters).await
    }
}

/// `before` as `YYYYMM`, or an error unless it is the first instant of a month (UTC).
pub fn month_start(before: DateTime<Utc>) -> Result<u32, UsageStoreError> {
    use chrono::{Datelike, Timelike};
    if before.day() != 1
        || before.num_seconds_from_midnight() != 0
        || before.timestamp_subsec_nanos() != 0
    {
        return Err(UsageStoreError::Config(format!(
            "retention drops whole months: {before} is not the first instant of a month (UTC)"
        )));
    }
    Ok(before.year() as u32 * 100 + before.month())
}

/// The whole hours that overlap `[from, to)`, as `[first, end)` hour starts.
pub(crate) fn overlapping_hours(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    use crate::clickhouse::{ceil_to, floor_to};
    let hour = chrono::TimeDelta::hours(1);
    (floor_to(from, hour), ceil_to(to, hour))
}

/// Partner by partner: the fallback of [`UsageStore::meter_usage_many`].
pub async fn meter_usage_each<S: UsageStore + ?Sized>(
    store: &S,
    partners: &[String],
    env: Env,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    meters: &[Meter],
) -> Result<HashMap<String, Vec<MeterUsage>>, UsageStoreError> {
    let mut out = HashMap::with_capacity(partners.len());
    for p in partners {
        let q = UsageQuery {
            partner_id: p.clone(),
            env,
            from,
            to,
        };
        out.insert(p.clone(), store.meter_usage(&q, meters).await?);
    }
    Ok(out)
}

/// Groups rollup rows read for many partners into one usage per partner asked for.
pub(crate) fn usage_per_partner(
    partners: &[String],
    rows: Vec<(String, peage_core::meter::RollupRow)>,
    meters: &[Meter],
) -> HashMap<String, Vec<MeterUsage>> {
    let wanted: HashSet<&str> = partners.iter().map(String::as_str).collect();
    let mut by_partner: HashMap<String, Vec<peage_core::meter::RollupRow>> = HashMap::new();
    for (p, row) in rows {
        if wanted.contains(p.as_str()) {
            by_partner.entry(p).or_default().push(row);
        }
    }
    partners
        .iter()
        .map(|p| {
            let rows = by_partner.get(p).map(Vec::as_slice).unwrap_or(&[]);
            (
                p.clone(),
                peage_core::meter::combine(meters, rows, Vec::new()),
            )
        })
        .collect()
}
