//! The usage store on ClickHouse: raw `call_events` plus per-minute and per-hour rollups filled
//! by materialized views in the same INSERT.
//!
//! Exactly once without Kafka transactions or insert-deduplication tokens (neither exists on
//! every server we support): every row records the log partition and offset it came from, the
//! aggregator asks [`UsageStore::stored_positions`] where each partition stands before it
//! inserts, and skips what is already stored. See `docs/exactly-once.md`.
//!
//! Works on ClickHouse 18.16 (what Debian ships, used in CI) and current releases; the schema
//! under `schemas/clickhouse/` keeps to what both accept.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clickhouse::{Client, Row};
use peage_core::event::{UnitsError, UNITS_SCALE};
use peage_core::meter::{combine, RollupRow};
use peage_core::meter::{evaluate_usage_events, merge_event_meters, Aggregation, MeterGroup, Span};
use peage_core::{CallEvent, Env, Meter, MeterUsage, UsageEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    series_range, EventTypeSeen, InsertOutcome, LoggedEvent, LoggedUsageEvent, MeterSeries,
    UsageKey, UsageQuery, UsageStore, UsageStoreError,
};

/// The migrations under `schemas/clickhouse/`, in order. A test checks that this list and the
/// directory agree.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_call_events",
        include_str!("../../../schemas/clickhouse/0001_call_events.sql"),
    ),
    (
        "0002_usage_rollups",
        include_str!("../../../schemas/clickhouse/0002_usage_rollups.sql"),
    ),
    (
        "0003_rollups_of_served_calls",
        include_str!("../../../schemas/clickhouse/0003_rollups_of_served_calls.sql"),
    ),
    (
        "0004_usage_events",
        include_str!("../../../schemas/clickhouse/0004_usage_events.sql"),
    ),
];

/// The condition of a raw row the rollups hold: a served call, not a refusal
/// (`RollupRow::holds`).
/// Keys one lookup of stored usage events names at most: 2,000 keys are about 80 KB of SQL.
const KEY_LOOKUP_CHUNK: usize = 2_000;

const SERVED: &str = "visitParamExtractString(attributes, 'refusal') = ''";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The client's row-type checks against the server schema (needs ClickHouse ≥ 24.x; turn
    /// off for older servers such as Debian's 18.16).
    pub validation: bool,
    /// Compress inserts and results with lz4 (the client's default). Made no measurable
    /// difference to ingest on loopback (load-tests/RESULTS.md); off saves a little CPU when
    /// ClickHouse is on the same machine.
    pub compression: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "peage".into(),
            user: None,
            password: None,
            validation: true,
            compression: true,
        }
    }
}

#[derive(Clone)]
pub struct ClickHouseUsageStore {
    client: Client,
    database: String,
    /// Every usage query sent, as ClickHouse received it, when recording is on (tests replay
    /// them on a current ClickHouse through chDB).
    recorder: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

#[derive(Row, Serialize)]
struct RawRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    time: u32,
    time_us: i64,
    partner_id: &'a str,
    key_id: &'a str,
    env: i8,
    api: &'a str,
    version: &'a str,
    operation: &'a str,
    method: &'a str,
    status: u16,
    latency_us: u64,
    request_bytes: u64,
    response_bytes: u64,
    units: i128,
    gateway_id: &'a str,
    attributes: String,
    log_topic: &'a str,
    log_partition: u32,
    log_offset: u64,
}

#[derive(Row, Serialize)]
struct UsageRow<'a> {
    partner_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: u32,
    time_us: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    key: Uuid,
    id: &'a str,
    source: &'a str,
    subject: &'a str,
    digest: &'a str,
    number_keys: Vec<String>,
    number_values: Vec<i128>,
    text_keys: Vec<String>,
    text_values: Vec<String>,
    cloudevent: &'a str,
    log_topic: &'a str,
    log_partition: u32,
    log_offset: u64,
}

/// One value of a meter of usage events, for one group (or the total: no group values).
/// Rows of `[from, to)` in a table partitioned by `time` (seconds, to prune) and exact in
/// `time_us`; bound by [`bind_range`].
const IN_RANGE: &str =
    "time >= toDateTime(?) AND time <= toDateTime(?) AND time_us >= ? AND time_us < ?";

/// Binds [`IN_RANGE`]'s placeholders for the query's range.
fn bind_range(q: clickhouse::query::Query, query: &UsageQuery) -> clickhouse::query::Query {
    q.bind(query.from.timestamp())
        .bind(query.to.timestamp())
        .bind(query.from.timestamp_micros())
        .bind(query.to.timestamp_micros())
}

/// How [`ClickHouseUsageStore::event_meter_rows`] splits an event meter.
#[derive(Clone, Copy)]
enum EventSplit<'a> {
    Total,
    Groups,
    /// By time: the end of each bucket in microseconds, in order.
    Buckets(&'a [i64]),
}

/// The event selector of a meter of usage events.
fn event_selector(meter: &Meter) -> Result<&peage_core::meter::EventSelector, UsageStoreError> {
    meter.events.as_ref().ok_or_else(|| {
        UsageStoreError::Config(format!("meter {} does not read usage events", meter.name))
    })
}

#[derive(Row, Deserialize)]
struct EventMeterRow {
    groups: Vec<String>,
    value: i128,
}

/// A stored usage event as read back ([`STORED_USAGE_COLUMNS`]).
#[derive(Row, Deserialize)]
struct StoredUsageRow {
    /// Named apart from `key`: an alias would stand for the UUID column in the WHERE clause.
    #[serde(rename = "key_text")]
    key: String,
    #[serde(rename = "type")]
    event_type: String,
    time_us: i64,
    id: String,
    source: String,
    subject: String,
    digest: String,
    cloudevent: String,
}

/// The columns [`StoredUsageRow`] reads.
const STORED_USAGE_COLUMNS: &str =
    "toString(key) AS key_text, type, time_us, id, source, subject, digest, cloudevent";

impl StoredUsageRow {
    fn into_event(self, partner_id: &str) -> Result<UsageEvent, UsageStoreError> {
        let corrupt = |reason: String| UsageStoreError::Corrupt {
            id: self.key.clone(),
            reason,
        };
        Ok(UsageEvent {
            key: Uuid::parse_str(&self.key).map_err(|e| corrupt(e.to_string()))?,
            partner_id: partner_id.to_string(),
            time: DateTime::from_timestamp_micros(self.time_us)
                .ok_or_else(|| corrupt(format!("time_us {}", self.time_us)))?,
            cloudevent: serde_json::value::RawValue::from_string(self.cloudevent.clone())
                .map_err(|e| corrupt(format!("cloudevent: {e}")))?,
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            subject: self.subject,
            digest: self.digest,
        })
    }
}

#[derive(Row, Deserialize)]
struct StoredRow {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    time_us: i64,
    partner_id: String,
    key_id: String,
    env: i8,
    api: String,
    version: String,
    operation: String,
    method: String,
    status: u16,
    latency_us: u64,
    request_bytes: u64,
    response_bytes: u64,
    units: i128,
    gateway_id: String,
    attributes: String,
}

