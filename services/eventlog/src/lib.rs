//! The event log between the gateway and the aggregator.
//!
//! `EventLog` is the seam: the embedded implementation ([`embedded::EmbeddedLog`]) is a durable
//! local log; a Kafka implementation plugs in behind the same trait. Records are the JSON bytes
//! of a `CallEvent`, so the consumer decides what a malformed record means (dead letter), never
//! the log.

pub mod embedded;
pub mod emitter;
pub mod kafka;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// The log takes no more records for now (a full spool); the caller retries later.
    #[error("event log full: {0}")]
    Full(String),
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

    /// The claim on what the last `poll` returned: check it before writing those records
    /// anywhere ([`Lease::holds_for`]). A log with a single consumer always holds it.
    fn lease(&self) -> Lease {
        Lease::always()
    }

    /// What is left of `wait` since this member was last given partitions: how long it still
    /// holds off reading where the store stands (for a previous owner that died mid-write).
    fn settle_remaining(&self, _wait: Duration) -> Duration {
        Duration::ZERO
    }

    /// Forgets everything read since the last commit and resumes from the committed
    /// positions (on Kafka: a fresh group member). Called after a batch was abandoned because
    /// its lease ran out.
    async fn restart(&mut self) -> Result<(), EventLogError> {
        Ok(())
    }
}

/// Ownership of a batch of records, taken when the batch is read.
///
/// On Kafka a member owns its partitions until a rebalance revokes them, or until it has not
/// polled for `max.poll.interval.ms` and the group expels it. A batch may be written to the
/// store only while that ownership provably lasts until the write's deadline: otherwise the
/// partition's next owner could read the store's position before the write lands and store
/// the batch a second time (docs/exactly-once.md, "Rebalances").
#[derive(Clone, Debug)]
pub struct Lease {
    claim: Option<(Arc<Membership>, u64)>,
}

/// What a group member knows about its own standing, shared with its rebalance callbacks.
#[derive(Debug)]
pub struct Membership {
    /// Bumped when partitions are revoked (before the revocation completes) and when they are
    /// assigned.
    pub epoch: AtomicU64,
    origin: std::time::Instant,
    /// Milliseconds after `origin` of the last poll.
    last_poll_ms: AtomicU64,
    /// Milliseconds after `origin` of the last assignment.
    assigned_ms: AtomicU64,
    /// Time without a poll after which the group expels the member, less the heartbeat
    /// interval (a rebalance may start up to one heartbeat before the member hears of it).
    expel_after: Duration,
    /// Woken at every epoch change, so a write in flight can be cancelled at once.
    changed: tokio::sync::Notify,
    /// The partitions held now; `None` until the group first assigns (readiness).
    partitions: std::sync::Mutex<Option<Vec<i32>>>,
    /// Records behind the end of each (topic, partition) held, from the client's statistics.
    lag: std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>,
}

impl Membership {
    pub fn new(max_poll_interval: Duration, heartbeat_interval: Duration) -> Membership {
        Membership {
            epoch: AtomicU64::new(0),
            origin: std::time::Instant::now(),
            last_poll_ms: AtomicU64::new(0),
            assigned_ms: AtomicU64::new(0),
            expel_after: max_poll_interval.saturating_sub(heartbeat_interval),
            changed: tokio::sync::Notify::new(),
            partitions: Default::default(),
            lag: Default::default(),
        }
    }

    /// Records the partitions the group gave this member (empty after a revocation).
    pub fn hold(&self, partitions: Vec<i32>) {
        if let Ok(mut p) = self.partitions.lock() {
            *p = Some(partitions);
        }
    }

    /// The partitions held now, or `None` before the group first assigned any.
    pub fn partitions(&self) -> Option<Vec<i32>> {
        self.partitions.lock().ok().and_then(|p| p.clone())
    }

    /// Replaces the lag per (topic, partition).
    pub fn set_lag(&self, lag: std::collections::BTreeMap<(String, i32), i64>) {
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
    }

