//! The aggregator: reads events from the log, writes them to the usage store, and only then
//! commits its log position. One runs per topic: call events ([`Aggregator`]) and usage
//! events from `POST /v1/events` ([`UsageAggregator`]), with the same machinery ([`Ingest`]).
//!
//! Why this is exactly once: the store ignores an event it already holds (`(partner_id, id)`),
//! so a crash between the insert and the commit replays a batch that changes nothing. A crash
//! before the insert replays a batch that was never written. Nothing is claimed before the
//! write is durable (the failure OpenMeter #5118 shows). A record that is not a valid event
//! goes to the dead letters with the reason, and the partition moves on.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use peage_core::{CallEvent, UsageEvent};
use peage_eventlog::{DeadLetter, DeadLetterSink, EventLogError, Lease, LogConsumer, LogRecord};
use peage_usage_store::{InsertOutcome, Logged, UsageKey, UsageStore, UsageStoreError};
use tokio::sync::watch;

/// Why a record is not an event the stores can hold: it goes to the dead letters with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a {schema} v1: {why}")]
    Json { schema: &'static str, why: String },
    #[error("invalid {schema}: {why}")]
    Invalid { schema: &'static str, why: String },
}

/// What one kind of event needs of the aggregator: how a record decodes, its identity, and
/// which store calls hold it.
#[async_trait]
pub trait Ingest: Clone + Send + Sync + 'static {
    /// Whether every record is checked against the store for an earlier copy, not only those
    /// the producer flagged: usage events may be re-sent by their client with a new record.
    const CHECK_EVERY_RECORD: bool;

    /// The event a record holds, checked, or why it is not one (a dead letter).
    fn decode(payload: &[u8]) -> Result<Self, DecodeError>;

    /// The identity stores deduplicate by.
    fn key(&self) -> UsageKey;

    /// What the event says, to tell a re-send from an id re-used with other content (empty:
    /// ids are never re-used, as for calls).
    fn digest(&self) -> &str;

    /// The digests of the stored events with the keys of these.
    async fn stored(
        store: &dyn UsageStore,
        events: &[&Self],
    ) -> Result<HashMap<UsageKey, String>, UsageStoreError>;

    async fn insert(
        store: &dyn UsageStore,
        topic: &str,
        rows: &[Logged<Self>],
    ) -> Result<InsertOutcome, UsageStoreError>;
}

#[async_trait]
impl Ingest for CallEvent {
    const CHECK_EVERY_RECORD: bool = false;

    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let e = serde_json::from_slice::<CallEvent>(payload).map_err(|e| DecodeError::Json {
            schema: "CallEvent",
            why: e.to_string(),
        })?;
        e.check().map_err(|m| DecodeError::Invalid {
            schema: "CallEvent",
            why: m.to_string(),
        })?;
        Ok(e)
    }

    fn key(&self) -> UsageKey {
        (self.partner_id.clone(), self.id)
    }

    fn digest(&self) -> &str {
        ""
    }

    async fn stored(
        store: &dyn UsageStore,
        events: &[&Self],
    ) -> Result<HashMap<UsageKey, String>, UsageStoreError> {
        // Only records flagged as possible duplicates: few, so the copy is cheap.
        let events: Vec<CallEvent> = events.iter().map(|&e| e.clone()).collect();
        let ids = store.stored_ids(&events).await?;
        Ok(ids.into_iter().map(|k| (k, String::new())).collect())
    }

    async fn insert(
        store: &dyn UsageStore,
        topic: &str,
        rows: &[Logged<Self>],
    ) -> Result<InsertOutcome, UsageStoreError> {
        store.insert_logged(topic, rows).await
    }
}

#[async_trait]
impl Ingest for UsageEvent {
    const CHECK_EVERY_RECORD: bool = true;

    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let e = serde_json::from_slice::<UsageEvent>(payload).map_err(|e| DecodeError::Json {
            schema: "UsageEvent",
            why: e.to_string(),
        })?;
        e.check().map_err(|m| DecodeError::Invalid {
            schema: "UsageEvent",
            why: m.to_string(),
        })?;
        Ok(e)
    }

    fn key(&self) -> UsageKey {
        (self.partner_id.clone(), self.key)
    }

    fn digest(&self) -> &str {
        &self.digest
    }

    async fn stored(
        store: &dyn UsageStore,
        events: &[&Self],
    ) -> Result<HashMap<UsageKey, String>, UsageStoreError> {
        let keys: Vec<UsageKey> = events.iter().map(|e| e.key()).collect();
        store.stored_usage_digests(&keys).await
    }

    async fn insert(
        store: &dyn UsageStore,
        topic: &str,
        rows: &[Logged<Self>],
    ) -> Result<InsertOutcome, UsageStoreError> {
        store.insert_usage_events(topic, rows).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error(transparent)]
    Log(#[from] EventLogError),
}