/// A [`SumRow`] with what it is grouped by besides its dimensions: the partner (reads over
/// many partners) or the hour (`toUInt32(toUnixTimestamp(bucket))`, hourly reads). The query
/// names that column `grouped_by`.
#[derive(Row, Deserialize)]
struct KeyedSumRow<K> {
    grouped_by: K,
    api: String,
    version: String,
    operation: String,
    method: String,
    status: u16,
    calls: u64,
    units: i128,
    request_bytes: u64,
    response_bytes: u64,
    latency_us: u64,
}

impl<K> KeyedSumRow<K> {
    fn split(self) -> (K, SumRow) {
        (
            self.grouped_by,
            SumRow {
                api: self.api,
                version: self.version,
                operation: self.operation,
                method: self.method,
                status: self.status,
                calls: self.calls,
                units: self.units,
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
                latency_us: self.latency_us,
            },
        )
    }
}

#[derive(Row, Deserialize)]
struct SumRow {
    api: String,
    version: String,
    operation: String,
    method: String,
    status: u16,
    calls: u64,
    units: i128,
    request_bytes: u64,
    response_bytes: u64,
    latency_us: u64,
}

impl SumRow {
    fn into_rollup(self, partner: &str) -> Result<RollupRow, UsageStoreError> {
        Ok(RollupRow {
            units: fixed_to_units(self.units).map_err(|reason| UsageStoreError::Corrupt {
                id: format!("rollup of {partner}"),
                reason: reason.to_string(),
            })?,
            api: self.api,
            version: self.version,
            operation: self.operation,
            method: self.method,
            status: self.status,
            calls: self.calls,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            latency_us: self.latency_us,
        })
    }
}

/// Totals over a partner's events, the same numbers from raw rows or from a rollup table (for
/// the equality checks of tests and operators).
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct Totals {
    pub calls: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
    /// Units in billionths (Decimal(38, 9) as an integer).
    pub units_nano: i128,
}

fn env_code(env: Env) -> i8 {
    match env {
        Env::Live => 1,
        Env::Sandbox => 2,
    }
}

fn units_to_fixed(units: Decimal) -> Result<i128, UnitsError> {
    let mut u = units.normalize();
    if u.scale() > UNITS_SCALE {
        return Err(UnitsError::TooPrecise(units));
    }
    u.rescale(UNITS_SCALE);
    Ok(u.mantissa())
}

/// A stored fixed-point quantity that is no decimal.
#[derive(Debug, thiserror::Error)]
#[error("units {value}e-{scale}: {why}", scale = UNITS_SCALE)]
struct FixedUnitsError {
    value: i128,
    why: rust_decimal::Error,
}

fn fixed_to_units(value: i128) -> Result<Decimal, FixedUnitsError> {
    Decimal::try_from_i128_with_scale(value, UNITS_SCALE)
        .map(|d| d.normalize())
        .map_err(|why| FixedUnitsError { value, why })
}

/// The table a rollup level lives in and the width of its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    Minute,
    Hour,
}

impl Rollup {
    pub fn table(self) -> &'static str {
        match self {
            Rollup::Minute => "call_usage_1m",
            Rollup::Hour => "call_usage_1h",
        }
    }

    fn width(self) -> TimeDelta {
        match self {
            Rollup::Minute => TimeDelta::minutes(1),
            Rollup::Hour => TimeDelta::hours(1),
        }
    }
}

pub(crate) fn ceil_to(t: DateTime<Utc>, width: TimeDelta) -> DateTime<Utc> {
    let floor = t.duration_trunc(width).unwrap_or(t);
    if floor == t {
        t
    } else {
        floor + width
    }
}

pub(crate) fn floor_to(t: DateTime<Utc>, width: TimeDelta) -> DateTime<Utc> {
    t.duration_trunc(width).unwrap_or(t)
}

/// How `[from, to)` splits into whole hours, whole minutes at the edges, and sub-minute slivers
/// read from raw rows: together they cover every microsecond exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    pub raw: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    pub minutes: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    pub hours: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

pub fn plan_range(from: DateTime<Utc>, to: DateTime<Utc>) -> RangePlan {
    let mut plan = RangePlan {
        raw: vec![],
        minutes: vec![],
        hours: None,
    };
    if from >= to {
        return plan;
    }
    let (m, h) = (Rollup::Minute.width(), Rollup::Hour.width());
    let (m0, m1) = (ceil_to(from, m), floor_to(to, m));
    if m0 >= m1 {
        plan.raw.push((from, to));
        return plan;
    }
    if from < m0 {
        plan.raw.push((from, m0));
    }
    if m1 < to {
        plan.raw.push((m1, to));
    }
    let (h0, h1) = (ceil_to(m0, h), floor_to(m1, h));
    if h0 >= h1 {
        plan.minutes.push((m0, m1));
        return plan;
    }
    if m0 < h0 {
        plan.minutes.push((m0, h0));
    }
    if h1 < m1 {
        plan.minutes.push((h1, m1));
    }
    plan.hours = Some((h0, h1));
    plan
}

const SUM_COLUMNS: &str = "api, version, operation, method, status, \
    sum(calls) AS calls, sum(units) AS units, sum(request_bytes) AS request_bytes, \
    sum(response_bytes) AS response_bytes, sum(latency_us) AS latency_us";