    /// Updates the lag of the partitions in `lag`, keeping the others' last value, and
    /// forgets partitions no longer held.
    pub fn update_lag(&self, lag: std::collections::BTreeMap<(String, i32), i64>) {
        let held = self.partitions();
        if let Ok(mut l) = self.lag.lock() {
            l.extend(lag);
            if let Some(held) = held {
                l.retain(|(_, p), _| held.contains(p));
            }
        }
    }

    /// Records behind the end, per (topic, partition) held, as last reported.
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        self.lag
            .lock()
            .map(|l| l.iter().map(|((t, p), n)| (t.clone(), *p, *n)).collect())
            .unwrap_or_default()
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn polled(&self) {
        self.last_poll_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    pub fn assigned(&self) {
        self.assigned_ms.store(self.now_ms(), Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Called before partitions are given up: every lease taken before ends here, and the
    /// writes waiting on [`Lease::lost`] are woken to cancel themselves.
    pub fn revoked(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub fn lease(self: &Arc<Self>) -> Lease {
        Lease {
            claim: Some((Arc::clone(self), self.epoch.load(Ordering::SeqCst))),
        }
    }

    /// What is left of `wait` since the last assignment.
    pub fn settle_remaining(&self, wait: Duration) -> Duration {
        let since = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.assigned_ms.load(Ordering::SeqCst)),
        );
        wait.saturating_sub(since)
    }
}

impl Lease {
    pub fn always() -> Lease {
        Lease { claim: None }
    }

    /// Completes when a rebalance ends the lease (never for [`Lease::always`]). A write
    /// selects on it and drops its request: ClickHouse writes nothing of a request whose body
    /// it did not receive whole, so the partitions' next owner, assigned only after the
    /// revocation, cannot race it.
    pub async fn lost(&self) {
        let Some((m, _)) = &self.claim else {
            return std::future::pending().await;
        };
        loop {
            let notified = m.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.rebalanced() {
                return;
            }
            notified.await;
        }
    }

    /// True if a rebalance happened since the batch was read: the consumer then already
    /// resumes its new assignment from the committed offsets.
    pub fn rebalanced(&self) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|(m, epoch)| m.epoch.load(Ordering::SeqCst) != *epoch)
    }

    /// True if no rebalance happened since the batch was read and the member cannot be
    /// expelled for a late poll within `ahead` (the deadline of the write about to start).
    pub fn holds_for(&self, ahead: Duration) -> bool {
        let Some((m, _)) = &self.claim else {
            return true;
        };
        if self.rebalanced() {
            return false;
        }
        let idle = Duration::from_millis(
            m.now_ms()
                .saturating_sub(m.last_poll_ms.load(Ordering::SeqCst)),
        );
        idle + ahead < m.expel_after
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

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn a_lease_ends_with_a_rebalance_or_when_the_member_would_be_expelled_before_the_deadline() {
        let m = Arc::new(Membership::new(
            Duration::from_millis(400),
            Duration::from_millis(100),
        ));
        m.polled();
        let lease = m.lease();
        assert!(lease.holds_for(Duration::from_millis(100)));
        // Polled 0 ms ago, expelled after 300 ms: a 350 ms write could outlive the claim.
        assert!(!lease.holds_for(Duration::from_millis(350)));
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            !lease.holds_for(Duration::from_millis(100)),
            "idle too long"
        );
        m.polled();
        assert!(
            lease.holds_for(Duration::from_millis(100)),
            "a poll renews it"
        );
        assert!(!lease.rebalanced());
        let waiting = lease.clone();
        let woken = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), waiting.lost())
                        .await
                        .is_ok()
                })
        });
        std::thread::sleep(Duration::from_millis(50));
        m.revoked();
        assert!(
            woken.join().unwrap(),
            "a revocation wakes the write in flight"
        );
        assert!(!lease.holds_for(Duration::ZERO), "a revocation ends it");
        assert!(lease.rebalanced());
        assert!(
            m.lease().holds_for(Duration::ZERO),
            "a new lease after it holds"
        );
        assert!(Lease::always().holds_for(Duration::from_secs(3600)));
        m.assigned();
        assert!(m.settle_remaining(Duration::from_millis(200)) > Duration::from_millis(100));
        assert_eq!(m.settle_remaining(Duration::ZERO), Duration::ZERO);
    }
}
