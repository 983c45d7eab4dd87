//! The event log between the gateway and the aggregator.
//!
//! `EventLog` is the seam: the embedded implementation ([`embedded::EmbeddedLog`]) is a durable
//! local log; a Kafka implementation plugs in behind the same trait. Records are the JSON bytes
//! of a `CallEvent`, so the consumer decides what a malformed record means (dead letter), never
//! the log.

pub mod embedded;
pub mod emitter;
pub mod kafka;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use peage_core::CallEvent;

pub use embedded::{EmbeddedLog, LogOptions};
pub use emitter::{EmitterStats, EventEmitter, LocalEmitter};

/// Makes the calling thread `niceness` steps nicer. Linux keeps a CPU priority per thread and
/// the threads a thread starts inherit it, so background work (the Kafka forwarder and the
/// librdkafka threads it creates, the log's sync thread, `peage up`'s aggregator) yields to the
/// gateway's serving threads when the CPU is contended, and still gets the idle time. Best
/// effort: elsewhere, or if refused, the thread keeps its priority.
pub fn lower_this_threads_priority(niceness: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, getpriority and setpriority take no pointers and act on this thread.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, now.saturating_add(niceness))
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = niceness;
}

/// How much nicer than the serving threads the forwarder and the log's sync thread run.
pub(crate) const BACKGROUND_NICENESS: i32 = 5;

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
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("event log task failed: {0}")]
    Task(String),
}

/// One record read from the log, with the position it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub partition: u32,
    pub offset: u64,
    pub payload: Bytes,
    /// The producer may have written this record before (a re-send after an unclear delivery);
    /// the consumer checks its id against what it already stored.
    pub possible_duplicate: bool,
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends events; when this returns `Ok`, they survive a crash of this process (the
    /// implementation documents its exact durability guarantee).
    async fn append(&self, events: &[CallEvent]) -> Result<(), EventLogError>;

    /// A consumer that resumes from the group's last committed position.
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, EventLogError>;

    /// False while the log refuses new events (a full spool under `fail_closed`): the gateway
    /// then answers 503 instead of serving calls it could not meter.
    fn accepting(&self) -> bool {
        true
    }
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

    /// The log's name for the records' source (the Kafka topic), stored with each event.
    fn topic(&self) -> &str {
        "embedded"
    }

    /// Changes whenever the partitions this consumer owns may have changed (a rebalance);
    /// positions learnt before are stale then.
    fn assignment_epoch(&self) -> u64 {
        0
    }
}

/// A record the consumer could not use, kept with the reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    /// The original bytes (in the JSON-lines file: as text, lossy for non-UTF-8 bytes).
    #[serde(serialize_with = "lossy_text")]
    pub payload: Bytes,
}

fn lossy_text<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// Where dead letters go: a file in embedded mode, a topic on Kafka. Durable when `send`
/// returns, so the consumer may commit past them.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), EventLogError>;
}

/// A record's bytes: the event's JSON wire form.
pub(crate) fn encode(event: &CallEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    event.write_json(&mut out);
    out
}
