//! Takes call events off the gateway's hot path: `emit` never waits on disk or network, and
//! never wakes another thread per call. Events go into one shared queue; a background task
//! takes the whole queue at a time and appends it to the log as one batch, retrying a failed
//! batch with backoff until it lands, so no event is dropped. The task is woken only by the
//! first event after it found the queue empty, never by each event. `flush` waits for
//! everything emitted before it.
//!
//! While calls keep coming, appends are at least [`GATHER`] apart: one `fdatasync` then
//! covers every call of those milliseconds, instead of a few calls each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peage_core::CallEvent;
use tokio::sync::{watch, Notify};

use crate::EventLog;

/// The most events appended as one batch.
const MAX_BATCH: usize = 20_000;
/// The least time between the starts of two appends while events keep coming.
const GATHER: Duration = Duration::from_millis(5);

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct EmitterStats {
    pub emitted: AtomicU64,
    pub persisted: AtomicU64,
    /// Events emitted while more than the queue's bound were waiting (kept all the same).
    pub backpressured: AtomicU64,
    pub append_failures: AtomicU64,
    /// Events emitted after the appender stopped; always logged as errors. Stays 0 in a clean
    /// run.
    pub lost_after_shutdown: AtomicU64,
}

type Queue = Mutex<Vec<CallEvent>>;

struct Shared {
    /// The shared queue, then one per [`LocalEmitter`]: threads that emit a lot do not
    /// contend for one lock.
    queues: Mutex<Vec<Arc<Queue>>>,
    /// Events queued beyond this are counted in `backpressured`.
    bound: usize,
    wake: Notify,
    /// Set when the appender task ends (its runtime shut down).
    closed: AtomicBool,
    stats: EmitterStats,
    /// Events appended so far, for `flush`.
    persisted: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct EventEmitter {
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    log: Arc<dyn EventLog>,
}

/// An emitter for one thread: the same as [`EventEmitter::emit`], into a queue of its own.
pub struct LocalEmitter {
    shared: Arc<Shared>,
    queue: Arc<Queue>,
}

impl LocalEmitter {
    pub fn emit(&self, event: CallEvent) {
        push(&self.shared, &self.queue, event);
    }
}

fn push(s: &Shared, queue: &Queue, event: CallEvent) {
    if s.closed.load(Ordering::Acquire) {
        s.stats.lost_after_shutdown.fetch_add(1, Ordering::Relaxed);
        tracing::error!(id = %event.id, "call event emitted after the event log closed: not recorded");
        return;
    }
    s.stats.emitted.fetch_add(1, Ordering::Relaxed);
    let len = {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push(event);
        q.len()
    };
    if len > s.bound {
        s.stats.backpressured.fetch_add(1, Ordering::Relaxed);
    }
    if len == 1 {
        // The appender may be waiting for an empty queue to fill.
        s.wake.notify_one();
    }
}

impl EventEmitter {
    /// Starts the background appender on the current tokio runtime. `queue`: events waiting
    /// beyond this many are counted as backpressure (none is dropped).
    pub fn start(log: Arc<dyn EventLog>, bound: usize) -> EventEmitter {
        let queue: Arc<Queue> = Arc::new(Mutex::new(Vec::with_capacity(1024)));
        let shared = Arc::new(Shared {
            queues: Mutex::new(vec![Arc::clone(&queue)]),
            bound: bound.max(1),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            stats: EmitterStats::default(),
            persisted: watch::channel(0).0,
        });
        tokio::spawn(run(Arc::clone(&log), Arc::clone(&shared)));
        EventEmitter { shared, queue, log }
    }