#[derive(Debug, Default)]
pub struct AggregatorStats {
    pub inserted: AtomicU64,
    /// Events not inserted because the store already held them (replays after a crash,
    /// re-sent records).
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Usage events whose id was already used with other content (also dead-lettered): the
    /// first one stays, this one is reported.
    pub conflicts: AtomicU64,
    pub store_failures: AtomicU64,
    pub batches: AtomicU64,
    /// Batches given up unwritten because the partitions they came from may have moved to
    /// another member before the write could finish (re-read from the committed offsets).
    pub abandoned_batches: AtomicU64,
}

/// How long a member given partitions waits before it reads where the store stands. A live
/// previous owner dropped its write when the revocation began, before this assignment; this
/// covers one that died with a request ClickHouse had received whole and was still applying.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Records per batch at most.
    pub max_batch: usize,
    /// How long a batch may wait to fill.
    pub poll_wait: Duration,
    /// The deadline of one insert attempt. An attempt starts only while the batch's lease
    /// holds for that long, and is dropped at once if a rebalance begins
    /// (docs/exactly-once.md, "Rebalances").
    pub insert_timeout: Duration,
    /// How many inserts one batch is split into, by partition, sent at once (at least 1). Each
    /// holds whole partitions' records, contiguous from where the store stands, so each is
    /// all or nothing for its partitions and the position check stays exact; the batch is
    /// committed once all of them landed. A store that applies an insert on one thread
    /// (ClickHouse with its materialized views) then uses more than one core.
    pub parallel_inserts: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_batch: 5_000,
            poll_wait: Duration::from_millis(100),
            insert_timeout: Duration::from_secs(60),
            parallel_inserts: 1,
        }
    }
}

/// Splits a batch into at most `ways` inserts by partition, each partition's records in one of
/// them in their order, the partitions spread so the inserts come out about the same size. An
/// empty batch is no insert at all.
fn split_by_partition<E>(batch: Vec<Logged<E>>, ways: usize) -> Vec<Vec<Logged<E>>> {
    let ways = ways.max(1);
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for e in &batch {
        *counts.entry(e.partition).or_default() += 1;
    }
    if counts.is_empty() {
        return Vec::new();
    }
    if ways == 1 || counts.len() == 1 {
        return vec![batch];
    }
    // Largest partitions first, each to the insert with the fewest records so far.
    let mut by_size: Vec<(u32, usize)> = counts.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut load = vec![0usize; ways.min(by_size.len())];
    let mut insert_of: HashMap<u32, usize> = HashMap::new();
    for (partition, n) in by_size {
        let least = (0..load.len()).min_by_key(|&i| load[i]).unwrap_or(0);
        load[least] += n;
        insert_of.insert(partition, least);
    }
    let mut inserts: Vec<Vec<Logged<E>>> = load.iter().map(|&n| Vec::with_capacity(n)).collect();
    for e in batch {
        inserts[insert_of[&e.partition]].push(e);
    }
    inserts
}

/// Embedded dead letters: one JSON object per line, fsynced before the position is committed.
pub struct DeadLetterFile {
    path: PathBuf,
}

impl DeadLetterFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetterFile { path: path.into() }
    }
}

#[async_trait]
impl DeadLetterSink for DeadLetterFile {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), EventLogError> {
        let err = |source| EventLogError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut buf = Vec::new();
        for l in letters {
            serde_json::to_writer(&mut buf, l).map_err(|e| err(e.into()))?;
            buf.push(b'\n');
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await
        .map_err(|e| EventLogError::Task(e.to_string()))?
        .map_err(err)
    }
}

/// The aggregator of call events.
pub type Aggregator = Ingester<CallEvent>;
/// The aggregator of usage events (`POST /v1/events`).
pub type UsageAggregator = Ingester<UsageEvent>;

