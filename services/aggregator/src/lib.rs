//! The aggregator: reads call events from the log, writes them to the usage store, and only
//! then commits its log position.
//!
//! Why this is exactly once: the store ignores an event it already holds (`(partner_id, id)`),
//! so a crash between the insert and the commit replays a batch that changes nothing. A crash
//! before the insert replays a batch that was never written. Nothing is claimed before the
//! write is durable (the failure OpenMeter #5118 shows). A record that is not a valid event
//! goes to the dead letters with the reason, and the partition moves on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peage_core::CallEvent;
use peage_eventlog::{EventLogError, LogConsumer, LogRecord};
use peage_usage_store::{UsageStore, UsageStoreError};
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error(transparent)]
    Log(#[from] EventLogError),
    #[error("dead letter file {path}: {source}")]
    DeadLetter {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
pub struct AggregatorStats {
    pub inserted: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub store_failures: AtomicU64,
    pub batches: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub max_batch: usize,
    pub poll_wait: Duration,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_batch: 5_000,
            poll_wait: Duration::from_millis(100),
        }
    }
}

/// A record the aggregator could not use, kept with the reason.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    /// The payload as text (lossy for non-UTF-8 bytes).
    pub payload: std::borrow::Cow<'a, str>,
}

/// Embedded dead letters: one JSON object per line, fsynced before the position is committed.
pub struct DeadLetterFile {
    path: PathBuf,
}