    /// An emitter with a queue of its own, for a thread that emits many events (a gateway's
    /// serving thread).
    pub fn local(&self) -> LocalEmitter {
        let queue: Arc<Queue> = Arc::new(Mutex::new(Vec::with_capacity(1024)));
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&queue));
        LocalEmitter {
            shared: Arc::clone(&self.shared),
            queue,
        }
    }

    /// Whether the log takes new events ([`EventLog::accepting`]).
    pub fn accepting(&self) -> bool {
        self.log.accepting()
    }

    pub fn stats(&self) -> &EmitterStats {
        &self.shared.stats
    }

    /// Queues an event; never blocks on I/O and never drops it.
    pub fn emit(&self, event: CallEvent) {
        push(&self.shared, &self.queue, event);
    }

    /// Returns once every event emitted before this call is in the log.
    pub async fn flush(&self) {
        let s = &self.shared;
        let target = s.stats.emitted.load(Ordering::Acquire);
        s.wake.notify_one();
        let mut rx = s.persisted.subscribe();
        let _ = rx
            .wait_for(|p| *p >= target || s.closed.load(Ordering::Acquire))
            .await;
    }
}

/// Marks the emitter closed when the appender task ends, however it ends.
struct ClosedOnDrop(Arc<Shared>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.persisted.send_modify(|_| {});
    }
}

async fn run(log: Arc<dyn EventLog>, shared: Arc<Shared>) {
    let _closed = ClosedOnDrop(Arc::clone(&shared));
    let mut batch: Vec<CallEvent> = Vec::with_capacity(1024);
    let mut appended = 0u64;
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        let queues: Vec<Arc<Queue>> = shared
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(at) = last_start {
            let queued: usize = queues.iter().map(|q| q.lock().map_or(0, |q| q.len())).sum();
            if queued > 0 && queued < MAX_BATCH {
                tokio::time::sleep_until(at + GATHER).await;
            }
        }
        for queue in &queues {
            let room = MAX_BATCH.saturating_sub(batch.len());
            if room == 0 {
                break;
            }
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if batch.is_empty() && q.len() <= room {
                std::mem::swap(&mut *q, &mut batch);
            } else {
                let n = q.len().min(room);
                batch.extend(q.drain(..n));
            }
        }
        if batch.is_empty() {
            last_start = None;
            shared.wake.notified().await;
            continue;
        }
        last_start = Some(tokio::time::Instant::now());
        let n = batch.len();
        let mut backoff = Duration::from_millis(10);
        loop {
            match log.append(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    shared.stats.append_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, events = n, retry_in_ms = backoff.as_millis() as u64, "event log append failed; retrying the batch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
        appended += n as u64;
        shared
            .stats
            .persisted
            .fetch_add(n as u64, Ordering::Relaxed);
        shared.persisted.send_replace(appended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventLogError, LogConsumer};
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A log that fails its first appends, to prove batches are retried, not dropped.
    struct Flaky {
        failures_left: Mutex<u32>,
        stored: Mutex<Vec<CallEvent>>,
    }

    #[async_trait]
    impl EventLog for Flaky {
        async fn append(&self, events: &[CallEvent]) -> Result<(), EventLogError> {
            let mut left = self.failures_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(EventLogError::Task("disk full".into()));
            }
            self.stored.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
        async fn consumer(&self, _: &str) -> Result<Box<dyn LogConsumer>, EventLogError> {
            unreachable!("not used")
        }
    }

    fn event(n: u64) -> CallEvent {
        let mut e: CallEvent = serde_json::from_str(include_str!(
            "../../../schemas/events/examples/rest_call.json"
        ))
        .unwrap();
        e.latency_us = n;
        e
    }

    #[tokio::test]
    async fn failed_appends_are_retried_until_every_event_lands_in_order() {
        let log = Arc::new(Flaky {
            failures_left: Mutex::new(3),
            stored: Mutex::new(vec![]),
        });
        // A tiny bound counts backpressure; nothing is dropped.
        let emitter = EventEmitter::start(log.clone(), 4);
        for i in 0..100 {
            emitter.emit(event(i));
        }
        emitter.flush().await;
        let stored = log.stored.lock().unwrap();
        assert_eq!(stored.len(), 100);
        let seen: Vec<u64> = stored.iter().map(|e| e.latency_us).collect();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(emitter.stats().backpressured.load(Ordering::Relaxed), 96);
        assert_eq!(emitter.stats().append_failures.load(Ordering::Relaxed), 3);
        assert_eq!(emitter.stats().persisted.load(Ordering::Relaxed), 100);
    }
}