pub struct Ingester<E: Ingest> {
    consumer: Box<dyn LogConsumer>,
    store: Arc<dyn UsageStore>,
    dead_letters: Box<dyn DeadLetterSink>,
    config: AggregatorConfig,
    stats: Arc<AggregatorStats>,
    /// Per partition, the highest offset the store holds, learnt since the last rebalance.
    floors: HashMap<u32, Option<u64>>,
    epoch: u64,
    /// The batch being inserted while the next one is read and decoded, with its records to
    /// commit once the insert is done (`None` from the task: abandoned, see [`Lease`]). At
    /// most one: batches land and commit in order.
    in_flight: Option<(
        tokio::task::JoinHandle<Option<InsertOutcome>>,
        Vec<LogRecord>,
        Lease,
    )>,
    kind: std::marker::PhantomData<fn() -> E>,
}

impl<E: Ingest> Ingester<E> {
    pub fn new(
        consumer: Box<dyn LogConsumer>,
        store: Arc<dyn UsageStore>,
        dead_letters: Box<dyn DeadLetterSink>,
        config: AggregatorConfig,
    ) -> Self {
        let epoch = consumer.assignment_epoch();
        Ingester {
            consumer,
            store,
            dead_letters,
            config,
            stats: Arc::default(),
            floors: HashMap::new(),
            epoch,
            in_flight: None,
            kind: std::marker::PhantomData,
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
                self.finish_in_flight().await?;
                if stopping && self.consumer.lag().await? == 0 {
                    tracing::info!("aggregator: log drained, stopping");
                    return Ok(());
                }
                continue;
            }
            self.process(&records).await?;
            if stopping && self.consumer.lag().await? == 0 {
                self.finish_in_flight().await?;
                // Nothing known to be left (a Kafka consumer always says so: it stops after
                // the batch in hand instead of chasing a topic that never runs dry).
                tracing::info!("aggregator: stopping after the batch in hand");
                return Ok(());
            }
        }
    }

    /// Waits for the batch being inserted, then commits its records. False if that batch was
    /// abandoned and the consumer restarted from its committed offsets: whatever was read
    /// since is stale then.
    async fn finish_in_flight(&mut self) -> Result<bool, AggregatorError> {
        if let Some((handle, records, lease)) = self.in_flight.take() {
            let outcome = handle
                .await
                .map_err(|e| AggregatorError::Log(EventLogError::Task(e.to_string())))?;
            let Some(outcome) = outcome else {
                return Ok(!self.abandon(records.len(), &lease).await?);
            };
            self.stats
                .inserted
                .fetch_add(outcome.inserted, Ordering::Relaxed);
            if outcome.duplicates > 0 {
                self.stats
                    .duplicates
                    .fetch_add(outcome.duplicates, Ordering::Relaxed);
            }
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.consumer.commit(&records).await?;
        }
        Ok(true)
    }

    /// Gives up a batch whose lease ran out: nothing of it is written or committed. After a
    /// rebalance the consumer already resumes from the committed offsets; a member that ran
    /// out of time without one (it may have been expelled) restarts as a fresh member and
    /// forgets what it knew of stored positions. True if it restarted.
    async fn abandon(&mut self, records: usize, lease: &Lease) -> Result<bool, AggregatorError> {
        self.stats.abandoned_batches.fetch_add(1, Ordering::Relaxed);
        let restart = !lease.rebalanced();
        tracing::warn!(
            records,
            restart,
            "aggregator: batch abandoned unwritten: its partitions may have moved to another \
             member before the store call could finish; it is read again from the committed \
             offsets"
        );
        if restart {
            self.floors.clear();
            self.consumer.restart().await?;
            self.epoch = self.consumer.assignment_epoch();
        }
        Ok(restart)
    }

    /// The batch in hand lost its lease in a store read: the batch before lands or is
    /// abandoned first (so nothing is left running), then this one is abandoned, unless the
    /// one before already restarted the consumer.
    async fn give_up(&mut self, records: usize, lease: &Lease) -> Result<(), AggregatorError> {
        if self.finish_in_flight().await? {
            self.abandon(records, lease).await?;
        }
        Ok(())
    }

    /// Skip what the store holds, dead-letter what is not an event, insert, then commit: the
    /// order that makes a crash at any point safe (docs/exactly-once.md).
    async fn process(&mut self, records: &[LogRecord]) -> Result<(), AggregatorError> {
        let topic = self.consumer.topic().to_string();
        // The claim on these records, taken before anything can await.
        let lease = self.consumer.lease();
        // 1. Positions the store already holds, re-learnt after every rebalance, after a short
        //    wait for a previous owner that died mid-insert (see SETTLE).
        let epoch = self.consumer.assignment_epoch();
        if epoch != self.epoch {
            self.floors.clear();
            self.epoch = epoch;
        }
        let unknown: Vec<u32> = records
            .iter()
            .map(|r| r.partition)
            .filter(|p| !self.floors.contains_key(p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            let settle = self
                .consumer
                .settle_remaining(SETTLE.min(self.config.insert_timeout));
            if !settle.is_zero() {
                tracing::info!(
                    wait_ms = settle.as_millis() as u64,
                    "aggregator: new partitions; waiting for an insert of a previous owner that died"
                );
                tokio::time::sleep(settle).await;
            }
            let store = Arc::clone(&self.store);
            let Some(stored) = retry(
                &self.stats,
                "reading stored positions",
                &lease,
                self.config.insert_timeout,
                || store.stored_positions(&topic, &unknown),
            )
            .await
            else {
                return self.give_up(records.len(), &lease).await;
            };
            for p in unknown {
                self.floors.insert(p, stored.get(&p).copied());
            }
        }
        let mut skipped = 0u64;
        let mut events = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        for r in records {
            if self.floors[&r.partition].is_some_and(|f| r.offset <= f) {
                skipped += 1;
                continue;
            }
            // 2. Decode and check; what is not a valid event goes to the dead letters.
            match E::decode(&r.payload) {
                Ok(event) => events.push((
                    r.possible_duplicate || E::CHECK_EVERY_RECORD,
                    Logged {
                        partition: r.partition,
                        offset: r.offset,
                        event,
                    },
                    r,
                )),
                Err(reason) => dead.push(DeadLetter {
                    partition: r.partition,
                    offset: r.offset,
                    reason: reason.to_string(),
                    payload: r.payload.clone(),
                }),
            }
        }
        // 3. Records the producer may have sent twice (usage events: every record, a client
        //    may re-send): drop ids already stored or seen. An id seen with other content is
        //    a conflict: the first stays, the later one is reported as a dead letter.
        if events.iter().any(|(maybe, _, _)| *maybe) {
            // The originals may be in the batch still being inserted.
            if !self.finish_in_flight().await? {
                return Ok(());
            }
            let suspects: Vec<&E> = events
                .iter()
                .filter(|(maybe, _, _)| *maybe)
                .map(|(_, l, _)| &l.event)
                .collect();
            let store = Arc::clone(&self.store);
            let Some(mut known) = retry(
                &self.stats,
                "checking re-sent ids",
                &lease,
                self.config.insert_timeout,
                || E::stored(store.as_ref(), &suspects),
            )
            .await
            else {
                return self.give_up(records.len(), &lease).await;
            };
            let before = events.len();
            let mut conflicts = 0u64;
            events.retain(|(_, l, r)| {
                let key = l.event.key();
                match known.get(&key) {
                    None => {
                        known.insert(key, l.event.digest().to_string());
                        true
                    }
                    Some(d) if d == l.event.digest() => false,
                    Some(_) => {
                        conflicts += 1;
                        dead.push(DeadLetter {
                            partition: r.partition,
                            offset: r.offset,
                            reason: format!(
                                "id {:?} of partner {} was already used by an event with other content; the first one counts",
                                key.1, key.0
                            ),
                            payload: r.payload.clone(),
                        });
                        false
                    }
                }
            });
            skipped += (before - events.len()) as u64 - conflicts;
            self.stats.conflicts.fetch_add(conflicts, Ordering::Relaxed);
        }
        if !dead.is_empty() {
            let mut backoff = Duration::from_millis(50);
            while let Err(e) = self.dead_letters.send(&dead).await {
                tracing::error!(error = %e, "aggregator: cannot write dead letters; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            self.stats
                .dead_lettered
                .fetch_add(dead.len() as u64, Ordering::Relaxed);
            tracing::warn!(count = dead.len(), partition = dead[0].partition, first_offset = dead[0].offset, reason = %dead[0].reason, "aggregator: records sent to dead letters");
        }
        // 4. Insert the batch (all or nothing) in the background while the next batch is read;
        //    its records are committed once it landed, in order. If the one before was
        //    abandoned, these records were read by the member that gave up: drop them too.
        if !self.finish_in_flight().await? {
            return Ok(());
        }
        for r in records {
            let floor = self.floors.entry(r.partition).or_default();
            *floor = Some(floor.map_or(r.offset, |f| f.max(r.offset)));
        }
        if skipped > 0 {
            self.stats.duplicates.fetch_add(skipped, Ordering::Relaxed);
            tracing::info!(
                duplicates = skipped,
                "aggregator: skipped events already stored (replay after a restart or a re-send)"
            );
        }
        let batch: Vec<Logged<E>> = events.into_iter().map(|(_, l, _)| l).collect();
        let inserts = split_by_partition(batch, self.config.parallel_inserts);
        let (store, stats) = (Arc::clone(&self.store), Arc::clone(&self.stats));
        let (deadline, claim) = (self.config.insert_timeout, lease.clone());
        let insert = tokio::spawn(async move {
            // One task an insert; the batch landed when every one did. One that ran out of
            // lease makes the batch abandoned: the others' partitions are then re-read from
            // the committed offsets and skipped by the position check where they landed.
            let parts: Vec<_> = inserts
                .into_iter()
                .map(|rows| {
                    let (store, stats, claim, topic) = (
                        Arc::clone(&store),
                        Arc::clone(&stats),
                        claim.clone(),
                        topic.clone(),
                    );
                    tokio::spawn(async move {
                        retry(&stats, "inserting the batch", &claim, deadline, || {
                            E::insert(store.as_ref(), &topic, &rows)
                        })
                        .await
                    })
                })
                .collect();
            let mut total = InsertOutcome::default();
            let mut landed = true;
            for part in parts {
                match part.await {
                    Ok(Some(o)) => {
                        total.inserted += o.inserted;
                        total.duplicates += o.duplicates;
                    }
                    Ok(None) => landed = false,
                    // A panic surfaces from this task as it did before the split.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => landed = false, // cancelled: the runtime is shutting down
                }
            }
            landed.then_some(total)
        });
        self.in_flight = Some((insert, records.to_vec(), lease));
        Ok(())
    }
}

/// Retries a store call with backoff until it succeeds, while `lease` holds: each attempt
/// starts only if the partitions stay this member's for the attempt's whole `deadline`, and
/// is cancelled at it (the request is dropped; ClickHouse writes nothing of a request it did
/// not receive whole, and a hung store cannot hold the loop). Every failure is counted and
/// logged. `None` when the lease ran out first: then the call must not be made by this member.
async fn retry<T, F, Fut>(
    stats: &AggregatorStats,
    what: &str,
    lease: &Lease,
    deadline: Duration,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, UsageStoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        if !lease.holds_for(deadline) {
            return None;
        }
        let attempt = tokio::time::timeout(deadline, call());
        let error = tokio::select! {
            r = attempt => match r {
                Ok(Ok(v)) => return Some(v),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", deadline.as_millis()),
            },
            // A rebalance began: drop the request before the partitions change hands.
            _ = lease.lost() => return None,
        };
        stats.store_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %error, retry_in_ms = backoff.as_millis() as u64, "aggregator: {what} failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
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
            refusals: Default::default(),
            events: None,
        };
        let q = UsageQuery {
            partner_id: "prt_4f1c2a9e0b7d3c5e8a61".into(),
            env: Env::Live,
            from: chrono::Utc::now() - chrono::Duration::hours(1),
            to: chrono::Utc::now() + chrono::Duration::hours(1),
        };
        store.meter_usage(&q, &[meter]).await.unwrap()[0].quantity
    }

    #[test]
    fn a_batch_splits_by_whole_partitions_in_order_into_inserts_of_about_one_size() {
        let logged = |partition: u32, offset: u64| peage_usage_store::LoggedEvent {
            partition,
            offset,
            event: event(offset),
        };
        // Partition 0: 6 records, 1: 3, 2: 2, 3: 1, interleaved as a poll returns them.
        let mut batch = Vec::new();
        for o in 0..6u64 {
            batch.push(logged(0, o));
            if o < 3 {
                batch.push(logged(1, 100 + o));
            }
            if o < 2 {
                batch.push(logged(2, 200 + o));
            }
            if o < 1 {
                batch.push(logged(3, 300 + o));
            }
        }
        let inserts = split_by_partition(batch.clone(), 2);
        assert_eq!(inserts.len(), 2);
        let sizes: Vec<usize> = inserts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![6, 6], "6 | 3 + 2 + 1");
        let mut seen = HashSet::new();
        for insert in &inserts {
            let parts: HashSet<u32> = insert.iter().map(|e| e.partition).collect();
            for p in parts {
                assert!(seen.insert(p), "partition {p} is in one insert only");
                let offsets: Vec<u64> = insert
                    .iter()
                    .filter(|e| e.partition == p)
                    .map(|e| e.offset)
                    .collect();
                let all: Vec<u64> = batch
                    .iter()
                    .filter(|e| e.partition == p)
                    .map(|e| e.offset)
                    .collect();
                assert_eq!(offsets, all, "partition {p}: every record, in order");
            }
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(split_by_partition(batch.clone(), 1).len(), 1);
        assert_eq!(
            split_by_partition(batch.clone(), 9).len(),
            4,
            "no more inserts than partitions"
        );
        let one: Vec<_> = batch.into_iter().filter(|e| e.partition == 2).collect();
        assert_eq!(split_by_partition(one, 4).len(), 1);
        assert!(
            split_by_partition::<CallEvent>(Vec::new(), 2).is_empty(),
            "an empty batch is no insert"
        );
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
            Box::new(DeadLetterFile::new(dir.path().join("dead.jsonl"))),
            AggregatorConfig {
                max_batch: 17,
                poll_wait: Duration::from_millis(20),
                ..Default::default()
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

    #[tokio::test]
    async fn usage_events_count_once_across_re_sends_and_a_re_used_id_is_reported() {
        use peage_core::usage_event::{parse_cloud_event, TimeWindow};
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).unwrap();
        let store = Arc::new(
            SqliteUsageStore::open(&dir.path().join("usage.db"))
                .await
                .unwrap(),
        );
        let now = chrono::Utc::now();
        let ev = |id: &str, tokens: u32| {
            let raw = serde_json::value::RawValue::from_string(format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/llm","type":"tok","subject":"p","data":{{"tokens":{tokens}}}}}"#
            ))
            .unwrap();
            let e = parse_cloud_event(&raw)
                .unwrap()
                .into_usage_event("p", now, &TimeWindow::default())
                .unwrap();
            bytes::Bytes::from(serde_json::to_vec(&e).unwrap())
        };
        // 30 events; then the same 30 re-sent (a client retry); then id 7 with other content,
        // once within a batch of its own and once after the original was stored; and a
        // record that is not a usage event.
        let first: Vec<_> = (0..30).map(|i| ev(&format!("e{i}"), i)).collect();
        log.append_payloads(&first).await.unwrap();
        log.append_payloads(&first).await.unwrap();
        log.append_payloads(&[ev("e7", 999), ev("x", 1), ev("x", 2)])
            .await
            .unwrap();
        log.append_payloads(&[bytes::Bytes::from_static(b"{}")])
            .await
            .unwrap();

        let agg = UsageAggregator::new(
            log.consumer("usage-aggregator").await.unwrap(),
            store.clone(),
            Box::new(DeadLetterFile::new(dir.path().join("dead.jsonl"))),
            AggregatorConfig {
                max_batch: 13,
                poll_wait: Duration::from_millis(20),
                ..Default::default()
            },
        );
        let stats = agg.stats();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(agg.run(stop));
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();

        assert_eq!(stats.inserted.load(Ordering::Relaxed), 31);
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 30);
        assert_eq!(stats.conflicts.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 3);
        let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
        assert!(
            dead.contains("already used by an event with other content"),
            "{dead}"
        );
        assert!(dead.contains("not a UsageEvent"), "{dead}");
        let meter = Meter {
            name: "tokens".into(),
            aggregation: Aggregation::Sum,
            field: MeterField::Calls,
            scale: None,
            filter: Default::default(),
            group_by: vec![],
            refusals: Default::default(),
            events: Some(peage_core::meter::EventSelector {
                event_type: "tok".into(),
                value: Some("tokens".into()),
                filter: Default::default(),
                group_by: vec![],
                recurring: false,
            }),
        };
        let q = UsageQuery {
            partner_id: "p".into(),
            env: Env::Live,
            from: now - chrono::Duration::hours(1),
            to: now + chrono::Duration::hours(1),
        };
        // 0 + 1 + … + 29, and the first "x" (1): the re-used ids changed nothing.
        let total = store.meter_usage(&q, &[meter]).await.unwrap()[0].quantity;
        assert_eq!(total, rust_decimal::Decimal::from(435 + 1));
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