impl ClickHouseUsageStore {
    /// Connects and checks the server answers; run [`ClickHouseUsageStore::migrate`] to create
    /// the schema.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, UsageStoreError> {
        let mut client = Client::default()
            .with_url(&config.url)
            .with_validation(config.validation)
            .with_compression(if config.compression {
                clickhouse::Compression::Lz4
            } else {
                clickhouse::Compression::None
            });
        if let Some(user) = &config.user {
            client = client.with_user(user);
        }
        if let Some(password) = &config.password {
            client = client.with_password(password);
        }
        client
            .query("SELECT 1")
            .execute()
            .await
            .map_err(|e| ch(format!("cannot reach ClickHouse at {}", config.url), e))?;
        if !config
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || config.database.is_empty()
        {
            return Err(UsageStoreError::Config(format!(
                "clickhouse database {:?} must be letters, digits and '_'",
                config.database
            )));
        }
        Ok(ClickHouseUsageStore {
            client: client.with_database(&config.database),
            database: config.database.clone(),
            recorder: None,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Keeps the text of every usage query from now on (see [`Self::recorded_queries`]).
    pub fn record_queries(mut self) -> Self {
        self.recorder = Some(Default::default());
        self
    }

    pub fn recorded_queries(&self) -> Vec<String> {
        self.recorder
            .as_ref()
            .map(|r| r.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Hands every stored usage event's key to `learn`, `chunk` keys at a time; how many.
    /// Read from `usage_events` itself (its rows are the stored events), one 16-byte column.
    pub async fn scan_usage_keys(
        &self,
        chunk: usize,
        mut learn: impl FnMut(&mut Vec<Uuid>),
    ) -> Result<u64, UsageStoreError> {
        #[derive(Row, Deserialize)]
        struct Key {
            #[serde(with = "clickhouse::serde::uuid")]
            key: Uuid,
        }
        let mut rows = self
            .traced(self.client.query("SELECT key FROM usage_events"))
            .fetch::<Key>()
            .map_err(|e| ch("usage event keys", e))?;
        let (mut seen, mut keys) = (0u64, Vec::with_capacity(chunk));
        while let Some(row) = rows.next().await.map_err(|e| ch("usage event keys", e))? {
            keys.push(row.key);
            if keys.len() >= chunk {
                seen += keys.len() as u64;
                learn(&mut keys);
                keys.clear();
            }
        }
        seen += keys.len() as u64;
        learn(&mut keys);
        Ok(seen)
    }

    fn traced(&self, q: clickhouse::query::Query) -> clickhouse::query::Query {
        if let Some(r) = &self.recorder {
            if let Ok(mut v) = r.lock() {
                v.push(q.sql_display().to_string());
            }
        }
        q
    }

    /// Creates the database and applies the migrations not yet recorded in
    /// `schema_migrations`, in order. Idempotent: a second run applies nothing. A recorded
    /// migration whose text changed since is an error (migrations are append-only).
    pub async fn migrate(&self) -> Result<Vec<String>, UsageStoreError> {
        let server = self.client.clone().with_database("default");
        server
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database))
            .execute()
            .await
            .map_err(|e| ch("create database", e))?;
        self.client
            .query(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (name String, checksum String, applied_at DateTime('UTC') DEFAULT now()) \
                 ENGINE = MergeTree ORDER BY name",
            )
            .execute()
            .await
            .map_err(|e| ch("create schema_migrations", e))?;
        #[derive(Row, Deserialize)]
        struct Applied {
            name: String,
            checksum: String,
        }
        let applied: HashMap<String, String> = self
            .client
            .query("SELECT name, any(checksum) AS checksum FROM schema_migrations GROUP BY name")
            .fetch_all::<Applied>()
            .await
            .map_err(|e| ch("read schema_migrations", e))?
            .into_iter()
            .map(|a| (a.name, a.checksum))
            .collect();
        let mut done = Vec::new();
        for (name, sql) in MIGRATIONS {
            let checksum = checksum(sql);
            match applied.get(*name) {
                Some(c) if *c == checksum => continue,
                Some(c) => {
                    return Err(UsageStoreError::Config(format!(
                        "ClickHouse migration {name} was applied with checksum {c} but reads {checksum} now; migrations are append-only, add a new one"
                    )))
                }
                None => {}
            }
            for statement in statements(sql) {
                self.client
                    .query_raw(&statement)
                    .execute()
                    .await
                    .map_err(|e| ch(format!("migration {name}"), e))?;
            }
            self.client
                .query("INSERT INTO schema_migrations (name, checksum) VALUES (?, ?)")
                .bind(*name)
                .bind(&checksum)
                .execute()
                .await
                .map_err(|e| ch("record migration", e))?;
            tracing::info!(migration = name, "clickhouse: migration applied");
            done.push(name.to_string());
        }
        Ok(done)
    }

    async fn insert_rows(
        &self,
        topic: &str,
        events: &[LoggedEvent],
    ) -> Result<InsertOutcome, UsageStoreError> {
        if events.is_empty() {
            return Ok(InsertOutcome::default());
        }
        let mut insert = self
            .client
            .insert::<RawRow<'_>>("call_events")
            .await
            .map_err(|e| ch("insert call_events", e))?;
        for l in events {
            let e = &l.event;
            let units = units_to_fixed(e.units).map_err(|reason| UsageStoreError::Corrupt {
                id: e.id.to_string(),
                reason: reason.to_string(),
            })?;
            let row = RawRow {
                id: e.id,
                time: e.time.timestamp().clamp(0, u32::MAX as i64) as u32,
                time_us: e.time_us(),
                partner_id: &e.partner_id,
                key_id: &e.key_id,
                env: env_code(e.env),
                api: &e.api,
                version: &e.version,
                operation: &e.operation,
                method: &e.method,
                status: e.status,
                latency_us: e.latency_us,
                request_bytes: e.request_bytes,
                response_bytes: e.response_bytes,
                units,
                gateway_id: &e.gateway_id,
                attributes: serde_json::to_string(&e.attributes).unwrap_or_else(|_| "{}".into()),
                log_topic: topic,
                log_partition: l.partition,
                log_offset: l.offset,
            };
            insert
                .write(&row)
                .await
                .map_err(|e| ch("insert call_events", e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| ch("insert call_events", e))?;
        Ok(InsertOutcome {
            inserted: events.len() as u64,
            duplicates: 0,
        })
    }

    async fn insert_usage_rows(
        &self,
        topic: &str,
        events: &[LoggedUsageEvent],
    ) -> Result<InsertOutcome, UsageStoreError> {
        if events.is_empty() {
            return Ok(InsertOutcome::default());
        }
        let mut insert = self
            .client
            .insert::<UsageRow<'_>>("usage_events")
            .await
            .map_err(|e| ch("insert usage_events", e))?;
        for l in events {
            let e = &l.event;
            let corrupt = |reason: String| UsageStoreError::Corrupt {
                id: e.id.clone(),
                reason,
            };
            let props = e.properties().map_err(|r| corrupt(r.to_string()))?;
            let mut number_values = Vec::with_capacity(props.numbers.len());
            for n in props.numbers.values() {
                number_values.push(units_to_fixed(*n).map_err(|r| corrupt(r.to_string()))?);
            }
            let row = UsageRow {
                partner_id: &e.partner_id,
                event_type: &e.event_type,
                time: e.time.timestamp().clamp(0, u32::MAX as i64) as u32,
                time_us: e.time_us(),
                key: e.key,
                id: &e.id,
                source: &e.source,
                subject: &e.subject,
                digest: &e.digest,
                number_keys: props.numbers.keys().cloned().collect(),
                number_values,
                text_keys: props.texts.keys().cloned().collect(),
                text_values: props.texts.into_values().collect(),
                cloudevent: e.cloudevent.get(),
                log_topic: topic,
                log_partition: l.partition,
                log_offset: l.offset,
            };
            insert
                .write(&row)
                .await
                .map_err(|e| ch("insert usage_events", e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| ch("insert usage_events", e))?;
        Ok(InsertOutcome {
            inserted: events.len() as u64,
            duplicates: 0,
        })
    }

    /// A meter of usage events over the query's range, in SQL over the stored properties:
    /// the total, and one value per group when it groups. Live only (usage events have no
    /// sandbox).
    async fn event_meter_usage(
        &self,
        query: &UsageQuery,
        meter: &Meter,
    ) -> Result<MeterUsage, UsageStoreError> {
        let mut usage = MeterUsage {
            amounts: None,
            meter: meter.name.clone(),
            quantity: Decimal::ZERO,
            groups: Vec::new(),
        };
        let sel = event_selector(meter)?;
        if meter.carries_over() {
            let events = self.carried_events(query, meter).await?;
            let span = Span::as_of(query.from, query.to, Utc::now());
            return Ok(evaluate_usage_events(std::slice::from_ref(meter), &events, span).remove(0));
        }
        // No matching event: aggregates over nothing give one row of defaults without
        // GROUP BY, which is zero for every aggregation here.
        for (_, q) in self
            .event_meter_rows(query, meter, EventSplit::Total)
            .await?
        {
            usage.quantity = q;
        }
        if !sel.group_by.is_empty() {
            // In the order of the group values, as peage_core lists them.
            let mut groups = self
                .event_meter_rows(query, meter, EventSplit::Groups)
                .await?;
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            usage.groups = groups
                .into_iter()
                .map(|(values, quantity)| MeterGroup {
                    dimensions: sel.group_by.iter().cloned().zip(values).collect(),
                    quantity,
                })
                .collect();
        }
        Ok(usage)
    }

    /// What a meter that carries over ([`Meter::carries_over`]) reads for the query's range:
    /// its matching events in the range, and before it only the last one of each gauge (each
    /// group; for a recurring `unique_count`, each group and value), which is all peage_core
    /// needs to carry in. Cancelled events are left out of both, so the last one before the
    /// range is the last that counts. Live only.
    async fn carried_events(
        &self,
        query: &UsageQuery,
        meter: &Meter,
    ) -> Result<Vec<UsageEvent>, UsageStoreError> {
        let sel = event_selector(meter)?;
        if query.env != Env::Live {
            return Ok(Vec::new());
        }
        let number = "number_values[indexOf(number_keys, ?)]";
        let text = "text_values[indexOf(text_keys, ?)]";
        let unique = meter.aggregation == Aggregation::UniqueCount;
        // The events a meter reads: of its type, before the range's end, with the value,
        // through the filters, not cancelled.
        let mut matching = format!(
            "partner_id = ? AND type = ? AND time <= toDateTime(?) AND time_us < ? AND has({}, ?)",
            if unique { "text_keys" } else { "number_keys" }
        );
        for _ in &sel.filter {
            matching.push_str(&format!(" AND has(?, {text})"));
        }
        matching.push_str(
            " AND toString(key) NOT IN (SELECT text_values[indexOf(text_keys, 'cancels')] \
             FROM usage_events WHERE partner_id = ? AND type = ?)",
        );
        let mut gauge: Vec<&str> = sel.group_by.iter().map(|_| text).collect();
        // The last event of a gauge as peage_core orders them: by time, then value (then a
        // removal after an addition).
        let order = if unique {
            gauge.push(text);
            format!(
                "text_values[indexOf(text_keys, '{}')] = '{}'",
                peage_core::carry::OPERATION_PROPERTY,
                peage_core::carry::REMOVE
            )
        } else {
            number.to_string()
        };
        // One gauge without groups: no GROUP BY (an empty set still gives one row, of no key).
        let group_clause = if gauge.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY [{}]", gauge.join(", "))
        };
        let sql = format!(
            "SELECT {STORED_USAGE_COLUMNS} FROM usage_events WHERE {matching} AND (time_us >= ? OR toString(key) IN \
             (SELECT argMax(toString(key), tuple(time_us, {order})) FROM usage_events \
             WHERE {matching} AND time_us < ?{group_clause}))"
        );
        let value_path = sel.value.as_deref().unwrap_or_default();
        let bind_matching = |mut q: clickhouse::query::Query| {
            q = q
                .bind(&query.partner_id)
                .bind(&sel.event_type)
                .bind(query.to.timestamp())
                .bind(query.to.timestamp_micros())
                .bind(value_path);
            for (path, allowed) in &sel.filter {
                let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
                q = q.bind(allowed).bind(path);
            }
            q.bind(&query.partner_id)
                .bind(peage_core::usage_event::CANCELLATION_TYPE)
        };
        let mut q = bind_matching(self.client.query(&sql)).bind(query.from.timestamp_micros());
        if !unique {
            q = q.bind(value_path);
        }
        q = bind_matching(q).bind(query.from.timestamp_micros());
        for g in &sel.group_by {
            q = q.bind(g);
        }
        if unique {
            q = q.bind(value_path);
        }
        let rows = self
            .traced(q)
            .fetch_all::<StoredUsageRow>()
            .await
            .map_err(|e| ch(format!("meter {}", meter.name), e))?;
        rows.into_iter()
            .map(|r| r.into_event(&query.partner_id))
            .collect()
    }

    /// One SQL evaluation of an event meter over the query's range: `(split key, quantity)`
    /// rows, the split key being the group values, or the bucket index (1-based, as text).
    async fn event_meter_rows(
        &self,
        query: &UsageQuery,
        meter: &Meter,
        split: EventSplit<'_>,
    ) -> Result<Vec<(Vec<String>, Decimal)>, UsageStoreError> {
        let sel = event_selector(meter)?;
        if query.env != Env::Live {
            return Ok(Vec::new());
        }
        if meter.carries_over() {
            return Err(UsageStoreError::Config(format!(
                "meter {} carries over: it is evaluated from its readings",
                meter.name
            )));
        }
        // Property lookups: `?` placeholders bound in order below.
        let number = "number_values[indexOf(number_keys, ?)]";
        let text = "text_values[indexOf(text_keys, ?)]";
        let (value, needs): (String, Option<&str>) = match meter.aggregation {
            // Scaled to Decimal(38, 9) as the stored numbers are.
            Aggregation::Count => ("toDecimal128(count(), 9)".into(), None),
            Aggregation::Sum => (format!("sum({number})"), Some("number_keys")),
            Aggregation::Max => (format!("max({number})"), Some("number_keys")),
            Aggregation::UniqueCount => (
                format!("toDecimal128(uniqExact({text}), 9)"),
                Some("text_keys"),
            ),
            // The value at the latest time; ties go to the larger value, as in peage_core.
            Aggregation::Latest => (
                format!("argMax({number}, tuple(time_us, {number}))"),
                Some("number_keys"),
            ),
            // Carries over: refused above.
            Aggregation::WeightedSum => return Ok(Vec::new()),
        };
        let mut filters = String::new();
        for _ in &sel.filter {
            filters.push_str(&format!(" AND has(?, {text})"));
        }
        if let Some(keys) = needs {
            filters.push_str(&format!(" AND has({keys}, ?)"));
        }
        // Cancelled events are left out: a cancellation record names their key.
        filters.push_str(
            " AND toString(key) NOT IN (SELECT text_values[indexOf(text_keys, 'cancels')] \
             FROM usage_events WHERE partner_id = ? AND type = ?)",
        );
        let (split_values, group_clause) = match split {
            EventSplit::Total => ("emptyArrayString()".to_string(), ""),
            EventSplit::Groups => (
                format!(
                    "[{}]",
                    sel.group_by
                        .iter()
                        .map(|_| text)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                " GROUP BY groups",
            ),
            // The first bucket whose end is past the event's time.
            EventSplit::Buckets(_) => (
                "[toString(arrayFirstIndex(e -> e > time_us, ?))]".to_string(),
                " GROUP BY groups",
            ),
        };
        let sql = format!(
            "SELECT {split_values} AS groups, {value} AS value FROM usage_events \
             WHERE partner_id = ? AND type = ? AND {IN_RANGE}{filters}{group_clause}"
        );
        let mut q = self.client.query(&sql);
        // The binds follow the placeholders: split, value, then the WHERE clause.
        match split {
            EventSplit::Total => {}
            EventSplit::Groups => {
                for g in &sel.group_by {
                    q = q.bind(g);
                }
            }
            EventSplit::Buckets(ends) => q = q.bind(ends),
        }
        let value_path = sel.value.as_deref().unwrap_or_default();
        q = match meter.aggregation {
            Aggregation::Count => q,
            Aggregation::Latest => q.bind(value_path).bind(value_path),
            _ => q.bind(value_path),
        };
        q = bind_range(q.bind(&query.partner_id).bind(&sel.event_type), query);
        for (path, allowed) in &sel.filter {
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            q = q.bind(allowed).bind(path);
        }
        if needs.is_some() {
            q = q.bind(value_path);
        }
        q = q
            .bind(&query.partner_id)
            .bind(peage_core::usage_event::CANCELLATION_TYPE);
        let rows = self
            .traced(q)
            .fetch_all::<EventMeterRow>()
            .await
            .map_err(|e| ch(format!("meter {}", meter.name), e))?;
        rows.into_iter()
            .map(|r| {
                let raw = fixed_to_units(r.value).map_err(|reason| UsageStoreError::Corrupt {
                    id: meter.name.clone(),
                    reason: reason.to_string(),
                })?;
                let q = match meter.scale {
                    Some(s) => raw.saturating_mul(s).normalize(),
                    None => raw.normalize(),
                };
                Ok((r.groups, q))
            })
            .collect()
    }

    fn scope(query: &UsageQuery) -> (String, &'static str) {
        (query.partner_id.clone(), query.env.as_str())
    }

    /// Rollup sums over `[from, to)`, read from the hour and minute rollups and, for the
    /// sub-minute edges, from raw rows.
    pub async fn rollup_rows(&self, query: &UsageQuery) -> Result<Vec<RollupRow>, UsageStoreError> {
        let plan = plan_range(query.from, query.to);
        let (partner, env) = Self::scope(query);
        let mut parts: Vec<String> = Vec::new();
        let mut binds: Vec<(i64, i64)> = Vec::new();
        for (rollup, ranges) in [
            (Rollup::Hour, plan.hours.into_iter().collect::<Vec<_>>()),
            (Rollup::Minute, plan.minutes.clone()),
        ] {
            for (a, b) in ranges {
                parts.push(format!(
                    "SELECT {SUM_COLUMNS} FROM {} WHERE partner_id = ? AND env = ? \
                     AND bucket >= toDateTime(?) AND bucket < toDateTime(?) \
                     GROUP BY api, version, operation, method, status",
                    rollup.table()
                ));
                binds.push((a.timestamp(), b.timestamp()));
            }
        }
        for (a, b) in &plan.raw {
            parts.push(format!(
                "SELECT {SUM_COLUMNS} FROM (SELECT api, version, operation, method, status, \
                 toUInt64(1) AS calls, units, request_bytes, response_bytes, latency_us \
                 FROM call_events WHERE partner_id = ? AND env = ? \
                 AND time >= toDateTime(?) AND time <= toDateTime(?) \
                 AND time_us >= {} AND time_us < {} AND {SERVED}) \
                 GROUP BY api, version, operation, method, status",
                a.timestamp_micros(),
                b.timestamp_micros()
            ));
            binds.push((a.timestamp(), b.timestamp()));
        }
        let mut rows = Vec::new();
        for (sql, (a, b)) in parts.iter().zip(binds) {
            let q = self
                .client
                .query(sql)
                .bind(&partner)
                .bind(env)
                .bind(a)
                .bind(b);
            let fetched = self
                .traced(q)
                .fetch_all::<SumRow>()
                .await
                .map_err(|e| ch("usage rollups", e))?;
            for r in fetched {
                rows.push(r.into_rollup(&partner)?);
            }
        }
        Ok(rows)
    }

    /// Raw events of the query's range, in time order.
    pub async fn raw_events(&self, query: &UsageQuery) -> Result<Vec<CallEvent>, UsageStoreError> {
        let (partner, env) = Self::scope(query);
        let q = self.client.query(&format!(
            "SELECT id, time_us, partner_id, key_id, env, api, version, operation, method, \
             status, latency_us, request_bytes, response_bytes, units, gateway_id, attributes \
             FROM call_events WHERE partner_id = ? AND env = ? AND {IN_RANGE} ORDER BY time_us"
        ));
        let q = bind_range(q.bind(&partner).bind(env), query);
        let rows = self
            .traced(q)
            .fetch_all::<StoredRow>()
            .await
            .map_err(|e| ch("raw events", e))?;
        rows.into_iter().map(stored_to_event).collect()
    }

    /// Every meter evaluated over raw events only (what the rollups are checked against).
    pub async fn meter_usage_raw(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<MeterUsage>, UsageStoreError> {
        let events = self.raw_events(query).await?;
        Ok(peage_core::meter::evaluate(meters, &events))
    }

    /// Totals of the raw table's served calls (what the rollups hold), optionally for one
    /// partner.
    pub async fn raw_totals(&self, partner_id: Option<&str>) -> Result<Totals, UsageStoreError> {
        self.totals(
            &format!(
                "SELECT count() AS calls, sum(request_bytes) AS request_bytes, \
                 sum(response_bytes) AS response_bytes, sum(latency_us) AS latency_us, \
                 sum(units) AS units_nano FROM call_events WHERE {SERVED}"
            ),
            partner_id,
        )
        .await
    }

    /// Totals of a rollup table, optionally for one partner.
    pub async fn rollup_totals(
        &self,
        rollup: Rollup,
        partner_id: Option<&str>,
    ) -> Result<Totals, UsageStoreError> {
        self.totals(
            &format!(
                "SELECT sum(calls) AS calls, sum(request_bytes) AS request_bytes, \
                 sum(response_bytes) AS response_bytes, sum(latency_us) AS latency_us, \
                 sum(units) AS units_nano FROM {}",
                rollup.table()
            ),
            partner_id,
        )
        .await
    }

    async fn totals(
        &self,
        select: &str,
        partner_id: Option<&str>,
    ) -> Result<Totals, UsageStoreError> {
        let q = match partner_id {
            Some(p) => {
                let and = if select.contains(" WHERE ") {
                    "AND"
                } else {
                    "WHERE"
                };
                self.client
                    .query(&format!("{select} {and} partner_id = ?"))
                    .bind(p)
            }
            None => self.client.query(select),
        };
        self.traced(q)
            .fetch_one::<Totals>()
            .await
            .map_err(|e| ch("totals", e))
    }
}

fn stored_to_event(r: StoredRow) -> Result<CallEvent, UsageStoreError> {
    let id = r.id;
    let corrupt = |reason: String| UsageStoreError::Corrupt {
        id: id.to_string(),
        reason,
    };
    Ok(CallEvent {
        id,
        time: DateTime::from_timestamp_micros(r.time_us)
            .ok_or_else(|| corrupt(format!("time_us {}", r.time_us)))?,
        partner_id: r.partner_id,
        key_id: r.key_id,
        env: match r.env {
            1 => Env::Live,
            2 => Env::Sandbox,
            other => return Err(corrupt(format!("env code {other}"))),
        },
        api: r.api,
        version: r.version,
        operation: r.operation,
        method: r.method,
        status: r.status,
        latency_us: r.latency_us,
        request_bytes: r.request_bytes,
        response_bytes: r.response_bytes,
        units: fixed_to_units(r.units).map_err(|r| corrupt(r.to_string()))?,
        gateway_id: r.gateway_id,
        attributes: serde_json::from_str(&r.attributes)
            .map_err(|e| corrupt(format!("attributes: {e}")))?,
    })
}

fn ch(what: impl std::fmt::Display, e: clickhouse::error::Error) -> UsageStoreError {
    match e {
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut => {
            UsageStoreError::Unavailable(format!("{what}: {e}"))
        }
        e => UsageStoreError::ClickHouse(format!("{what}: {e}")),
    }
}

fn checksum(sql: &str) -> String {
    // FNV-1a 64: enough to notice an edited migration; not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Splits a migration file into statements: `--` comment lines dropped, split on `;`.
pub fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[async_trait]
impl UsageStore for ClickHouseUsageStore {
    async fn insert(&self, events: &[CallEvent]) -> Result<InsertOutcome, UsageStoreError> {
        // Events from outside the log (no position): deduplicated by id against what is stored.
        let existing = self.stored_ids(events).await?;
        let fresh: Vec<LoggedEvent> = events
            .iter()
            .filter(|e| !existing.contains(&(e.partner_id.clone(), e.id)))
            .map(|e| LoggedEvent {
                partition: 0,
                offset: 0,
                event: e.clone(),
            })
            .collect();
        let mut outcome = self.insert_rows("", &fresh).await?;
        outcome.duplicates = (events.len() - fresh.len()) as u64;
        Ok(outcome)
    }

    async fn insert_logged(
        &self,
        topic: &str,
        events: &[LoggedEvent],
    ) -> Result<InsertOutcome, UsageStoreError> {
        self.insert_rows(topic, events).await
    }

    async fn event_amounts(
        &self,
        query: &UsageQuery,
        meter: &Meter,
    ) -> Result<Vec<Decimal>, UsageStoreError> {
        #[derive(Row, Deserialize)]
        struct Amount {
            value: i128,
        }
        let sel = event_selector(meter)?;
        let Some(value_path) = sel.value.as_deref() else {
            return Ok(Vec::new());
        };
        if query.env != Env::Live {
            return Ok(Vec::new());
        }
        let text = "text_values[indexOf(text_keys, ?)]";
        let mut filters = String::new();
        for _ in &sel.filter {
            filters.push_str(&format!(" AND has(?, {text})"));
        }
        let sql = format!(
            "SELECT number_values[indexOf(number_keys, ?)] AS value FROM usage_events \
             WHERE partner_id = ? AND type = ? AND {IN_RANGE} AND has(number_keys, ?){filters} \
             AND toString(key) NOT IN (SELECT text_values[indexOf(text_keys, 'cancels')] \
             FROM usage_events WHERE partner_id = ? AND type = ?) \
             ORDER BY time_us, toString(key)"
        );
        let mut q = self.client.query(&sql).bind(value_path);
        q = bind_range(q.bind(&query.partner_id).bind(&sel.event_type), query).bind(value_path);
        for (path, allowed) in &sel.filter {
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            q = q.bind(allowed).bind(path);
        }
        q = q
            .bind(&query.partner_id)
            .bind(peage_core::usage_event::CANCELLATION_TYPE);
        let rows = self
            .traced(q)
            .fetch_all::<Amount>()
            .await
            .map_err(|e| ch(format!("amounts of meter {}", meter.name), e))?;
        rows.into_iter()
            .map(|r| {
                let v = fixed_to_units(r.value).map_err(|reason| UsageStoreError::Corrupt {
                    id: meter.name.clone(),
                    reason: reason.to_string(),
                })?;
                Ok(match meter.scale {
                    Some(s) => v.saturating_mul(s),
                    None => v,
                })
            })
            .collect()
    }

    async fn event_meter_series(
        &self,
        partner_id: &str,
        meter: &Meter,
        edges: &[DateTime<Utc>],
    ) -> Result<MeterSeries, UsageStoreError> {
        let mut series = MeterSeries {
            values: vec![Decimal::ZERO; edges.len().saturating_sub(1)],
            total: Decimal::ZERO,
        };
        let Some(query) = series_range(partner_id, edges) else {
            return Ok(series);
        };
        if meter.carries_over() {
            let events = self.carried_events(&query, meter).await?;
            let now = Utc::now();
            return Ok(MeterSeries {
                values: peage_core::series::event_meter_buckets(meter, &events, edges, now),
                total: peage_core::series::event_meter_quantity(
                    meter,
                    &events,
                    Span::as_of(query.from, query.to, now),
                ),
            });
        }
        let ends: Vec<i64> = edges[1..].iter().map(|t| t.timestamp_micros()).collect();
        for (key, q) in self
            .event_meter_rows(&query, meter, EventSplit::Buckets(&ends))
            .await?
        {
            // 1-based; 0 (no bucket) cannot happen inside the range.
            let i = key
                .first()
                .and_then(|k| k.parse::<usize>().ok())
                .unwrap_or(0);
            if let Some(v) = i.checked_sub(1).and_then(|i| series.values.get_mut(i)) {
                *v = q;
            }
        }
        for (_, q) in self
            .event_meter_rows(&query, meter, EventSplit::Total)
            .await?
        {
            series.total = q;
        }
        Ok(series)
    }

    async fn keys_last_used(
        &self,
        partner_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, UsageStoreError> {
        #[derive(Row, Deserialize)]
        struct Used {
            key_id: String,
            last_us: i64,
        }
        let rows = self
            .traced(
                self.client
                    .query(
                        "SELECT key_id, max(time_us) AS last_us FROM call_events \
                         WHERE partner_id = ? AND time_us >= ? GROUP BY key_id ORDER BY key_id",
                    )
                    .bind(partner_id)
                    .bind(since.timestamp_micros()),
            )
            .fetch_all::<Used>()
            .await
            .map_err(|e| ch("keys last used", e))?;
        rows.into_iter()
            .map(|r| {
                let at = DateTime::from_timestamp_micros(r.last_us).ok_or_else(|| {
                    UsageStoreError::Corrupt {
                        id: r.key_id.clone(),
                        reason: format!("last call time {}", r.last_us),
                    }
                })?;
                Ok((r.key_id, at))
            })
            .collect()
    }

    async fn refused_calls(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<crate::RefusedCalls>, UsageStoreError> {
        #[derive(Row, Deserialize)]
        struct Refused {
            refusal: String,
            status: u16,
            calls: u64,
        }
        let (partner, env) = Self::scope(query);
        let q = self.client.query(&format!(
            "SELECT visitParamExtractString(attributes, 'refusal') AS refusal, status, \
             count() AS calls FROM call_events \
             WHERE partner_id = ? AND env = ? AND {IN_RANGE} AND NOT ({SERVED}) \
             GROUP BY refusal, status ORDER BY calls DESC, refusal, status"
        ));
        let q = bind_range(q.bind(&partner).bind(env), query);
        let rows = self
            .traced(q)
            .fetch_all::<Refused>()
            .await
            .map_err(|e| ch("refused calls", e))?;
        Ok(rows
            .into_iter()
            .map(|r| crate::RefusedCalls {
                refusal: r.refusal,
                status: r.status,
                calls: r.calls,
            })
            .collect())
    }

    async fn usage_event_types(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<EventTypeSeen>, UsageStoreError> {
        if query.env != Env::Live {
            return Ok(Vec::new());
        }
        #[derive(Row, Deserialize)]
        struct Seen {
            #[serde(rename = "type")]
            event_type: String,
            events: u64,
            last_us: i64,
        }
        let q = self.client.query(&format!(
            "SELECT type, count() AS events, max(time_us) AS last_us FROM usage_events \
             WHERE partner_id = ? AND {IN_RANGE} AND NOT startsWith(type, 'peage.') \
             GROUP BY type ORDER BY type"
        ));
        let q = bind_range(q.bind(&query.partner_id), query);
        let rows = self
            .traced(q)
            .fetch_all::<Seen>()
            .await
            .map_err(|e| ch("usage event types", e))?;
        rows.into_iter()
            .map(|r| EventTypeSeen::from_row(r.event_type, r.events, r.last_us))
            .collect()
    }

    async fn insert_usage_events(
        &self,
        topic: &str,
        events: &[LoggedUsageEvent],
    ) -> Result<InsertOutcome, UsageStoreError> {
        self.insert_usage_rows(topic, events).await
    }

    async fn stored_usage_event(
        &self,
        partner_id: &str,
        key: Uuid,
    ) -> Result<Option<UsageEvent>, UsageStoreError> {
        let q = self
            .client
            .query(&format!(
                "SELECT {STORED_USAGE_COLUMNS} FROM usage_events \
                 WHERE partner_id = ? AND time IN (SELECT time FROM usage_event_keys \
                 WHERE partner_id = ? AND key = toUUID(?)) AND key = toUUID(?) LIMIT 1"
            ))
            .bind(partner_id)
            .bind(partner_id)
            .bind(key.to_string())
            .bind(key.to_string());
        let rows = self
            .traced(q)
            .fetch_all::<StoredUsageRow>()
            .await
            .map_err(|e| ch("stored usage event", e))?;
        rows.into_iter()
            .next()
            .map(|r| r.into_event(partner_id))
            .transpose()
    }

    async fn stored_usage_digests(
        &self,
        keys: &[UsageKey],
    ) -> Result<HashMap<UsageKey, String>, UsageStoreError> {
        #[derive(Row, Deserialize)]
        struct Stored {
            #[serde(with = "clickhouse::serde::uuid")]
            key: Uuid,
            digest: String,
        }
        let mut found = HashMap::new();
        for (partner, keys) in crate::keys_by_partner(keys) {
            // By key alone, in `usage_event_keys` (ordered by it): an earlier copy may have
            // another time (one sent without `time` is stamped when received). Chunked so the
            // query stays far below ClickHouse's max_query_size (256 KiB) at any batch size.
            // PREWHERE: the granules the keys fall in are read for `key` alone, and `digest`
            // only for the rows that match (half the CPU of a plain WHERE at 300k keys).
            // The keys are written into the text at once (UUIDs need no escaping), not bound
            // one by one as strings: the query text grew and was escaped char by char.
            for chunk in keys.chunks(KEY_LOOKUP_CHUNK) {
                const HEAD: &str = "SELECT key, any(digest) AS digest FROM usage_event_keys \
                                    PREWHERE key IN (SELECT toUUID(arrayJoin([";
                const TAIL: &str = "]))) WHERE partner_id = ? GROUP BY key";
                let mut sql = String::with_capacity(HEAD.len() + TAIL.len() + chunk.len() * 39);
                sql.push_str(HEAD);
                let mut buf = Uuid::encode_buffer();
                for (i, key) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push('\'');
                    sql.push_str(key.hyphenated().encode_lower(&mut buf));
                    sql.push('\'');
                }
                sql.push_str(TAIL);
                let q = self.client.query(&sql).bind(partner);
                let rows = self
                    .traced(q)
                    .fetch_all::<Stored>()
                    .await
                    .map_err(|e| ch("stored usage events", e))?;
                found.extend(
                    rows.into_iter()
                        .map(|r| ((partner.to_string(), r.key), r.digest)),
                );
            }
        }
        Ok(found)
    }

    async fn stored_positions(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<HashMap<u32, u64>, UsageStoreError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        #[derive(Row, Deserialize)]
        struct Pos {
            log_partition: u32,
            max_offset: u64,
        }
        let q = self
            .client
            .query(
                "SELECT log_partition, max(max_offset) AS max_offset FROM log_positions \
                 WHERE log_topic = ? AND has(?, log_partition) GROUP BY log_partition",
            )
            .bind(topic)
            .bind(partitions);
        let rows = self
            .traced(q)
            .fetch_all::<Pos>()
            .await
            .map_err(|e| ch("log positions", e))?;
        Ok(rows
            .into_iter()
            .map(|p| (p.log_partition, p.max_offset))
            .collect())
    }

    async fn stored_ids(
        &self,
        events: &[CallEvent],
    ) -> Result<HashSet<(String, Uuid)>, UsageStoreError> {
        let mut by_partner: HashMap<&str, Vec<&CallEvent>> = HashMap::new();
        for e in events {
            by_partner.entry(&e.partner_id).or_default().push(e);
        }
        let mut found = HashSet::new();
        #[derive(Row, Deserialize)]
        struct Id {
            #[serde(with = "clickhouse::serde::uuid")]
            id: Uuid,
        }
        for (partner, evs) in by_partner {
            let min = evs.iter().map(|e| e.time.timestamp()).min().unwrap_or(0);
            let max = evs.iter().map(|e| e.time.timestamp()).max().unwrap_or(0);
            let ids: Vec<String> = evs.iter().map(|e| e.id.to_string()).collect();
            let q = self
                .client
                .query(
                    "SELECT id FROM call_events WHERE partner_id = ? \
                     AND time >= toDateTime(?) AND time <= toDateTime(?) \
                     AND has(?, toString(id))",
                )
                .bind(partner)
                .bind(min)
                .bind(max)
                .bind(&ids);
            let rows = self
                .traced(q)
                .fetch_all::<Id>()
                .await
                .map_err(|e| ch("stored ids", e))?;
            found.extend(rows.into_iter().map(|r| (partner.to_string(), r.id)));
        }
        Ok(found)
    }

    async fn meter_usage(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<MeterUsage>, UsageStoreError> {
        let needs_raw: Vec<Meter> = meters
            .iter()
            .filter(|m| !m.rollup_compatible() && m.events.is_none())
            .cloned()
            .collect();
        let call_meters = meters.iter().filter(|m| m.events.is_none()).count();
        let rollups = if needs_raw.len() < call_meters {
            self.rollup_rows(query).await?
        } else {
            vec![]
        };
        let mut raw = if needs_raw.is_empty() {
            vec![]
        } else {
            self.meter_usage_raw(query, &needs_raw).await?
        }
        .into_iter();
        let mut events = Vec::with_capacity(meters.len());
        for m in meters {
            events.push(if m.events.is_some() {
                self.event_meter_usage(query, m).await?
            } else {
                MeterUsage {
                    amounts: None,
                    meter: m.name.clone(),
                    quantity: Decimal::ZERO,
                    groups: Vec::new(),
                }
            });
        }
        // `combine` takes one raw result per meter that is not rollup-compatible, in order:
        // meters of usage events get a placeholder there, replaced by their own below.
        let placeholders = meters.iter().filter(|m| !m.rollup_compatible()).map(|m| {
            if m.events.is_some() {
                MeterUsage {
                    amounts: None,
                    meter: m.name.clone(),
                    quantity: Decimal::ZERO,
                    groups: Vec::new(),
                }
            } else {
                raw.next().expect("one raw result per raw call meter")
            }
        });
        let calls = combine(meters, &rollups, placeholders.collect::<Vec<_>>());
        Ok(merge_event_meters(meters, calls, events))
    }

    async fn erase_partner_events(&self, partner_id: &str) -> Result<(), UsageStoreError> {
        for table in ["call_events", "usage_events"] {
            self.client
                .query(&format!("ALTER TABLE {table} DELETE WHERE partner_id = ?"))
                .bind(partner_id)
                .execute()
                .await
                .map_err(|e| ch("erasure", e))?;
        }
        Ok(())
    }

    async fn drop_raw_call_months(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<u32>, UsageStoreError> {
        let cutoff = crate::month_start(before)?;
        // call_events is partitioned by toYYYYMM(time): a month is a partition, dropped whole.
        let partitions: Vec<String> = self
            .client
            .query(
                "SELECT DISTINCT partition FROM system.parts \
                 WHERE database = ? AND table = 'call_events' AND active ORDER BY partition",
            )
            .bind(&self.database)
            .fetch_all()
            .await
            .map_err(|e| ch("retention: listing partitions", e))?;
        let mut dropped = Vec::new();
        for p in partitions {
            let Ok(month) = p.trim_matches('\'').parse::<u32>() else {
                continue;
            };
            if month < cutoff {
                self.client
                    .query(&format!("ALTER TABLE call_events DROP PARTITION {month}"))
                    .execute()
                    .await
                    .map_err(|e| ch("retention: dropping a month", e))?;
                dropped.push(month);
            }
        }
        Ok(dropped)
    }

    async fn hourly_rollups(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<(DateTime<Utc>, RollupRow)>, UsageStoreError> {
        let (first, end) = crate::overlapping_hours(query.from, query.to);
        let (partner, env) = Self::scope(query);
        let q = self
            .client
            .query(&format!(
                "SELECT toUInt32(toUnixTimestamp(bucket)) AS grouped_by, {SUM_COLUMNS} FROM {} \
                 WHERE partner_id = ? AND env = ? \
                 AND bucket >= toDateTime(?) AND bucket < toDateTime(?) \
                 GROUP BY bucket, api, version, operation, method, status ORDER BY bucket",
                Rollup::Hour.table()
            ))
            .bind(&partner)
            .bind(env)
            .bind(first.timestamp())
            .bind(end.timestamp());
        let fetched = self
            .traced(q)
            .fetch_all::<KeyedSumRow<u32>>()
            .await
            .map_err(|e| ch("hourly usage rollups", e))?;
        let mut out = Vec::with_capacity(fetched.len());
        for r in fetched {
            let (s, sum) = r.split();
            let hour = DateTime::from_timestamp(i64::from(s), 0).unwrap_or_default();
            out.push((hour, sum.into_rollup(&partner)?));
        }
        Ok(out)
    }

    /// One query over the hour rollups for every partner when the range is whole hours and
    /// every meter reads rollups (an invoice run over calendar periods); else partner by partner.
    async fn meter_usage_many(
        &self,
        partners: &[String],
        env: Env,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        meters: &[Meter],
    ) -> Result<HashMap<String, Vec<MeterUsage>>, UsageStoreError> {
        let plan = plan_range(from, to);
        let hours = match plan.hours {
            Some(h) if plan.raw.is_empty() && plan.minutes.is_empty() => h,
            _ => return crate::meter_usage_each(self, partners, env, from, to, meters).await,
        };
        if !meters.iter().all(|m| m.rollup_compatible()) {
            return crate::meter_usage_each(self, partners, env, from, to, meters).await;
        }
        let q = self
            .client
            .query(&format!(
                "SELECT partner_id AS grouped_by, {SUM_COLUMNS} FROM {} WHERE env = ? \
                 AND bucket >= toDateTime(?) AND bucket < toDateTime(?) \
                 GROUP BY partner_id, api, version, operation, method, status",
                Rollup::Hour.table()
            ))
            .bind(env.as_str())
            .bind(hours.0.timestamp())
            .bind(hours.1.timestamp());
        let fetched = self
            .traced(q)
            .fetch_all::<KeyedSumRow<String>>()
            .await
            .map_err(|e| ch("usage rollups of many partners", e))?;
        let mut rows = Vec::with_capacity(fetched.len());
        for r in fetched {
            let (partner, sum) = r.split();
            let row = sum.into_rollup(&partner)?;
            rows.push((partner, row));
        }
        Ok(crate::usage_per_partner(partners, rows, meters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_range_splits_into_hours_minutes_and_raw_slivers_that_cover_it_exactly() {
        let t = |h, m, s, us| {
            Utc.with_ymd_and_hms(2026, 11, 25, h, m, s).unwrap() + TimeDelta::microseconds(us)
        };
        let p = plan_range(t(9, 59, 30, 5), t(12, 0, 10, 0));
        assert_eq!(
            p.raw,
            vec![
                (t(9, 59, 30, 5), t(10, 0, 0, 0)),
                (t(12, 0, 0, 0), t(12, 0, 10, 0))
            ]
        );
        assert_eq!(p.minutes, vec![]);
        assert_eq!(p.hours, Some((t(10, 0, 0, 0), t(12, 0, 0, 0))));

        let p = plan_range(t(10, 0, 0, 0), t(10, 30, 0, 0));
        assert_eq!(
            (p.raw.len(), p.minutes.clone(), p.hours),
            (0, vec![(t(10, 0, 0, 0), t(10, 30, 0, 0))], None)
        );

        let p = plan_range(t(10, 0, 1, 0), t(10, 0, 2, 0));
        assert_eq!(p.raw, vec![(t(10, 0, 1, 0), t(10, 0, 2, 0))]);

        let p = plan_range(t(9, 10, 0, 0), t(11, 5, 0, 0));
        assert_eq!(
            p.minutes,
            vec![
                (t(9, 10, 0, 0), t(10, 0, 0, 0)),
                (t(11, 0, 0, 0), t(11, 5, 0, 0))
            ]
        );
        assert_eq!(p.hours, Some((t(10, 0, 0, 0), t(11, 0, 0, 0))));
        assert_eq!(
            plan_range(t(11, 0, 0, 0), t(10, 0, 0, 0)),
            RangePlan {
                raw: vec![],
                minutes: vec![],
                hours: None
            }
        );
    }

    #[test]
    fn units_round_trip_through_the_fixed_point_column() {
        for s in [
            "0",
            "1",
            "1.5",
            "0.000000001",
            "123456789012345678.123456789",
        ] {
            let d: Decimal = s.parse().unwrap();
            assert_eq!(
                fixed_to_units(units_to_fixed(d).unwrap()).unwrap(),
                d.normalize()
            );
        }
        assert!(units_to_fixed("0.0000000001".parse().unwrap()).is_err());
    }

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_string())
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(files, listed);
    }
}