impl DeadLetterFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetterFile { path: path.into() }
    }

    fn write(&self, letters: &[DeadLetter<'_>]) -> Result<(), AggregatorError> {
        let err = |source| AggregatorError::DeadLetter {
            path: self.path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        let mut buf = Vec::new();
        for l in letters {
            serde_json::to_writer(&mut buf, l).map_err(|e| err(e.into()))?;
            buf.push(b'\n');
        }
        f.write_all(&buf).and_then(|()| f.sync_data()).map_err(err)
    }
}

pub struct Aggregator {
    consumer: Box<dyn LogConsumer>,
    store: Arc<dyn UsageStore>,
    dead_letters: DeadLetterFile,
    config: AggregatorConfig,
    stats: Arc<AggregatorStats>,
}

impl Aggregator {
    pub fn new(
        consumer: Box<dyn LogConsumer>,
        store: Arc<dyn UsageStore>,
        dead_letters: DeadLetterFile,
        config: AggregatorConfig,
    ) -> Self {
        Aggregator {
            consumer,
            store,
            dead_letters,
            config,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<AggregatorStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `stop` turns true, then drains what is already in the log and returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), AggregatorError> {
        loop {
            let stopping = *stop.borrow();
            let records = tokio::select! {
                r = self.consumer.poll(self.config.max_batch, self.config.poll_wait) => r?,
                _ = stop.changed(), if !stopping => continue,
            };
            if records.is_empty() {
                if stopping && self.consumer.lag().await? == 0 {
                    tracing::info!("aggregator: log drained, stopping");
                    return Ok(());
                }
                continue;
            }
            self.process(&records).await?;
        }
    }

    /// Insert, then commit: the order that makes a crash at any point safe.
    async fn process(&mut self, records: &[LogRecord]) -> Result<(), AggregatorError> {
        let mut events = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        for r in records {
            match serde_json::from_slice::<CallEvent>(&r.payload) {
                Ok(e) => events.push(e),
                Err(e) => dead.push(DeadLetter {
                    partition: r.partition,
                    offset: r.offset,
                    reason: format!("not a CallEvent v1: {e}"),
                    payload: String::from_utf8_lossy(&r.payload),
                }),
            }
        }
        if !dead.is_empty() {
            self.dead_letters.write(&dead)?;
            self.stats
                .dead_lettered
                .fetch_add(dead.len() as u64, Ordering::Relaxed);
            tracing::warn!(count = dead.len(), first_offset = dead[0].offset, reason = %dead[0].reason, "aggregator: records sent to dead letters");
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.store.insert(&events).await {
                Ok(outcome) => {
                    self.stats
                        .inserted
                        .fetch_add(outcome.inserted, Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(outcome.duplicates, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    if outcome.duplicates > 0 {
                        tracing::info!(
                            duplicates = outcome.duplicates,
                            "aggregator: ignored events already stored (replay after a restart)"
                        );
                    }
                    break;
                }
                Err(e) => self.store_failed(e, &mut backoff).await,
            }
        }
        self.consumer.commit(records).await?;
        Ok(())
    }

    async fn store_failed(&self, e: UsageStoreError, backoff: &mut Duration) {
        self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "aggregator: usage store insert failed; retrying the batch");
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peage_core::{meter::Aggregation, meter::MeterField, Env, Meter};
    use peage_eventlog::{EmbeddedLog, EventLog};
    use peage_usage_store::{SqliteUsageStore, UsageQuery};
    use std::fs::OpenOptions;

    fn event(n: u64) -> CallEvent {
        let mut e: CallEvent = serde_json::from_str(include_str!(
            "../../../schemas/events/examples/rest_call.json"
        ))
        .unwrap();
        e.id = uuid::Uuid::now_v7();
        e.time = peage_core::event::truncate_to_micros(chrono::Utc::now());
        e.latency_us = n;
        e
    }

    async fn count(store: &SqliteUsageStore) -> rust_decimal::Decimal {
        let meter = Meter {
            name: "calls".into(),
            aggregation: Aggregation::Count,
            field: MeterField::Calls,
            scale: None,
            filter: Default::default(),
            group_by: vec![],
        };
        let q = UsageQuery {
            partner_id: "prt_4f1c2a9e0b7d3c5e8a61".into(),
            env: Env::Live,
            from: chrono::Utc::now() - chrono::Duration::hours(1),
            to: chrono::Utc::now() + chrono::Duration::hours(1),
        };
        store.meter_usage(&q, &[meter]).await.unwrap()[0].quantity
    }

    #[tokio::test]
    async fn a_replay_after_an_uncommitted_batch_counts_nothing_twice_and_bad_records_go_to_dead_letters(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).unwrap();
        let store = Arc::new(
            SqliteUsageStore::open(&dir.path().join("usage.db"))
                .await
                .unwrap(),
        );
        let events: Vec<_> = (0..100).map(event).collect();
        log.append(&events[..50]).await.unwrap();
        // Crash simulation: the batch reaches the store but the position is never committed.
        store.insert(&events[..50]).await.unwrap();
        // A record that is not an event, written straight into the segment.
        {
            let seg = dir.path().join("log").join(format!("{:020}.log", 0));
            let payload = b"{\"not\":\"an event\"}";
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32fast_hash(payload).to_le_bytes());
            frame.extend_from_slice(payload);
            OpenOptions::new()
                .append(true)
                .open(&seg)
                .unwrap()
                .write_all(&frame)
                .unwrap();
        }
        drop(log);
        let log = EmbeddedLog::open(dir.path().join("log")).unwrap();
        log.append(&events[50..]).await.unwrap();

        let agg = Aggregator::new(
            log.consumer("aggregator").await.unwrap(),
            store.clone(),
            DeadLetterFile::new(dir.path().join("dead.jsonl")),
            AggregatorConfig {
                max_batch: 17,
                poll_wait: Duration::from_millis(20),
            },
        );
        let stats = agg.stats();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(agg.run(stop));
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();

        assert_eq!(count(&store).await, rust_decimal::Decimal::from(100));
        assert_eq!(stats.inserted.load(Ordering::Relaxed), 50);
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 50);
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
        let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
        assert!(
            dead.contains("\"offset\":50") && dead.contains("not a CallEvent"),
            "{dead}"
        );
        let mut c = log.consumer("aggregator").await.unwrap();
        assert_eq!(c.lag().await.unwrap(), 0, "everything committed");
        assert!(c
            .poll(10, Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty());
    }

    fn crc32fast_hash(b: &[u8]) -> u32 {
        // The log's framing checksum (CRC-32/ISO-HDLC), computed bitwise so this test does not
        // borrow the log's own code.
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in b {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
