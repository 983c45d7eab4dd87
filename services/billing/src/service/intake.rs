//! Where the events API's accepted events go, and its limits: what [`super::Billing`] holds
//! once the events API is turned on.

use std::sync::Arc;

use async_trait::async_trait;
use peage_core::usage_event::TimeWindow;
use peage_core::UsageEvent;
use peage_usage_store::UsageKey;

/// Where accepted usage events go: the event log (the embedded log in `peage up`, the spool
/// to Kafka in distributed mode). `Ok` means durable.
#[async_trait]
pub trait UsageEventSink: Send + Sync + 'static {
    async fn append(&self, events: &[UsageEvent]) -> Result<(), SinkRefused>;
}

/// Why the log did not take events: the caller answers 503 and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkRefused(pub String);

/// The events API's settings and where its events go.
pub struct EventsIntake {
    pub sink: Arc<dyn UsageEventSink>,
    pub window: TimeWindow,
    /// The most events one request may carry.
    pub max_events: usize,
    /// The most bytes one request body may have.
    pub max_bytes: usize,
    /// What this instance knows of the stored keys without asking the usage store (the
    /// distributed control API's key filter); `None` asks the store for every key.
    pub known_keys: Option<Arc<dyn KnownKeys>>,
}

/// Which usage-event keys may be stored, known without asking the usage store: the billing
/// role's filter of every key the usage topic carried (docs/events.md, "Durable, and counted
/// once"). It may answer "maybe" for a key never stored, never "no" for one it has seen.
pub trait KnownKeys: Send + Sync + 'static {
    /// Keeps of `keys` only those that may be stored; leaves them all while it cannot tell.
    fn keep_maybe_stored(&self, keys: &mut Vec<UsageKey>);
    /// Records keys about to be appended: once stored, they are never answered "not stored" by
    /// this instance, however far behind its reading of the log is.
    fn appending(&self, keys: &mut dyn Iterator<Item = uuid::Uuid>);
}

/// The hard bound on a request body; `events.max_batch_bytes` is checked against it.
pub const MAX_BODY_BYTES: usize = 16 << 20;
