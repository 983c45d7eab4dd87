//! Takes call events off the gateway's hot path: `emit` never waits on disk or network. A
//! background task batches events and appends them to the log, retrying a failed batch with
//! backoff until it lands, so no event is dropped. `flush` waits for everything emitted before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peage_core::CallEvent;
use tokio::sync::{mpsc, oneshot};

use crate::EventLog;

const MAX_BATCH: usize = 2_000;

enum Msg {
    Event(Box<CallEvent>),
    Flush(oneshot::Sender<()>),
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct EmitterStats {
    pub emitted: AtomicU64,
    pub persisted: AtomicU64,
    /// Times the queue was full and an event waited in a spawned task instead.
    pub backpressured: AtomicU64,
    pub append_failures: AtomicU64,
    /// Events emitted after shutdown; always logged as errors. Stays 0 in a clean run.
    pub lost_after_shutdown: AtomicU64,
}

#[derive(Clone)]
pub struct EventEmitter {
    tx: mpsc::Sender<Msg>,
    stats: Arc<EmitterStats>,
    log: Arc<dyn EventLog>,
}

impl EventEmitter {
    /// Starts the background appender on the current tokio runtime.
    pub fn start(log: Arc<dyn EventLog>, queue: usize) -> EventEmitter {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(EmitterStats::default());
        tokio::spawn(run(Arc::clone(&log), rx, Arc::clone(&stats)));
        EventEmitter { tx, stats, log }
    }

    /// Whether the log takes new events ([`EventLog::accepting`]).
    pub fn accepting(&self) -> bool {
        self.log.accepting()
    }

    pub fn stats(&self) -> &EmitterStats {
        &self.stats
    }

    /// Queues an event; never blocks. When the queue is full the event waits in its own task
    /// (counted in `backpressured`) rather than slowing the caller or being dropped.
    pub fn emit(&self, event: CallEvent) {
        self.stats.emitted.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.stats.backpressured.fetch_add(1, Ordering::Relaxed);
                let tx = self.tx.clone();
                let stats = Arc::clone(&self.stats);
                tokio::spawn(async move {
                    if tx.send(msg).await.is_err() {
                        lost(&stats);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => lost(&self.stats),
        }
    }

    /// Returns once every event emitted before this call is in the log.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn lost(stats: &EmitterStats) {
    stats.lost_after_shutdown.fetch_add(1, Ordering::Relaxed);
    tracing::error!("call event emitted after the event log closed: not recorded");
}

async fn run(log: Arc<dyn EventLog>, mut rx: mpsc::Receiver<Msg>, stats: Arc<EmitterStats>) {
    let mut batch: Vec<CallEvent> = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Group commit: take whatever else is already queued, up to a batch.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(*e),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let mut backoff = Duration::from_millis(10);
        while !batch.is_empty() {
            match log.append(&batch).await {
                Ok(()) => {
                    stats
                        .persisted
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                }
                Err(e) => {
                    stats.append_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, events = batch.len(), retry_in_ms = backoff.as_millis() as u64, "event log append failed; retrying the batch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
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
        // A tiny queue forces the backpressure path too.
        let emitter = EventEmitter::start(log.clone(), 4);
        for i in 0..100 {
            emitter.emit(event(i));
        }
        emitter.flush().await;
        // Events that went through the backpressure path may arrive after the flush marker.
        for _ in 0..100 {
            if log.stored.lock().unwrap().len() == 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            emitter.flush().await;
        }
        let stored = log.stored.lock().unwrap();
        assert_eq!(stored.len(), 100);
        let mut seen: Vec<u64> = stored.iter().map(|e| e.latency_us).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(emitter.stats().append_failures.load(Ordering::Relaxed), 3);
        assert_eq!(emitter.stats().persisted.load(Ordering::Relaxed), 100);
    }
}
