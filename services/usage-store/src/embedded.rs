//! Embedded usage store on SQLite (WAL, `synchronous = FULL`: an insert that returned survives
//! power loss, so the aggregator may commit its log position right after it).
//!
//! Raw events, plus hourly rollups written in the same transaction: additive meters read the
//! rollups for whole hours and raw events only for the edges of a range that is not on the hour,
//! so a quota check or a month's usage costs hours, not calls.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use peage_core::meter::{
    combine, evaluate_usage_events, merge_event_meters, MeterAccumulator, RollupRow, Span,
};
use peage_core::{CallEvent, Env, Meter, MeterUsage, UsageEvent};
use rust_decimal::Decimal;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::clickhouse::{ceil_to, floor_to};
use crate::key_filter::KeyFilter;
use crate::{
    series_range, EventTypeSeen, InsertOutcome, LoggedUsageEvent, MeterSeries, UsageKey,
    UsageQuery, UsageStore, UsageStoreError,
};

#[derive(Clone)]
pub struct SqliteUsageStore {
    pool: SqlitePool,
    /// The usage-event keys this database may hold, shared by every store of the process on
    /// the same file (key_filter.rs).
    usage_keys: Arc<KeyFilter>,
}

impl SqliteUsageStore {
    pub async fn open(path: &Path) -> Result<SqliteUsageStore, UsageStoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../../schemas/sql/sqlite/usage")
            .run(&pool)
            .await?;
        let store = SqliteUsageStore {
            pool,
            usage_keys: KeyFilter::of_file(path),
        };
        store.backfill_rollups().await?;
        Ok(store)
    }

    /// Number of stored events of a partner (both environments), for operators and tests.
    pub async fn count_events(&self, partner_id: &str) -> Result<u64, UsageStoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_events WHERE partner_id = ?")
            .bind(partner_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// A data directory written before the rollups existed: sum its raw events once.
    async fn backfill_rollups(&self) -> Result<(), UsageStoreError> {
        let has_rollups: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM call_rollups_hour)")
                .fetch_one(&self.pool)
                .await?;
        let has_events: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM call_events)")
            .fetch_one(&self.pool)
            .await?;
        if has_rollups || !has_events {
            return Ok(());
        }
        tracing::info!("usage store: summing existing events into hourly rollups (once)");
        let mut sums: HashMap<RollupKey, RollupRow> = HashMap::new();
        let mut rows = sqlx::query(ALL_EVENTS).fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let e = row_to_event(&row)?;
            if !RollupRow::holds(&e) {
                continue;
            }
            match sums.entry(RollupKey::of(&e)) {
                Entry::Occupied(mut r) => r.get_mut().add(&e),
                Entry::Vacant(v) => {
                    v.insert(RollupRow::of(&e));
                }
            }
        }
        drop(rows);
        let mut tx = self.pool.begin().await?;
        add_to_rollups(&mut tx, sums).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Raw events of the query's partner and env in `[from, to)` (µs), each as a one-call
    /// rollup row.
    async fn raw_rows(
        &self,
        query: &UsageQuery,
        from: i64,
        to: i64,
        out: &mut Vec<RollupRow>,
    ) -> Result<(), UsageStoreError> {
        if from >= to {
            return Ok(());
        }
        let mut rows = sqlx::query(EVENTS_IN_RANGE)
            .bind(&query.partner_id)
            .bind(query.env.as_str())
            .bind(from)
            .bind(to)
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let e = row_to_event(&row)?;
            if RollupRow::holds(&e) {
                out.push(RollupRow::of(&e));
            }
        }
        Ok(())
    }

    /// Rollup rows covering `[from, to)`: hourly rollups for the whole hours, raw events for
    /// the edges.
    async fn rollup_rows(&self, query: &UsageQuery) -> Result<Vec<RollupRow>, UsageStoreError> {
        let hour = chrono::TimeDelta::hours(1);
        let (from, to) = (query.from.timestamp_micros(), query.to.timestamp_micros());
        let first_hour = ceil_to(query.from, hour).timestamp_micros();
        let end_hour = floor_to(query.to, hour).timestamp_micros();
        let mut out = Vec::new();
        if first_hour >= end_hour {
            self.raw_rows(query, from, to, &mut out).await?;
            return Ok(out);
        }
        self.raw_rows(query, from, first_hour, &mut out).await?;
        self.raw_rows(query, end_hour, to, &mut out).await?;
        let sql = format!(
            "SELECT {HOUR_ROLLUP_COLUMNS} FROM call_rollups_hour \
             WHERE partner_id = ? AND env = ? AND hour_us >= ? AND hour_us < ?"
        );
        let mut rows = sqlx::query(&sql)
            .bind(&query.partner_id)
            .bind(query.env.as_str())
            .bind(first_hour)
            .bind(end_hour)
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            out.push(hour_rollup(&row, &query.partner_id)?);
        }
        Ok(out)
    }
}

/// A row of `call_rollups_hour` (the columns of [`HOUR_ROLLUP_COLUMNS`]).
fn hour_rollup(row: &sqlx::sqlite::SqliteRow, partner: &str) -> Result<RollupRow, UsageStoreError> {
    let units: String = row.try_get("units")?;
    Ok(RollupRow {
        api: row.try_get("api")?,
        version: row.try_get("version")?,
        operation: row.try_get("operation")?,
        method: row.try_get("method")?,
        status: row.try_get::<i64, _>("status")? as u16,
        calls: row.try_get::<i64, _>("calls")? as u64,
        units: sum_units(&units).map_err(|e| UsageStoreError::Corrupt {
            id: format!("rollup of {partner}"),
            reason: format!("units {units:?}: {e}"),
        })?,
        request_bytes: row.try_get::<i64, _>("request_bytes")? as u64,
        response_bytes: row.try_get::<i64, _>("response_bytes")? as u64,
        latency_us: row.try_get::<i64, _>("latency_us")? as u64,
    })
}

