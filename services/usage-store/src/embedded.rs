//! Embedded usage store on SQLite (WAL, `synchronous = FULL`: an insert that returned survives
//! power loss, so the aggregator may commit its log position right after it).

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::DateTime;
use futures::TryStreamExt;
use peage_core::{meter::MeterAccumulator, CallEvent, Env, Meter, MeterUsage};
use rust_decimal::Decimal;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::{InsertOutcome, UsageQuery, UsageStore, UsageStoreError};

#[derive(Clone)]
pub struct SqliteUsageStore {
    pool: SqlitePool,
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
        Ok(SqliteUsageStore { pool })
    }

    /// Number of stored events of a partner (both environments), for operators and tests.
    pub async fn count_events(&self, partner_id: &str) -> Result<u64, UsageStoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_events WHERE partner_id = ?")
            .bind(partner_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
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
        attributes: Default::default(),
    })
}

#[async_trait]
impl UsageStore for SqliteUsageStore {
    async fn insert(&self, events: &[CallEvent]) -> Result<InsertOutcome, UsageStoreError> {
        let mut tx = self.pool.begin().await?;
        let mut outcome = InsertOutcome::default();
        for e in events {
            let attributes = serde_json::to_string(&e.attributes).unwrap_or_else(|_| "{}".into());
            let done = sqlx::query(
                "INSERT OR IGNORE INTO call_events (partner_id, id, time_us, key_id, env, api, version, operation, method, status, latency_us, request_bytes, response_bytes, units, gateway_id, attributes) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&e.partner_id)
            .bind(e.id.to_string())
            .bind(e.time_us())
            .bind(&e.key_id)
            .bind(e.env.as_str())
            .bind(&e.api)
            .bind(&e.version)
            .bind(&e.operation)
            .bind(&e.method)
            .bind(e.status as i64)
            .bind(e.latency_us as i64)
            .bind(e.request_bytes as i64)
            .bind(e.response_bytes as i64)
            .bind(e.units.normalize().to_string())
            .bind(&e.gateway_id)
            .bind(attributes)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                outcome.inserted += 1;
            } else {
                outcome.duplicates += 1;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn meter_usage(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<MeterUsage>, UsageStoreError> {
        let mut accs: Vec<MeterAccumulator> = meters.iter().map(Meter::accumulator).collect();
        let mut rows = sqlx::query(
            "SELECT partner_id, id, time_us, key_id, env, api, version, operation, method, status, latency_us, request_bytes, response_bytes, units, gateway_id \
             FROM call_events WHERE partner_id = ? AND env = ? AND time_us >= ? AND time_us < ?",
        )
        .bind(&query.partner_id)
        .bind(query.env.as_str())
        .bind(query.from.timestamp_micros())
        .bind(query.to.timestamp_micros())
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let event = row_to_event(&row)?;
            for a in &mut accs {
                a.add(&event);
            }
        }
        Ok(accs.into_iter().map(MeterAccumulator::finish).collect())
    }
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
        let u = store
            .meter_usage(&query("prt_a", Env::Live), &meters())
            .await
            .unwrap();
        assert_eq!(u[0].quantity, Decimal::from(2));
        // 0.1 + 0.2 is exactly 0.3 here: no float anywhere on the path.
        assert_eq!(u[1].quantity.to_string(), "0.3");
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
}
