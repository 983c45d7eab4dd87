//! The event log between the gateway and the aggregator.
//!
//! `EventLog` is the seam: the embedded implementation ([`embedded::EmbeddedLog`]) is a durable
//! local log; a Kafka implementation plugs in behind the same trait. Records are the JSON bytes
//! of a `CallEvent`, so the consumer decides what a malformed record means (dead letter), never
//! the log.

pub mod embedded;
pub mod emitter;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use peage_core::CallEvent;

pub use embedded::EmbeddedLog;
pub use emitter::{EmitterStats, EventEmitter};

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event log at {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("cannot encode event {id}: {source}")]
    Encode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("consumer group name {0:?} must be 1–64 characters of a–z, 0–9, '-', '_'")]
    BadGroup(String),
    #[error("event log task failed: {0}")]
    Task(String),
}

/// One record read from the log, with the position it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub partition: u32,
    pub offset: u64,
    pub payload: Bytes,
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends events; when this returns `Ok`, they survive a crash of this process (the
    /// implementation documents its exact durability guarantee).
    async fn append(&self, events: &[CallEvent]) -> Result<(), EventLogError>;

    /// A consumer that resumes from the group's last committed position.
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, EventLogError>;
}

#[async_trait]
pub trait LogConsumer: Send + Sync {
    /// Up to `max` records after the last one returned, waiting up to `wait` for the first.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, EventLogError>;

    /// Durably records that every record up to and including these has been processed; a
    /// restarted consumer of the same group resumes after them.
    async fn commit(&mut self, records: &[LogRecord]) -> Result<(), EventLogError>;

    /// Records appended but not yet committed by this group (for progress and shutdown).
    async fn lag(&self) -> Result<u64, EventLogError>;
}

pub(crate) fn encode(event: &CallEvent) -> Result<Vec<u8>, EventLogError> {
    serde_json::to_vec(event).map_err(|source| EventLogError::Encode {
        id: event.id.to_string(),
        source,
    })
}