/// Units of one rollup row, or of several joined by spaces (summed in SQL by group_concat).
fn sum_units(text: &str) -> Result<Decimal, rust_decimal::Error> {
    text.split(' ').try_fold(Decimal::ZERO, |sum, u| {
        sum.checked_add(Decimal::from_str(u)?)
            .ok_or(rust_decimal::Error::ExceedsMaximumPossibleValue)
    })
}

const HOUR_ROLLUP_COLUMNS: &str =
    "api, version, operation, method, status, calls, units, request_bytes, response_bytes, latency_us";

/// 16 parameters a row: 100 rows stay far below SQLite's 32,766 bound parameters.
const ROWS_PER_INSERT: usize = 100;

macro_rules! select_events {
    ($where:literal) => {
        concat!(
            "SELECT partner_id, id, time_us, key_id, env, api, version, operation, method, status, \
             latency_us, request_bytes, response_bytes, units, gateway_id, attributes FROM call_events",
            $where
        )
    };
}

const ALL_EVENTS: &str = select_events!("");

/// A partner's events of one env in `[from, to)` (µs).
const EVENTS_IN_RANGE: &str =
    select_events!(" WHERE partner_id = ? AND env = ? AND time_us >= ? AND time_us < ?");

#[derive(PartialEq, Eq, Hash)]
struct RollupKey {
    partner_id: String,
    env: &'static str,
    hour_us: i64,
    api: String,
    version: String,
    operation: String,
    method: String,
    status: u16,
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

impl RollupKey {
    /// Binds the key's columns, in the table's key order, as the query's next parameters.
    fn bind<'q>(&'q self, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
        query
            .bind(&self.partner_id)
            .bind(self.env)
            .bind(self.hour_us)
            .bind(&self.api)
            .bind(&self.version)
            .bind(&self.operation)
            .bind(&self.method)
            .bind(self.status as i64)
    }

    fn of(e: &CallEvent) -> RollupKey {
        RollupKey {
            partner_id: e.partner_id.clone(),
            env: e.env.as_str(),
            hour_us: floor_to(e.time, chrono::TimeDelta::hours(1)).timestamp_micros(),
            api: e.api.clone(),
            version: e.version.clone(),
            operation: e.operation.clone(),
            method: e.method.clone(),
            status: e.status,
        }
    }
}

