//! The usage store: where the aggregator writes call events and where billing, quotas and
//! dashboards read usage from. `UsageStore` is the seam; [`embedded::SqliteUsageStore`] runs
//! in `peage up`, a ClickHouse implementation plugs in behind the same trait.
//!
//! Both keep the same dedup rule: an event is identified by `(partner_id, id)`, and inserting it
//! again changes nothing, so replaying the log after a crash never counts a call twice.

pub mod embedded;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::{CallEvent, Env, Meter, MeterUsage};

pub use embedded::SqliteUsageStore;

#[derive(Debug, thiserror::Error)]
pub enum UsageStoreError {
    #[error("usage store database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("usage store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored event {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
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

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Stores events, ignoring ones already stored. Durable when it returns.
    async fn insert(&self, events: &[CallEvent]) -> Result<InsertOutcome, UsageStoreError>;

    /// Evaluates `meters` over the query's events; one result per meter, in order.
    async fn meter_usage(
        &self,
        query: &UsageQuery,
        meters: &[Meter],
    ) -> Result<Vec<MeterUsage>, UsageStoreError>;
}