/// Adds `sums` to the stored rollups, exactly (units as decimals, in Rust).
async fn add_to_rollups(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    sums: HashMap<RollupKey, RollupRow>,
) -> Result<(), UsageStoreError> {
    for (k, s) in sums {
        let prior: Option<String> = k
            .bind(sqlx::query(
                "SELECT units FROM call_rollups_hour WHERE partner_id = ? AND env = ? AND hour_us = ? \
                 AND api = ? AND version = ? AND operation = ? AND method = ? AND status = ?",
            ))
            .fetch_optional(&mut **tx)
            .await?
            .map(|row| row.try_get("units"))
            .transpose()?;
        let prior = match prior {
            Some(p) => Decimal::from_str(&p).map_err(|e| UsageStoreError::Corrupt {
                id: format!("rollup of {}", k.partner_id),
                reason: format!("units {p:?}: {e}"),
            })?,
            None => Decimal::ZERO,
        };
        k.bind(sqlx::query(
            "INSERT INTO call_rollups_hour (partner_id, env, hour_us, api, version, operation, method, status, \
             calls, units, request_bytes, response_bytes, latency_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (partner_id, env, hour_us, api, version, operation, method, status) DO UPDATE SET \
             calls = calls + excluded.calls, units = excluded.units, request_bytes = request_bytes + excluded.request_bytes, \
             response_bytes = response_bytes + excluded.response_bytes, latency_us = latency_us + excluded.latency_us",
        ))
        .bind(s.calls as i64)
        .bind((prior + s.units).normalize().to_string())
        .bind(s.request_bytes as i64)
        .bind(s.response_bytes as i64)
        .bind(s.latency_us as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn row_to_event(row: &sqlx::sqlite::SqliteRow) -> Result<CallEvent, UsageStoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |reason: String| UsageStoreError::Corrupt {
        id: id.clone(),
        reason,
    };
    let time_us: i64 = row.try_get("time_us")?;
    let units: String = row.try_get("units")?;
    let env: String = row.try_get("env")?;
    Ok(CallEvent {
        id: uuid::Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?,
        time: DateTime::from_timestamp_micros(time_us)
            .ok_or_else(|| corrupt(format!("time {time_us}")))?,
        partner_id: row.try_get("partner_id")?,
        key_id: row.try_get("key_id")?,
        env: Env::parse(&env).ok_or_else(|| corrupt(format!("env {env:?}")))?,
        api: row.try_get("api")?,
        version: row.try_get("version")?,
        operation: row.try_get("operation")?,
        method: row.try_get("method")?,
        status: row.try_get::<i64, _>("status")? as u16,
        latency_us: row.try_get::<i64, _>("latency_us")? as u64,
        request_bytes: row.try_get::<i64, _>("request_bytes")? as u64,
        response_bytes: row.try_get::<i64, _>("response_bytes")? as u64,
        units: Decimal::from_str(&units).map_err(|e| corrupt(format!("units {units:?}: {e}")))?,
        gateway_id: row.try_get("gateway_id")?,
        // Meters read `refusal` from here (peage_core::meter::Refusals).
        attributes: {
            let text: String = row.try_get("attributes")?;
            serde_json::from_str(&text).map_err(|e| corrupt(format!("attributes: {e}")))?
        },
    })
}

#[async_trait]
impl UsageStore for SqliteUsageStore {
    async fn insert(&self, events: &[CallEvent]) -> Result<InsertOutcome, UsageStoreError> {
        let mut tx = self.pool.begin().await?;
        let mut outcome = InsertOutcome::default();
        let mut sums: HashMap<RollupKey, RollupRow> = HashMap::new();
        // Many rows per statement (each statement is a round trip to SQLite's thread);
        // RETURNING names the rows actually inserted, so duplicates add nothing to rollups.
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT OR IGNORE INTO call_events (partner_id, id, time_us, key_id, env, api, version, operation, method, status, latency_us, request_bytes, response_bytes, units, gateway_id, attributes) ",
            );
            q.push_values(chunk, |mut row, e| {
                let attributes =
                    serde_json::to_string(&e.attributes).unwrap_or_else(|_| "{}".into());
                row.push_bind(e.partner_id.clone())
                    .push_bind(e.id.to_string())
                    .push_bind(e.time_us())
                    .push_bind(e.key_id.clone())
                    .push_bind(e.env.as_str())
                    .push_bind(e.api.clone())
                    .push_bind(e.version.clone())
                    .push_bind(e.operation.clone())
                    .push_bind(e.method.clone())
                    .push_bind(e.status as i64)
                    .push_bind(e.latency_us as i64)
                    .push_bind(e.request_bytes as i64)
                    .push_bind(e.response_bytes as i64)
                    .push_bind(e.units.normalize().to_string())
                    .push_bind(e.gateway_id.clone())
                    .push_bind(attributes);
            });
            q.push(" RETURNING partner_id, id");
            let mut inserted: std::collections::HashSet<(String, String)> = q
                .build_query_as::<(String, String)>()
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
            for e in chunk {
                // Removed on first sight: the same id twice in one batch counts once.
                if inserted.remove(&(e.partner_id.clone(), e.id.to_string())) {
                    outcome.inserted += 1;
                    if !RollupRow::holds(e) {
                        continue;
                    }
                    match sums.entry(RollupKey::of(e)) {
                        Entry::Occupied(mut r) => r.get_mut().add(e),
                        Entry::Vacant(v) => {
                            v.insert(RollupRow::of(e));
                        }
                    }
                } else {
                    outcome.duplicates += 1;
                }
            }
        }
        add_to_rollups(&mut tx, sums).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn meter_usage(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<MeterUsage>, UsageStoreError> {
        let rollups = if meters.iter().any(Meter::rollup_compatible) {
            self.rollup_rows(query).await?
        } else {
            Vec::new()
        };
        let mut raw: Vec<MeterAccumulator> = meters
            .iter()
            .filter(|m| !m.rollup_compatible())
            .map(Meter::accumulator)
            .collect();
        // Meters of usage events need no call events (they read none: see below).
        if meters
            .iter()
            .any(|m| !m.rollup_compatible() && m.events.is_none())
        {
            let mut rows = sqlx::query(EVENTS_IN_RANGE)
                .bind(&query.partner_id)
                .bind(query.env.as_str())
                .bind(query.from.timestamp_micros())
                .bind(query.to.timestamp_micros())
                .fetch(&self.pool);
            while let Some(row) = rows.try_next().await? {
                let event = row_to_event(&row)?;
                for a in &mut raw {
                    a.add(&event);
                }
            }
        }
        let calls = combine(
            meters,
            &rollups,
            raw.into_iter().map(MeterAccumulator::finish),
        );
        if !meters.iter().any(|m| m.events.is_some()) {
            return Ok(calls);
        }
        let events = self.usage_events_in(query, meters).await?;
        let span = Span::as_of(query.from, query.to, Utc::now());
        Ok(merge_event_meters(
            meters,
            calls,
            evaluate_usage_events(meters, &events, span),
        ))
    }

    async fn event_amounts(
        &self,
        query: &UsageQuery,
        meter: &Meter,
    ) -> Result<Vec<Decimal>, UsageStoreError> {
        let events = self
            .usage_events_in(query, std::slice::from_ref(meter))
            .await?;
        Ok(peage_core::meter::event_amounts(
            meter,
            &events,
            Span::new(query.from, query.to),
        ))
    }

    async fn event_meter_series(
        &self,
        partner_id: &str,
        meter: &Meter,
        edges: &[DateTime<Utc>],
    ) -> Result<MeterSeries, UsageStoreError> {
        let Some(query) = series_range(partner_id, edges) else {
            return Ok(MeterSeries {
                values: Vec::new(),
                total: Decimal::ZERO,
            });
        };
        // Read once: the buckets and the total come from the same events.
        let events = self
            .usage_events_in(&query, std::slice::from_ref(meter))
            .await?;
        let now = Utc::now();
        Ok(MeterSeries {
            values: peage_core::series::event_meter_buckets(meter, &events, edges, now),
            total: peage_core::series::event_meter_quantity(
                meter,
                &events,
                Span::as_of(query.from, query.to, now),
            ),
        })
    }

    async fn keys_last_used(
        &self,
        partner_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, UsageStoreError> {
        let rows = sqlx::query(
            "SELECT key_id, max(time_us) AS last_us FROM call_events \
             WHERE partner_id = ? AND env IN ('live', 'sandbox') AND time_us >= ? \
             GROUP BY key_id ORDER BY key_id",
        )
        .bind(partner_id)
        .bind(since.timestamp_micros())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let us: i64 = r.try_get("last_us")?;
                let at = DateTime::from_timestamp_micros(us).ok_or_else(|| {
                    UsageStoreError::Corrupt {
                        id: "keys last used".into(),
                        reason: format!("last call time {us}"),
                    }
                })?;
                Ok((r.try_get("key_id")?, at))
            })
            .collect()
    }

    async fn refused_calls(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<crate::RefusedCalls>, UsageStoreError> {
        let rows = sqlx::query(
            "SELECT json_extract(attributes, '$.refusal') AS refusal, status, count(*) AS calls              FROM call_events WHERE partner_id = ? AND env = ? AND time_us >= ? AND time_us < ?              AND json_extract(attributes, '$.refusal') IS NOT NULL              GROUP BY refusal, status ORDER BY calls DESC, refusal, status",
        )
        .bind(&query.partner_id)
        .bind(query.env.as_str())
        .bind(query.from.timestamp_micros())
        .bind(query.to.timestamp_micros())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::RefusedCalls {
                    refusal: r.try_get("refusal")?,
                    status: r.try_get::<i64, _>("status")?.clamp(0, 999) as u16,
                    calls: r.try_get::<i64, _>("calls")?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn usage_event_types(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<EventTypeSeen>, UsageStoreError> {
        if query.env != Env::Live {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT type, count(*) AS events, max(time_us) AS last_us FROM usage_events \
             WHERE partner_id = ? AND time_us >= ? AND time_us < ? AND type NOT LIKE 'peage.%' \
             GROUP BY type ORDER BY type",
        )
        .bind(&query.partner_id)
        .bind(query.from.timestamp_micros())
        .bind(query.to.timestamp_micros())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                EventTypeSeen::from_row(
                    r.try_get("type")?,
                    r.try_get::<i64, _>("events")?.max(0) as u64,
                    r.try_get("last_us")?,
                )
            })
            .collect()
    }

    async fn insert_usage_events(
        &self,
        _topic: &str,
        events: &[LoggedUsageEvent],
    ) -> Result<InsertOutcome, UsageStoreError> {
        // Into the filter before any of them can be committed (key_filter.rs).
        self.usage_keys.add(events.iter().map(|l| l.event.key));
        let mut tx = self.pool.begin().await?;
        let mut outcome = InsertOutcome::default();
        for chunk in events.chunks(USAGE_ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT OR IGNORE INTO usage_events (partner_id, key, id, source, type, subject, time_us, digest, cloudevent) ",
            );
            q.push_values(chunk, |mut row, l| {
                let e = &l.event;
                row.push_bind(e.partner_id.as_str())
                    .push_bind(e.key.as_bytes().as_slice())
                    .push_bind(e.id.as_str())
                    .push_bind(e.source.as_str())
                    .push_bind(e.event_type.as_str())
                    .push_bind(e.subject.as_str())
                    .push_bind(e.time_us())
                    .push_bind(e.digest.as_str())
                    .push_bind(e.cloudevent.get());
            });
            q.push(" RETURNING key");
            let inserted = q.build().fetch_all(&mut *tx).await?.len() as u64;
            outcome.inserted += inserted;
            outcome.duplicates += chunk.len() as u64 - inserted;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn stored_usage_event(
        &self,
        partner_id: &str,
        key: uuid::Uuid,
    ) -> Result<Option<UsageEvent>, UsageStoreError> {
        let row = sqlx::query(
            "SELECT partner_id, key, id, source, type, subject, time_us, digest, cloudevent \
             FROM usage_events WHERE key = ? AND partner_id = ?",
        )
        .bind(key.as_bytes().as_slice())
        .bind(partner_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_usage_event).transpose()
    }

    async fn stored_usage_digests(
        &self,
        keys: &[UsageKey],
    ) -> Result<HashMap<UsageKey, String>, UsageStoreError> {
        // By partner: one bind per key, not two; only the keys the filter cannot rule out.
        let mut by_partner = crate::keys_by_partner(keys);
        if let Some(filter) = self.usage_keys.when_filled(&self.pool) {
            for keys in by_partner.values_mut() {
                keys.retain(|key| filter.may_hold(key));
            }
        }
        let mut out = HashMap::new();
        for (partner, keys) in by_partner {
            for chunk in keys.chunks(USAGE_ROWS_PER_INSERT) {
                let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "SELECT key, digest FROM usage_events WHERE partner_id = ",
                );
                q.push_bind(partner).push(" AND key IN (");
                let mut list = q.separated(", ");
                for key in chunk {
                    list.push_bind(key.as_bytes().as_slice());
                }
                q.push(")");
                let rows: Vec<(Vec<u8>, String)> = q.build_query_as().fetch_all(&self.pool).await?;
                for (key, digest) in rows {
                    out.insert((partner.to_string(), key_of_bytes(&key)?), digest);
                }
            }
        }
        Ok(out)
    }

    async fn erase_partner_events(&self, partner_id: &str) -> Result<(), UsageStoreError> {
        let mut tx = self.pool.begin().await?;
        for table in ["call_events", "usage_events"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE partner_id = ?"))
                .bind(partner_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn drop_raw_call_months(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<u32>, UsageStoreError> {
        crate::month_start(before)?;
        let cutoff = before.timestamp_micros();
        let months: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT strftime('%Y%m', time_us / 1000000, 'unixepoch') AS month \
             FROM call_events WHERE time_us < ? ORDER BY month",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        // A month at a time, so the writer (the aggregator) is never held up for long.
        for m in &months {
            let month: u32 = m.parse().unwrap_or(0);
            let start = chrono::NaiveDate::from_ymd_opt((month / 100) as i32, month % 100, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp_micros())
                .unwrap_or(i64::MIN);
            sqlx::query("DELETE FROM call_events WHERE time_us >= ? AND time_us < ?")
                .bind(start)
                .bind(cutoff)
                .execute(&self.pool)
                .await?;
        }
        // Before the first month (times before 1970 cannot be partitioned by month either).
        sqlx::query("DELETE FROM call_events WHERE time_us < ?")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        months
            .iter()
            .map(|m| {
                m.parse().map_err(|_| UsageStoreError::Corrupt {
                    id: "retention".into(),
                    reason: format!("month {m}"),
                })
            })
            .collect()
    }

    async fn hourly_rollups(
        &self,
        query: &UsageQuery,
    ) -> Result<Vec<(DateTime<Utc>, RollupRow)>, UsageStoreError> {
        let (first, end) = crate::overlapping_hours(query.from, query.to);
        let sql = format!(
            "SELECT hour_us, {HOUR_ROLLUP_COLUMNS} FROM call_rollups_hour \
             WHERE partner_id = ? AND env = ? AND hour_us >= ? AND hour_us < ? ORDER BY hour_us"
        );
        let mut rows = sqlx::query(&sql)
            .bind(&query.partner_id)
            .bind(query.env.as_str())
            .bind(first.timestamp_micros())
            .bind(end.timestamp_micros())
            .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let us: i64 = row.try_get("hour_us")?;
            let hour =
                DateTime::from_timestamp_micros(us).ok_or_else(|| UsageStoreError::Corrupt {
                    id: format!("rollup of {}", query.partner_id),
                    reason: format!("hour {us} out of range"),
                })?;
            out.push((hour, hour_rollup(&row, &query.partner_id)?));
        }
        Ok(out)
    }

    /// One read of the hour rollups for every partner when the range is whole hours and every
    /// meter reads rollups (an invoice run over calendar periods); else partner by partner.
    async fn meter_usage_many(
        &self,
        partners: &[String],
        env: Env,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        meters: &[Meter],
    ) -> Result<HashMap<String, Vec<MeterUsage>>, UsageStoreError> {
        let hour = chrono::TimeDelta::hours(1);
        let whole_hours = ceil_to(from, hour) == from && floor_to(to, hour) == to && from < to;
        if !whole_hours || !meters.iter().all(Meter::rollup_compatible) {
            return crate::meter_usage_each(self, partners, env, from, to, meters).await;
        }
        // Summed in SQL over the range, so a month reads one row per partner and dimensions,
        // not one per hour; units are exact decimal text, so they are joined and added here.
        // A few partners (a page of finance's list) are looked up by the primary key; many (an
        // invoice run) read the range for everyone and keep theirs.
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT partner_id, api, version, operation, method, status, SUM(calls) AS calls, \
             group_concat(units, ' ') AS units, SUM(request_bytes) AS request_bytes, \
             SUM(response_bytes) AS response_bytes, SUM(latency_us) AS latency_us \
             FROM call_rollups_hour WHERE env = ",
        );
        q.push_bind(env.as_str())
            .push(" AND hour_us >= ")
            .push_bind(from.timestamp_micros())
            .push(" AND hour_us < ")
            .push_bind(to.timestamp_micros());
        if partners.len() <= FEW_PARTNERS {
            q.push(" AND partner_id IN (");
            let mut list = q.separated(", ");
            for p in partners {
                list.push_bind(p.as_str());
            }
            q.push(")");
        }
        q.push(" GROUP BY partner_id, api, version, operation, method, status");
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let partner: String = row.try_get("partner_id")?;
            let r = hour_rollup(row, &partner)?;
            out.push((partner, r));
        }
        Ok(crate::usage_per_partner(partners, out, meters))
    }
}

/// 9 parameters a row.
const USAGE_ROWS_PER_INSERT: usize = 500;

/// Up to this many partners, usage of several is read by their keys, not for everyone.
const FEW_PARTNERS: usize = 500;

impl SqliteUsageStore {
    /// The query's usage events of the types `meters` read (none for the sandbox), and the
    /// earlier ones too when a meter carries over ([`Meter::carries_over`]): the embedded store
    /// keeps little enough history to hand it all to peage_core, which picks what carries in.
    async fn usage_events_in(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<UsageEvent>, UsageStoreError> {
        let types: std::collections::BTreeSet<&str> = meters
            .iter()
            .filter_map(|m| m.events.as_ref().map(|s| s.event_type.as_str()))
            .collect();
        if query.env != Env::Live || types.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT partner_id, key, id, source, type, subject, time_us, digest, cloudevent \
             FROM usage_events WHERE partner_id = ",
        );
        let from = if meters.iter().any(Meter::carries_over) {
            i64::MIN
        } else {
            query.from.timestamp_micros()
        };
        q.push_bind(query.partner_id.clone())
            .push(" AND time_us >= ")
            .push_bind(from)
            .push(" AND time_us < ")
            .push_bind(query.to.timestamp_micros())
            .push(" AND type IN (");
        let mut list = q.separated(", ");
        for t in types {
            list.push_bind(t.to_string());
        }
        q.push(")");
        // Cancelled events are left out: a cancellation record names their key (as text; the
        // column holds its bytes). A NULL in the list would make NOT IN leave out every event.
        q.push(
            " AND key NOT IN (SELECT cancelled FROM (SELECT \
             unhex(replace(json_extract(cloudevent, '$.data.cancels'), '-', '')) AS cancelled \
             FROM usage_events WHERE partner_id = ",
        )
        .push_bind(query.partner_id.clone())
        .push(" AND type = ")
        .push_bind(peage_core::usage_event::CANCELLATION_TYPE)
        .push(") WHERE cancelled IS NOT NULL)");
        let mut rows = q.build().fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            out.push(row_to_usage_event(&row)?);
        }
        Ok(out)
    }
}

/// A stored key: its 16 bytes (migration 0005).
pub(crate) fn key_of_bytes(bytes: &[u8]) -> Result<uuid::Uuid, UsageStoreError> {
    uuid::Uuid::from_slice(bytes).map_err(|e| UsageStoreError::Corrupt {
        id: format!("key {bytes:02x?}"),
        reason: e.to_string(),
    })
}

fn row_to_usage_event(row: &sqlx::sqlite::SqliteRow) -> Result<UsageEvent, UsageStoreError> {
    let key = key_of_bytes(row.try_get::<&[u8], _>("key")?)?;
    let corrupt = |reason: String| UsageStoreError::Corrupt {
        id: key.to_string(),
        reason,
    };
    let time_us: i64 = row.try_get("time_us")?;
    let cloudevent: String = row.try_get("cloudevent")?;
    Ok(UsageEvent {
        key,
        partner_id: row.try_get("partner_id")?,
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        event_type: row.try_get("type")?,
        subject: row.try_get("subject")?,
        time: DateTime::from_timestamp_micros(time_us)
            .ok_or_else(|| corrupt(format!("time_us {time_us}")))?,
        digest: row.try_get("digest")?,
        cloudevent: serde_json::value::RawValue::from_string(cloudevent)
            .map_err(|e| corrupt(format!("cloudevent: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use peage_core::meter::{Aggregation, MeterField};

    fn event(partner: &str, secs: i64, units: &str, env: Env) -> CallEvent {
        let mut e: CallEvent = serde_json::from_str(include_str!(
            "../../../schemas/events/examples/rest_call.json"
        ))
        .unwrap();
        e.id = uuid::Uuid::now_v7();
        e.partner_id = partner.into();
        e.time = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
            + Duration::seconds(secs)
            + Duration::microseconds(7);
        e.units = Decimal::from_str(units).unwrap();
        e.env = env;
        e
    }

    fn meters() -> Vec<Meter> {
        let m = |name: &str, aggregation, field| Meter {
            name: name.into(),
            aggregation,
            field,
            scale: None,
            filter: Default::default(),
            group_by: vec![],
            refusals: Default::default(),
            events: None,
        };
        vec![
            m("calls", Aggregation::Count, MeterField::Calls),
            m("units", Aggregation::Sum, MeterField::Units),
        ]
    }

    fn query(partner: &str, env: Env) -> UsageQuery {
        UsageQuery {
            partner_id: partner.into(),
            env,
            from: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            to: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn refused_calls_are_kept_raw_out_of_rollups_and_meters_that_do_not_ask() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteUsageStore::open(&dir.path().join("usage.db"))
            .await
            .unwrap();
        let served = event("prt_a", 60, "1", Env::Live);
        let mut refused = event("prt_a", 120, "0", Env::Live);
        refused.status = 429;
        refused
            .attributes
            .insert(peage_core::event::REFUSAL.into(), "rate-limited".into());
        store.insert(&[served, refused]).await.unwrap();
        let mut ms = meters();
        let mut refusals = ms[0].clone();
        refusals.name = "refused_calls".into();
        refusals.refusals = peage_core::meter::Refusals::Only;
        ms.push(refusals);
        let u = store
            .meter_usage(&query("prt_a", Env::Live), &ms)
            .await
            .unwrap();
        assert_eq!(u[0].quantity, Decimal::ONE, "calls leave the refusal out");
        assert_eq!(u[2].quantity, Decimal::ONE, "refused_calls count it");
        let hours = store
            .hourly_rollups(&query("prt_a", Env::Live))
            .await
            .unwrap();
        let rolled: u64 = hours.iter().map(|(_, r)| r.calls).sum();
        assert_eq!(rolled, 1, "rollups hold the served call only");
    }

    #[tokio::test]
    async fn duplicates_are_ignored_and_usage_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteUsageStore::open(&dir.path().join("usage.db"))
            .await
            .unwrap();
        let a = event("prt_a", 1, "0.1", Env::Live);
        let b = event("prt_a", 2, "0.2", Env::Live);
        assert_eq!(
            store.insert(&[a.clone(), b.clone()]).await.unwrap(),
            InsertOutcome {
                inserted: 2,
                duplicates: 0
            }
        );
        // A replay of the same batch, as after a crash before the log commit.
        assert_eq!(
            store.insert(&[a.clone(), b]).await.unwrap(),
            InsertOutcome {
                inserted: 0,
                duplicates: 2
            }
        );
        // The same event id under another partner is another event.
        let mut other = a.clone();
        other.partner_id = "prt_b".into();
        assert_eq!(store.insert(&[other]).await.unwrap().inserted, 1);
        // The same id twice in one batch is one event.
        let c = event("prt_a", 3, "0.4", Env::Live);
        assert_eq!(
            store.insert(&[c.clone(), c]).await.unwrap(),
            InsertOutcome {
                inserted: 1,
                duplicates: 1
            }
        );
        let u = store
            .meter_usage(&query("prt_a", Env::Live), &meters())
            .await
            .unwrap();
        assert_eq!(u[0].quantity, Decimal::from(3));
        // 0.1 + 0.2 + 0.4 is exactly 0.7 here: no float anywhere on the path.
        assert_eq!(u[1].quantity.to_string(), "0.7");
    }

    #[tokio::test]
    async fn usage_of_many_partners_at_once_equals_partner_by_partner() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteUsageStore::open(&dir.path().join("usage.db"))
            .await
            .unwrap();
        let events: Vec<CallEvent> = (0..500)
            .map(|i| {
                event(
                    if i % 3 == 0 { "prt_b" } else { "prt_a" },
                    i * 4001,
                    "1.5",
                    Env::Live,
                )
            })
            .chain([event("prt_a", 50, "7", Env::Sandbox)])
            .collect();
        store.insert(&events).await.unwrap();
        let partners: Vec<String> = ["prt_a", "prt_b", "prt_none"].map(String::from).to_vec();
        let q = query("prt_a", Env::Live);
        // Whole hours (one query) and a range that is not (partner by partner).
        for (from, to) in [(q.from, q.to), (q.from + Duration::seconds(1), q.to)] {
            let many = store
                .meter_usage_many(&partners, Env::Live, from, to, &meters())
                .await
                .unwrap();
            let each = crate::meter_usage_each(&store, &partners, Env::Live, from, to, &meters())
                .await
                .unwrap();
            assert_eq!(many, each);
            assert_eq!(many["prt_none"][0].quantity, Decimal::ZERO);
            assert!(many["prt_b"][0].quantity > Decimal::ZERO);
        }
        // Past FEW_PARTNERS the range is read for everyone and each keeps its own: the same.
        let mut big = partners.clone();
        big.extend((0..FEW_PARTNERS).map(|i| format!("prt_x{i}")));
        let many = store
            .meter_usage_many(&big, Env::Live, q.from, q.to, &meters())
            .await
            .unwrap();
        let few = store
            .meter_usage_many(&partners, Env::Live, q.from, q.to, &meters())
            .await
            .unwrap();
        for p in &partners {
            assert_eq!(many[p], few[p], "{p}");
        }
        assert_eq!(many.len(), big.len());
    }

    #[tokio::test]
    async fn range_is_half_open_and_env_and_partner_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteUsageStore::open(&dir.path().join("usage.db"))
            .await
            .unwrap();
        let mut before = event("prt_a", -1, "1", Env::Live);
        before.time = Utc.with_ymd_and_hms(2026, 10, 31, 23, 59, 59).unwrap();
        let mut at_end = event("prt_a", 0, "1", Env::Live);
        at_end.time = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let inside = event("prt_a", 5, "1", Env::Live);
        let sandbox = event("prt_a", 6, "1", Env::Sandbox);
        let elsewhere = event("prt_b", 7, "1", Env::Live);
        store
            .insert(&[before, at_end, inside, sandbox, elsewhere])
            .await
            .unwrap();
        assert_eq!(
            store
                .meter_usage(&query("prt_a", Env::Live), &meters())
                .await
                .unwrap()[0]
                .quantity,
            Decimal::ONE
        );
        assert_eq!(
            store
                .meter_usage(&query("prt_a", Env::Sandbox), &meters())
                .await
                .unwrap()[0]
                .quantity,
            Decimal::ONE
        );
        assert_eq!(store.count_events("prt_a").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn events_survive_reopening_with_microsecond_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let e = event("prt_a", 3, "2.5", Env::Live);
        {
            let store = SqliteUsageStore::open(&path).await.unwrap();
            store.insert(std::slice::from_ref(&e)).await.unwrap();
        }
        let store = SqliteUsageStore::open(&path).await.unwrap();
        let mut q = query("prt_a", Env::Live);
        q.from = e.time;
        q.to = e.time + Duration::microseconds(1);
        assert_eq!(
            store.meter_usage(&q, &meters()).await.unwrap()[1]
                .quantity
                .to_string(),
            "2.5"
        );
    }

    fn usage_event(partner: &str, id: &str, tokens: u32) -> UsageEvent {
        let raw = serde_json::value::RawValue::from_string(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/llm","type":"com.example.llm","subject":"{partner}","time":"2026-11-02T10:00:00Z","data":{{"tokens":{tokens}}}}}"#
        ))
        .unwrap();
        let window = peage_core::usage_event::TimeWindow {
            backfill: Duration::days(3650),
            ahead: Duration::minutes(5),
        };
        peage_core::usage_event::parse_cloud_event(&raw)
            .unwrap()
            .into_usage_event(partner, Utc::now(), &window)
            .unwrap()
    }

    /// A usage event's row, written with plain SQL (not through the store); its key as text
    /// for a schema from before migration 0005.
    async fn insert_row(pool: &SqlitePool, e: &UsageEvent, key_as_text: bool) {
        let q = sqlx::query(
            "INSERT INTO usage_events (partner_id, key, id, source, type, subject, time_us, digest, cloudevent) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.partner_id);
        let q = if key_as_text {
            q.bind(e.key.to_string())
        } else {
            q.bind(e.key.as_bytes().to_vec())
        };
        q.bind(&e.id)
            .bind(&e.source)
            .bind(&e.event_type)
            .bind(&e.subject)
            .bind(e.time_us())
            .bind(&e.digest)
            .bind(e.cloudevent.get())
            .execute(pool)
            .await
            .unwrap();
    }

    /// A data directory from before migration 0004 (usage events in a table ordered by key)
    /// keeps its events, and their keys still deduplicate.
    #[tokio::test]
    async fn usage_events_of_an_old_data_directory_move_to_arrival_order_and_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let old = usage_event("prt_a", "e-1", 40);
        {
            let pool = SqlitePoolOptions::new()
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            let mut before = sqlx::migrate!("../../schemas/sql/sqlite/usage");
            before.migrations = std::borrow::Cow::Owned(
                before
                    .migrations
                    .iter()
                    .filter(|m| m.version <= 3)
                    .cloned()
                    .collect(),
            );
            before.run(&pool).await.unwrap();
            insert_row(&pool, &old, true).await;
            pool.close().await;
        }
        let store = SqliteUsageStore::open(&path).await.unwrap();
        assert_eq!(
            store.stored_usage_event("prt_a", old.key).await.unwrap(),
            Some(old.clone())
        );
        let fresh = usage_event("prt_a", "e-2", 2);
        let logged = |e: &UsageEvent, offset| crate::Logged {
            partition: 0,
            offset,
            event: e.clone(),
        };
        let outcome = store
            .insert_usage_events("usage", &[logged(&old, 0), logged(&fresh, 1)])
            .await
            .unwrap();
        assert_eq!((outcome.inserted, outcome.duplicates), (1, 1));
        let digests = store
            .stored_usage_digests(&[
                ("prt_a".to_string(), old.key),
                ("prt_a".to_string(), fresh.key),
            ])
            .await
            .unwrap();
        assert_eq!(digests.len(), 2);
        assert_eq!(digests[&("prt_a".to_string(), old.key)], old.digest);
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN SELECT key, digest FROM usage_events WHERE partner_id = ? AND key IN (?, ?)",
        )
        .bind("prt_a")
        .bind(old.key.as_bytes().to_vec())
        .bind(fresh.key.as_bytes().to_vec())
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.3.contains("USING INDEX usage_events_by_key")),
            "{plan:?}"
        );
    }

    /// The duplicate look-ups of usage events ask the key filter first (key_filter.rs): once
    /// filled it answers "not stored" alone, every store of the process on the same file shares
    /// it, and a reopened database fills a new one from the events it holds.
    #[tokio::test]
    async fn usage_key_look_ups_trust_the_shared_key_filter_once_it_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let logged = |e: &UsageEvent| crate::Logged {
            partition: 0,
            offset: 0,
            event: e.clone(),
        };
        let key = |e: &UsageEvent| (e.partner_id.clone(), e.key);
        let stored = |store: &SqliteUsageStore, events: &[&UsageEvent]| {
            let (store, keys) = (
                store.clone(),
                events.iter().map(|e| key(e)).collect::<Vec<_>>(),
            );
            async move {
                let mut found: Vec<String> = store
                    .stored_usage_digests(&keys)
                    .await
                    .unwrap()
                    .into_keys()
                    .map(|(_, k)| k.to_string())
                    .collect();
                found.sort();
                found
            }
        };
        let filled = |store: &SqliteUsageStore| {
            let filter = Arc::clone(&store.usage_keys);
            async move {
                for _ in 0..500 {
                    if filter.is_filled() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("the key filter was not filled within 5 s");
            }
        };
        let sorted = |events: &[&UsageEvent]| {
            let mut keys: Vec<String> = events.iter().map(|e| e.key.to_string()).collect();
            keys.sort();
            keys
        };
        let [e1, e2, e3, e4] = ["e-1", "e-2", "e-3", "e-4"].map(|id| usage_event("prt_a", id, 1));

        let a = SqliteUsageStore::open(&path).await.unwrap();
        a.insert_usage_events("usage", &[logged(&e1)])
            .await
            .unwrap();
        let b = SqliteUsageStore::open(&path).await.unwrap();
        assert!(Arc::ptr_eq(&a.usage_keys, &b.usage_keys));
        // Before the filter is filled, the database answers (and the first look-up starts
        // the fill).
        assert_eq!(stored(&b, &[&e1, &e3]).await, sorted(&[&e1]));
        filled(&b).await;
        assert_eq!(stored(&b, &[&e1, &e3]).await, sorted(&[&e1]));
        // What one store inserts, the other's look-ups find.
        b.insert_usage_events("usage", &[logged(&e2)])
            .await
            .unwrap();
        assert_eq!(stored(&a, &[&e1, &e2, &e3]).await, sorted(&[&e1, &e2]));
        // A row written behind the stores' backs is not looked for: the filter, filled, is
        // trusted (only `peage up`, holding the data directory, writes usage events).
        insert_row(&a.pool, &e4, false).await;
        assert_eq!(stored(&a, &[&e4]).await, Vec::<String>::new());
        // Reopened, the database fills a new filter from what it holds.
        drop((a, b));
        let c = SqliteUsageStore::open(&path).await.unwrap();
        assert_eq!(stored(&c, &[&e4]).await, sorted(&[&e4]));
        filled(&c).await;
        assert_eq!(
            stored(&c, &[&e1, &e2, &e3, &e4]).await,
            sorted(&[&e1, &e2, &e4])
        );
    }

    /// Meters over rollups plus raw edges equal the same meters over the raw events, for
    /// ranges on and off the hour, and after a backfill of an old data directory.
    #[tokio::test]
    async fn rollups_and_raw_edges_equal_the_raw_events_over_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = SqliteUsageStore::open(&path).await.unwrap();
        let mut events = Vec::new();
        for i in 0..400i64 {
            // Three and a bit hours, two operations, three statuses, units with decimals.
            let mut e = event(
                "prt_a",
                i * 31 + (i % 7),
                &format!("{}.{}", i % 4, i % 10),
                Env::Live,
            );
            e.operation = if i % 3 == 0 {
                "GET /a".into()
            } else {
                "POST /b".into()
            };
            e.status = [200, 404, 503][(i % 5 % 3) as usize];
            e.latency_us = (i * 37 % 1000) as u64;
            events.push(e);
        }
        // Inserted in batches, each batch again (duplicates must not add to the rollups).
        for batch in events.chunks(64) {
            store.insert(batch).await.unwrap();
            store.insert(batch).await.unwrap();
        }
        let m = |name: &str, aggregation, field, group: bool| Meter {
            name: name.into(),
            aggregation,
            field,
            scale: None,
            filter: if group {
                [(
                    peage_core::meter::Dimension::StatusClass,
                    ["2xx".to_string(), "4xx".to_string()].into(),
                )]
                .into()
            } else {
                Default::default()
            },
            group_by: if group {
                vec![peage_core::meter::Dimension::Operation]
            } else {
                vec![]
            },
            refusals: Default::default(),
            events: None,
        };
        let meters = vec![
            m("calls", Aggregation::Count, MeterField::Calls, false),
            m("units_ok", Aggregation::Sum, MeterField::Units, true),
            m("latency", Aggregation::Sum, MeterField::LatencyMs, false),
            m("slowest", Aggregation::Max, MeterField::LatencyMs, false),
        ];
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let ranges = [
            (Duration::zero(), Duration::hours(24)),
            (Duration::minutes(17), Duration::minutes(150)),
            (Duration::minutes(61), Duration::minutes(62)),
            (Duration::hours(1), Duration::hours(3)),
            (Duration::seconds(-5), Duration::seconds(3601)),
        ];
        let check = |store: SqliteUsageStore| {
            let (events, meters) = (events.clone(), meters.clone());
            async move {
                for (from, to) in ranges {
                    let mut q = query("prt_a", Env::Live);
                    (q.from, q.to) = (start + from, start + to);
                    let inside: Vec<&CallEvent> = events
                        .iter()
                        .filter(|e| e.time >= q.from && e.time < q.to)
                        .collect();
                    assert_eq!(
                        store.meter_usage(&q, &meters).await.unwrap(),
                        peage_core::meter::evaluate(&meters, inside),
                        "{from} .. {to}"
                    );
                }
            }
        };
        check(store.clone()).await;
        // An old data directory: raw events and no rollups. Opening it sums them once.
        sqlx::query("DELETE FROM call_rollups_hour")
            .execute(&store.pool)
            .await
            .unwrap();
        drop(store);
        check(SqliteUsageStore::open(&path).await.unwrap()).await;
    }
}
