//! The event log on Kafka (`rdkafka`), for the distributed mode.
//!
//! Producing (the gateway): events go first to a local disk spool (an [`EmbeddedLog`], fsynced
//! per batch) and a forwarder ships the spool to the topic in order, with an idempotent
//! producer (`acks=all`; not idempotent for usage events, see [`KafkaConfig::idempotent`]),
//! keyed by partner id. A broker outage or a full producer queue only
//! makes the spool grow; the gateway keeps serving. When the spool holds more than its bound,
//! the configured policy applies: `fail_open` keeps serving and drops events (counted and
//! logged, never silently), `fail_closed` refuses calls until the spool drains.
//!
//! Records the forwarder may have sent before (those still unacknowledged in the spool when it
//! starts, and a batch re-sent after a delivery error) carry the header
//! `peage-possible-duplicate: 1`; the aggregator checks their ids against the store. Kafka
//! transactions are not used (the CI broker has none, and exactly once does not need them:
//! `docs/exactly-once.md`).
//!
//! Consuming (the aggregator): a consumer group with manual commits; see [`KafkaConsumer`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use peage_core::CallEvent;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
    ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::{EmbeddedLog, EventLog, EventLogError, Lease, LogConsumer, LogRecord, Membership};

/// Header on records that may already be in the topic (see the module docs).
pub const POSSIBLE_DUPLICATE: &str = "peage-possible-duplicate";
const FORWARDER_GROUP: &str = "kafka-forwarder";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    pub topic: String,
    /// Where the aggregator sends records that are not valid events, with the reason.
    pub dead_letter_topic: String,
    /// Partitions when Péage creates the topic (it is created if missing).
    pub partitions: i32,
    pub replication_factor: i32,
    /// `compression.type` of the producer: `none`, `gzip`, `snappy`, `lz4`, `zstd`.
    pub compression: String,
    /// `linger.ms` of the producer: how long a batch may wait to fill. Fewer, larger batches
    /// cost the broker less per event (tansu's memory engine lists every stored batch of a
    /// partition on each fetch); the spool forwarder is off the calls' path, so the wait only
    /// adds to freshness.
    pub linger_ms: u32,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, …), applied last.
    pub properties: BTreeMap<String, String>,
    /// Whether the spool forwarder's producer is idempotent (`enable.idempotence`). Call
    /// events need it: the aggregator checks only records flagged as possible duplicates, and
    /// relies on an original preceding its copy. Usage events do not (every record is checked
    /// against the store and its batch), and an idempotent producer's broker thread spins
    /// while 5 requests are in flight and a batch is ready: 26 µs of CPU per event forwarded
    /// to a saturated broker, against 2.7 µs without (load-tests/events/run.sh, raw drain).
    /// Set by code, not by configuration.
    #[serde(skip)]
    pub idempotent: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "peage.calls.v1".into(),
            dead_letter_topic: "peage.calls.v1.dead".into(),
            partitions: 4,
            replication_factor: 1,
            compression: "lz4".into(),
            linger_ms: 50,
            properties: BTreeMap::new(),
            idempotent: true,
        }
    }
}

impl KafkaConfig {
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            // Treat an unreachable broker as transient, however long it lasts.
            .set("reconnect.backoff.max.ms", "2000");
        c
    }

    fn apply_properties(&self, c: &mut ClientConfig) {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }
}

fn kafka_err(what: &str, e: KafkaError) -> EventLogError {
    EventLogError::Kafka(format!("{what}: {e}"))
}

/// Creates the events topic and the dead-letter topic if they are missing (idempotent).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), EventLogError> {
    let mut c = config.client();
    config.apply_properties(&mut c);
    let admin: AdminClient<DefaultClientContext> =
        c.create().map_err(|e| kafka_err("admin client", e))?;
    let topics = [
        NewTopic::new(
            &config.topic,
            config.partitions,
            TopicReplication::Fixed(config.replication_factor),
        ),
        NewTopic::new(
            &config.dead_letter_topic,
            1,
            TopicReplication::Fixed(config.replication_factor),
        ),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(|e| kafka_err("create topics", e))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "kafka: topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(EventLogError::Kafka(format!("create topic {name}: {code}")))
            }
        }
    }
    Ok(())
}

/// An idempotent producer (`acks=all`) that waits for every record of a batch.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer,
}

/// One record to produce: key, payload and whether it may already be in the topic.
pub struct OutRecord<'a> {
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub possible_duplicate: bool,
    pub headers: &'a [(&'a str, &'a str)],
}

impl KafkaProducer {
    pub fn new(config: &KafkaConfig) -> Result<KafkaProducer, EventLogError> {
        let producer = producer_config(config)
            .create()
            .map_err(|e| kafka_err("producer", e))?;
        Ok(KafkaProducer { producer })
    }

    /// Sends call events to `topic` as gateways do (JSON, keyed by partner id) and waits until
    /// all are acknowledged.
    pub async fn send_events(
        &self,
        topic: &str,
        events: &[CallEvent],
    ) -> Result<(), EventLogError> {
        let payloads = events.iter().map(crate::encode).collect::<Vec<_>>();
        let out: Vec<OutRecord<'_>> = events
            .iter()
            .zip(&payloads)
            .map(|(e, p)| OutRecord {
                key: e.partner_id.as_bytes(),
                payload: p,
                possible_duplicate: false,
                headers: &[],
            })
            .collect();
        self.send_all(topic, &out).await
    }

    /// Sends every record to `topic` and waits until all are acknowledged by the broker.
    pub async fn send_all(
        &self,
        topic: &str,
        records: &[OutRecord<'_>],
    ) -> Result<(), EventLogError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let mut headers = OwnedHeaders::new();
            if r.possible_duplicate {
                headers = headers.insert(Header {
                    key: POSSIBLE_DUPLICATE,
                    value: Some("1"),
                });
            }
            for (k, v) in r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            let mut record = FutureRecord::to(topic)
                .key(r.key)
                .payload(r.payload)
                .headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local producer queue is full: wait for deliveries, keep order.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(kafka_err("produce", e)),
                }
            }
        }
        for d in pending {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka_err("delivery", e)),
                Err(_) => return Err(EventLogError::Kafka("producer dropped a delivery".into())),
            }
        }
        Ok(())
    }
}

/// What to do when the spool holds more than its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFullPolicy {
    /// Keep serving calls; events beyond the bound are dropped, counted and logged.
    #[default]
    FailOpen,
    /// Refuse calls (503) until the spool drains below the bound; no event is dropped.
    FailClosed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: std::path::PathBuf,
    /// Events waiting in the spool before the policy applies.
    pub max_events: u64,
    pub when_full: SpoolFullPolicy,
    /// How long written events may wait for `fdatasync`: a crash of the gateway process loses
    /// none of them, an OS crash or power loss at most this long of those not yet in Kafka
    /// (normally there within milliseconds). 0: sync every batch.
    pub sync_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "./peage-data/spool".into(),
            max_events: 10_000_000,
            when_full: SpoolFullPolicy::FailOpen,
            sync_interval_ms: 100,
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Events forwarded to Kafka and acknowledged.
    pub forwarded: AtomicU64,
    /// Events dropped because the spool was full under `fail_open`.
    pub dropped: AtomicU64,
    /// Forward attempts that failed (broker down, timeouts); each is retried.
    pub forward_failures: AtomicU64,
    /// Events the forwarder read back from the spool on disk (a backlog from the last run, or
    /// more than fit in memory), rather than taking them from memory as they were spooled.
    pub read_from_disk: AtomicU64,
}

/// Events spooled but not yet handed to the forwarder, kept in memory up to this many so the
/// forwarder need not read them back from disk; beyond it, it does.
const IN_MEMORY_EVENTS: u64 = 200_000;
/// The most events the forwarder sends as one batch.
const FORWARD_BATCH: u64 = 20_000;
/// The forwarder hands the producer records in windows of this many bytes, and before it
/// starts a window it waits for the delivery of the one before the last: at most 2 windows,
/// 4 of librdkafka's 1 MB batches (`batch.size`), are outstanding, so a full batch never waits
/// for a free in-flight slot (5 for an idempotent producer) and the pipe never runs dry.
const FORWARD_WINDOW_BYTES: usize = 2 << 20;
/// How often the forwarder records its position in the spool (and lets retention delete what
/// Kafka has): records acknowledged but not yet recorded are re-sent, flagged, after a crash.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// Spooled records on their way from the spool writer to the forwarder, in memory.
struct SpooledBatch {
    first: u64,
    keys: Vec<Bytes>,
    payloads: Vec<Bytes>,
}

/// What the spool writer and the forwarder share.
struct Forwarding {
    /// The offset after the last record Kafka acknowledged.
    forwarded_to: AtomicU64,
    /// Batches spooled and not yet taken by the forwarder, and how many events they hold.
    handoff: std::sync::mpsc::Sender<SpooledBatch>,
    in_memory: AtomicU64,
    stop: AtomicBool,
    stats: SpoolStats,
}

/// The gateway side of the Kafka log: append to the spool, forward in the background.
/// `consumer` is not offered here (the aggregator uses [`KafkaConsumer`]).
///
/// The forwarder is a thread of its own: it hands librdkafka whole batches (consecutive spooled
/// batches coalesced) and waits for their delivery reports on a condition variable, with no
/// future or channel per record. Batches come straight from memory once they are in the spool;
/// only a backlog (from the last run, or more than [`IN_MEMORY_EVENTS`]) is read back from disk.
pub struct SpooledKafkaLog {
    spool: EmbeddedLog,
    config: SpoolConfig,
    shared: Arc<Forwarding>,
    full_logged: AtomicBool,
    /// Set while the spool's disk refuses writes (full, read-only): `fail_closed` then refuses
    /// calls as for a full spool; the emitter keeps the events it has and retries.
    write_failing: AtomicBool,
}

impl SpooledKafkaLog {
    /// Opens the spool and starts the forwarder.
    pub async fn start(
        kafka: &KafkaConfig,
        spool: SpoolConfig,
    ) -> Result<Arc<SpooledKafkaLog>, EventLogError> {
        let log = EmbeddedLog::open_with(
            &spool.dir,
            crate::embedded::LogOptions {
                sync_interval: Duration::from_millis(spool.sync_interval_ms),
                ..Default::default()
            },
        )?;
        // Registers the forwarder's group, so retention keeps what it has not sent.
        drop(log.consumer(FORWARDER_GROUP).await?);
        let committed = log.committed_offset(FORWARDER_GROUP)?;
        let end = log.written_offset();
        if end > committed {
            tracing::info!(
                backlog = end - committed,
                "kafka spool: replaying events left from the last run"
            );
        }
        // Fail fast on a bad configuration.
        let _: rdkafka::producer::BaseProducer = producer_config(kafka)
            .create()
            .map_err(|e| kafka_err("producer", e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Forwarding {
            forwarded_to: AtomicU64::new(committed),
            handoff: tx,
            in_memory: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stats: SpoolStats::default(),
        });
        let forwarder = Forwarder {
            spool: log.clone(),
            kafka: kafka.clone(),
            shared: Arc::clone(&shared),
            handoff: rx,
            pending: BTreeMap::new(),
            next: committed,
            // Records unacknowledged when this process started may have been sent by the last.
            resend_below: end,
            reader: None,
            committed,
            committed_at: Instant::now(),
        };
        std::thread::Builder::new()
            .name("peage-spool-kafka".into())
            .spawn(move || forwarder.run())
            .map_err(|e| EventLogError::Task(format!("cannot start the forwarder: {e}")))?;
        Ok(Arc::new(SpooledKafkaLog {
            spool: log,
            config: spool,
            shared,
            full_logged: AtomicBool::new(false),
            write_failing: AtomicBool::new(false),
        }))
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.shared.stats
    }

    /// Events spooled but not yet acknowledged by Kafka.
    pub fn pending(&self) -> u64 {
        self.spool
            .written_offset()
            .saturating_sub(self.shared.forwarded_to.load(Ordering::Relaxed))
    }

    /// Appends records already encoded, each with its Kafka key, refusing them (an error) while
    /// the spool is full whatever `when_full` says: for callers that can tell their client to
    /// retry (the events API answers 503), so nothing is ever dropped. Durable as the spool's
    /// `sync_interval_ms` says when it returns.
    pub async fn append_records(
        &self,
        keys: Vec<Bytes>,
        payloads: Vec<Bytes>,
    ) -> Result<(), EventLogError> {
        if self.pending() >= self.config.max_events {
            return Err(EventLogError::Full(format!(
                "the spool holds {} events not yet in Kafka (spool.max_events)",
                self.pending()
            )));
        }
        if payloads.is_empty() {
            return Ok(());
        }
        self.spool_records(keys, payloads).await
    }

    /// Writes records to the spool and hands them to the forwarder.
    async fn spool_records(
        &self,
        keys: Vec<Bytes>,
        payloads: Vec<Bytes>,
    ) -> Result<(), EventLogError> {
        let first = match self.spool.append_payloads(&payloads).await {
            Ok(first) => {
                if self.write_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("kafka spool: writes succeed again");
                }
                first
            }
            Err(e) => {
                if !self.write_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, policy = ?self.config.when_full, "kafka spool: the disk refuses writes; events wait in memory (fail_open) or calls are refused (fail_closed) until it accepts them again");
                }
                return Err(e);
            }
        };
        let n = payloads.len() as u64;
        if self.shared.in_memory.load(Ordering::Relaxed) + n <= IN_MEMORY_EVENTS {
            let batch = SpooledBatch {
                first,
                keys,
                payloads,
            };
            self.shared.in_memory.fetch_add(n, Ordering::Relaxed);
            if self.shared.handoff.send(batch).is_err() {
                self.shared.in_memory.fetch_sub(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Waits until everything spooled so far is acknowledged by Kafka, or `timeout` passes.
    /// Returns the events still waiting.
    pub async fn drain(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        while self.pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pending()
    }
}

impl Drop for SpooledKafkaLog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct PartnerKey<'a> {
    #[serde(borrow)]
    partner_id: std::borrow::Cow<'a, str>,
}

fn partner_key(payload: &[u8]) -> Bytes {
    // A record without a partner id still goes out (the aggregator dead-letters it).
    serde_json::from_slice::<PartnerKey>(payload)
        .map(|k| Bytes::from(k.partner_id.into_owned().into_bytes()))
        .unwrap_or_default()
}

/// Delivery reports of the forwarder's producer, counted per batch. The producer's own polling
/// thread reports here; the forwarder waits on `changed` (no polling loop of its own: a
/// `BaseProducer::poll` with a short timeout spins on the clock for its last millisecond).
#[derive(Default)]
struct Deliveries {
    reports: std::sync::Mutex<Reports>,
    changed: std::sync::Condvar,
}

#[derive(Default, Clone)]
struct Reports {
    delivered: u64,
    failed: u64,
    last_error: Option<String>,
}

impl Deliveries {
    fn reset(&self) {
        if let Ok(mut r) = self.reports.lock() {
            *r = Reports::default();
        }
    }

    /// Waits until `n` reports came in since the last reset, or `deadline` passes; returns the
    /// reports so far.
    fn wait_for(&self, n: u64, deadline: Instant) -> Reports {
        let Ok(mut r) = self.reports.lock() else {
            return Reports::default();
        };
        while r.delivered + r.failed < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            r = match self.changed.wait_timeout(r, left) {
                Ok((r, _)) => r,
                Err(_) => return Reports::default(),
            };
        }
        r.clone()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(mut r) = self.reports.lock() {
            match result {
                Ok(_) => r.delivered += 1,
                Err((e, _)) => {
                    r.failed += 1;
                    r.last_error = Some(e.to_string());
                }
            }
        }
        self.changed.notify_one();
    }
}

fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = kafka.client();
    c.set("enable.idempotence", kafka.idempotent.to_string())
        .set("acks", "all")
        .set("compression.type", &kafka.compression)
        .set("linger.ms", kafka.linger_ms.to_string())
        .set("batch.num.messages", "10000")
        // Waiting in the spool is safe; give up on a record only after 2 minutes so a
        // long outage surfaces as an error and a fresh producer, never as a silent drop.
        .set("message.timeout.ms", "120000")
        .set("queue.buffering.max.messages", "200000");
    kafka.apply_properties(&mut c);
    c
}

type ForwardProducer = ThreadedProducer<Deliveries>;

fn new_forward_producer(kafka: &KafkaConfig) -> Result<ForwardProducer, EventLogError> {
    producer_config(kafka)
        .create_with_context(Deliveries::default())
        .map_err(|e| kafka_err("producer", e))
}

/// The forwarder thread: spool → Kafka, in order, each batch acknowledged before the next.
struct Forwarder {
    spool: EmbeddedLog,
    kafka: KafkaConfig,
    shared: Arc<Forwarding>,
    handoff: std::sync::mpsc::Receiver<SpooledBatch>,
    /// Batches from memory not yet sent, by first offset.
    pending: BTreeMap<u64, SpooledBatch>,
    /// The next offset to send.
    next: u64,
    /// Records below this were spooled by an earlier process and may be in Kafka already.
    resend_below: u64,
    reader: Option<crate::embedded::SegmentReader>,
    committed: u64,
    committed_at: Instant,
}

impl Forwarder {
    fn run(mut self) {
        // librdkafka's threads start from this one and inherit its priority.
        crate::lower_this_threads_priority(crate::BACKGROUND_NICENESS);
        let mut producer: Option<ForwardProducer> = None;
        // A batch whose delivery failed, to send again (flagged: it may have landed).
        let mut retry: Option<SpooledBatch> = None;
        let mut backoff = Duration::from_millis(100);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let (batch, resend) = match retry.take() {
                Some(b) => (b, true),
                None => match self.next_batch() {
                    Some(b) => (b, false),
                    None => {
                        self.commit(false);
                        continue;
                    }
                },
            };
            let p = match &producer {
                Some(p) => p,
                None => match new_forward_producer(&self.kafka) {
                    Ok(p) => producer.insert(p),
                    Err(e) => {
                        tracing::error!(error = %e, "kafka spool: cannot create the producer");
                        retry = Some(batch);
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            tracing::debug!(
                first = batch.first,
                events = batch.payloads.len(),
                resend,
                "kafka spool: sending"
            );
            match self.send(p, &batch, resend) {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let n = batch.payloads.len() as u64;
                    self.next = batch.first + n;
                    self.shared.forwarded_to.store(self.next, Ordering::Relaxed);
                    self.shared.stats.forwarded.fetch_add(n, Ordering::Relaxed);
                    self.commit(false);
                }
                Err(e) => {
                    self.shared
                        .stats
                        .forward_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, events = batch.payloads.len(), retry_in_ms = backoff.as_millis() as u64,
                        "kafka spool: forwarding failed; the events stay in the spool and are sent again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // A fresh producer starts clean of any fatal idempotence state.
                    producer = None;
                    retry = Some(batch);
                }
            }
        }
        self.commit(true);
    }

    /// The batch at `next`: from memory when it is there, from disk otherwise; `None` after
    /// waiting a little for one.
    fn next_batch(&mut self) -> Option<SpooledBatch> {
        let taken = |b: &SpooledBatch, shared: &Forwarding| {
            shared
                .in_memory
                .fetch_sub(b.payloads.len() as u64, Ordering::Relaxed);
        };
        while let Ok(b) = self.handoff.try_recv() {
            self.pending.insert(b.first, b);
        }
        if self.pending.is_empty() && self.spool.written_offset() <= self.next {
            match self.handoff.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => {
                    self.pending.insert(b.first, b);
                }
                Err(_) => return None,
            }
        }
        // Batches the disk path already covered, wholly or in part.
        while let Some(entry) = self.pending.first_entry() {
            let b = entry.get();
            if b.first >= self.next {
                break;
            }
            let mut b = entry.remove();
            taken(&b, &self.shared);
            let covered = (self.next - b.first) as usize;
            if covered < b.payloads.len() {
                b.keys.drain(..covered);
                b.payloads.drain(..covered);
                b.first = self.next;
                self.shared
                    .in_memory
                    .fetch_add(b.payloads.len() as u64, Ordering::Relaxed);
                self.pending.insert(b.first, b);
                break;
            }
        }
        if let Some(mut b) = self.pending.remove(&self.next) {
            taken(&b, &self.shared);
            // Consecutive batches in memory go out as one: a send waits for its delivery
            // reports, so many small batches (a quiet gateway, or a backlog after an outage)
            // would otherwise cost a round trip each.
            loop {
                let end = b.first + b.payloads.len() as u64;
                if b.payloads.len() as u64 >= FORWARD_BATCH {
                    break;
                }
                let Some(more) = self.pending.remove(&end) else {
                    break;
                };
                taken(&more, &self.shared);
                b.keys.extend(more.keys);
                b.payloads.extend(more.payloads);
            }
            return Some(b);
        }
        // A gap before the first batch in memory (or none in memory): read it from disk.
        let end = self.spool.end_offset();
        let mut upto = end.min(self.next + FORWARD_BATCH);
        if let Some((&first, _)) = self.pending.first_key_value() {
            upto = upto.min(first.max(self.next + 1));
        }
        if upto <= self.next {
            std::thread::sleep(Duration::from_millis(10));
            return None;
        }
        match self.spool.read_range(&mut self.reader, self.next, upto) {
            Ok(records) => {
                self.shared
                    .stats
                    .read_from_disk
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                Some(SpooledBatch {
                    first: self.next,
                    keys: records.iter().map(|r| partner_key(&r.payload)).collect(),
                    payloads: records.into_iter().map(|r| r.payload).collect(),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "kafka spool: cannot read the spool");
                std::thread::sleep(Duration::from_secs(1));
                None
            }
        }
    }

    /// Produces every record of `batch` and waits for all their delivery reports.
    fn send(
        &self,
        p: &ForwardProducer,
        batch: &SpooledBatch,
        resend: bool,
    ) -> Result<(), EventLogError> {
        let ctx = p.context();
        ctx.reset();
        let topic = self.kafka.topic.as_str();
        // Delivery is bounded by message.timeout.ms (2 minutes); a little more here.
        let deadline = || Instant::now() + Duration::from_secs(130);
        let mut window = 0usize;
        let mut produced = 0u64;
        // Records produced before the window in the making.
        let mut previous_end = 0u64;
        for (i, (key, payload)) in batch.keys.iter().zip(&batch.payloads).enumerate() {
            if window + key.len() + payload.len() > FORWARD_WINDOW_BYTES && window > 0 {
                // An idempotent producer keeps at most 5 requests in flight, and while a full
                // batch waits for a free slot librdkafka's broker thread spins (about half the
                // control API's CPU at 25k events/s before this wait).
                let r = ctx.wait_for(previous_end, deadline());
                if r.failed > 0 || r.delivered < previous_end {
                    break;
                }
                previous_end = produced;
                window = 0;
            }
            window += key.len() + payload.len();
            let duplicate = resend || batch.first + (i as u64) < self.resend_below;
            let mut record = BaseRecord::to(topic).key(&key[..]).payload(&payload[..]);
            if duplicate {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: POSSIBLE_DUPLICATE,
                    value: Some("1"),
                }));
            }
            loop {
                match p.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: let deliveries make room, keep order.
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        // What was queued is still delivered (or fails) before the retry.
                        let _ = p.flush(Duration::from_secs(130));
                        return Err(kafka_err("produce", e));
                    }
                }
            }
            produced += 1;
        }
        let n = batch.payloads.len() as u64;
        let Reports {
            delivered,
            failed,
            last_error,
        } = ctx.wait_for(produced, deadline());
        if failed > 0 || delivered < n {
            let why =
                last_error.unwrap_or_else(|| "not every record was acknowledged in 130 s".into());
            return Err(EventLogError::Kafka(format!(
                "delivery: {failed} failed, {delivered} of {n} acknowledged: {why}"
            )));
        }
        Ok(())
    }

    /// Records the position in the spool, at most every [`COMMIT_EVERY`] unless `now`.
    fn commit(&mut self, now: bool) {
        if self.next == self.committed || (!now && self.committed_at.elapsed() < COMMIT_EVERY) {
            return;
        }
        match self.spool.commit_blocking(FORWARDER_GROUP, self.next) {
            Ok(()) => {
                self.committed = self.next;
                self.committed_at = Instant::now();
            }
            Err(e) => {
                tracing::error!(error = %e, "kafka spool: cannot record progress; records will be re-sent after a restart (flagged)");
            }
        }
    }
}

#[async_trait]
impl EventLog for SpooledKafkaLog {
    async fn append(&self, events: &[CallEvent]) -> Result<(), EventLogError> {
        if self.pending() >= self.config.max_events {
            match self.config.when_full {
                SpoolFullPolicy::FailOpen => {
                    self.shared
                        .stats
                        .dropped
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    if !self.full_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(max_events = self.config.max_events, "kafka spool full (fail_open): events are being dropped and counted in peage_spool_dropped_events_total until Kafka catches up");
                    }
                    return Ok(());
                }
                SpoolFullPolicy::FailClosed => {
                    // The gateway stops admitting calls (see `accepting`); what was already
                    // admitted still goes in: nothing is dropped.
                    if !self.full_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            max_events = self.config.max_events,
                            "kafka spool full (fail_closed): refusing calls until Kafka catches up"
                        );
                    }
                }
            }
        } else if self.full_logged.swap(false, Ordering::Relaxed) {
            tracing::info!("kafka spool below its bound again");
        }
        if events.is_empty() {
            return Ok(());
        }
        let payloads: Vec<Bytes> = events.iter().map(|e| crate::encode(e).into()).collect();
        let keys = events
            .iter()
            .map(|e| Bytes::copy_from_slice(e.partner_id.as_bytes()))
            .collect();
        self.spool_records(keys, payloads).await
    }
    async fn consumer(&self, _group: &str) -> Result<Box<dyn LogConsumer>, EventLogError> {
        Err(EventLogError::Kafka(
            "the spooled producer does not consume; use KafkaConsumer".into(),
        ))
    }

    fn accepting(&self) -> bool {
        self.config.when_full == SpoolFullPolicy::FailOpen
            || (self.pending() < self.config.max_events
                && !self.write_failing.load(Ordering::Relaxed))
    }
}

/// The consumer's side of its group membership: rebalances bump the epoch (a revocation before
/// it completes), and every poll is timed, so a [`Lease`] can tell whether the partitions a
/// batch came from are still this member's.
#[derive(Clone)]
pub struct MemberContext(Arc<Membership>);

impl ClientContext for MemberContext {
    /// Every `statistics.interval.ms`: the lag of each partition this member fetches. A
    /// partition between fetches (an offset query after a rebalance) keeps its last value.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = BTreeMap::new();
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.fetch_state == "active" && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), partition), p.consumer_lag);
                }
            }
        }
        self.0.update_lag(lag);
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        // Before librdkafka gives the partitions up: a write started under an older lease
        // sees the change from here on.
        self.0.revoked();
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.0.assigned();
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.0.hold(parts.clone());
                tracing::info!(partitions = ?parts, "kafka consumer: partitions assigned");
            }
            Rebalance::Revoke(_) => {
                self.0.hold(Vec::new());
                self.0.set_lag(BTreeMap::new());
                tracing::info!("kafka consumer: partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka consumer: rebalance error"),
        }
    }
}

/// Where the group stood, at one moment, as seen by a member that owned no partition.
struct GroupSnapshot {
    at: Instant,
    /// Partition → (committed offset, high watermark), for partitions with lag.
    lagging: HashMap<i32, (i64, i64)>,
    /// The partitions this member owns.
    owned: std::collections::HashSet<i32>,
}

/// A consumer-group member with manual commits. Offsets are committed after the records are
/// stored; they are advisory for exactly once (the store's own positions decide) but keep the
/// group's lag meaningful.
///
/// It watches for a stalled group: it owns no partition, and some partition has lag whose
/// committed offset has not moved, for a whole session timeout. Apache Kafka hands the
/// partitions of a member that died to the others after `session.timeout.ms`; tansu never
/// expires a dead static member while only static members talk to the group (it expires
/// members only on requests of dynamic members), so their partitions would wait forever. On a
/// stall the member leaves and rejoins as a dynamic member, which both brokers handle; resume
/// points come from the store, so nothing is read twice into it (docs/exactly-once.md).
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<MemberContext>>,
    membership: Arc<Membership>,
    config: KafkaConfig,
    group: String,
    instance_id: Option<String>,
    session_timeout: Duration,
    next_check: Instant,
    previous: Option<GroupSnapshot>,
    recoveries: Arc<AtomicU64>,
}

/// A librdkafka duration property in milliseconds, or its default.
fn millis(c: &ClientConfig, key: &str, default: u64) -> Duration {
    Duration::from_millis(c.get(key).and_then(|v| v.parse().ok()).unwrap_or(default))
}

impl KafkaConsumer {
    /// Joins `group`. With `instance_id` (Kafka static membership), a restarted member takes
    /// its partitions back at once instead of waiting for the broker to expire the old one.
    pub fn new(
        config: &KafkaConfig,
        group: &str,
        instance_id: Option<&str>,
    ) -> Result<KafkaConsumer, EventLogError> {
        let c = Self::client_config(config, group, instance_id);
        let session_timeout = millis(&c, "session.timeout.ms", 45_000);
        let membership = Arc::new(Membership::new(
            millis(&c, "max.poll.interval.ms", 300_000),
            millis(&c, "heartbeat.interval.ms", 3_000),
        ));
        let consumer = Self::join(&c, config, &membership)?;
        Ok(KafkaConsumer {
            consumer,
            membership,
            config: config.clone(),
            group: group.to_string(),
            instance_id: instance_id.map(str::to_string),
            session_timeout,
            next_check: Instant::now() + session_timeout,
            previous: None,
            recoveries: Arc::default(),
        })
    }

    /// This member's standing in its group: partitions held and their lag (metrics and
    /// readiness).
    pub fn membership(&self) -> Arc<Membership> {
        Arc::clone(&self.membership)
    }

    /// Times this member found the group stalled and rejoined (a metric).
    pub fn stall_recoveries(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.recoveries)
    }

    fn client_config(config: &KafkaConfig, group: &str, instance_id: Option<&str>) -> ClientConfig {
        let mut c = config.client();
        if let Some(id) = instance_id {
            c.set("group.instance.id", id);
        }
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "300000")
            .set("fetch.min.bytes", "1")
            // The lag per partition for /metrics comes from the client's statistics.
            .set("statistics.interval.ms", "5000");
        config.apply_properties(&mut c);
        c
    }

    fn join(
        c: &ClientConfig,
        config: &KafkaConfig,
        membership: &Arc<Membership>,
    ) -> Result<Arc<StreamConsumer<MemberContext>>, EventLogError> {
        let consumer: StreamConsumer<MemberContext> = c
            .create_with_context(MemberContext(Arc::clone(membership)))
            .map_err(|e| kafka_err("consumer", e))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| kafka_err("subscribe", e))?;
        membership.polled();
        Ok(Arc::new(consumer))
    }

    /// Leaves the group (closing the librdkafka consumer, off the async threads) and joins it
    /// again; `dynamic` drops the static instance id for good.
    async fn rejoin(&mut self, dynamic: bool) -> Result<(), EventLogError> {
        if dynamic {
            self.instance_id = None;
        }
        self.membership.revoked();
        let c = Self::client_config(&self.config, &self.group, self.instance_id.as_deref());
        let fresh = Self::join(&c, &self.config, &self.membership)?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        tokio::task::spawn_blocking(move || {
            old.unsubscribe();
            drop(old);
        })
        .await
        .map_err(|e| EventLogError::Task(e.to_string()))?;
        self.previous = None;
        self.next_check = Instant::now() + 2 * self.session_timeout;
        Ok(())
    }

    /// Every session timeout: compares where the group stands with the last look, and rejoins
    /// (as a dynamic member, so the broker expires dead ones) when partitions this member does
    /// not own lag without progress while its own do not stall. A member with no partition in
    /// a group with lag nobody consumes is the stall; so is a member holding some partitions
    /// while the rest stay with an incarnation that died (seen with tansu and static
    /// membership: half the partitions never consumed again). A live owner commits as it goes,
    /// so its partitions progress; when every partition stalls (the store is down for all),
    /// rejoining would help nobody and is not done.
    async fn watch_for_a_stall(&mut self) -> Result<(), EventLogError> {
        if Instant::now() < self.next_check {
            return Ok(());
        }
        self.next_check = Instant::now() + self.session_timeout;
        let (consumer, topic) = (Arc::clone(&self.consumer), self.config.topic.clone());
        let snapshot = tokio::task::spawn_blocking(move || group_snapshot(&consumer, &topic))
            .await
            .map_err(|e| EventLogError::Task(e.to_string()))?;
        let now = match snapshot {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.previous = None;
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "kafka consumer: cannot look at the group's progress");
                return Ok(());
            }
        };
        let stalled: Vec<i32> = match &self.previous {
            Some(before) if now.at.duration_since(before.at) >= self.session_timeout => now
                .lagging
                .iter()
                .filter(|(p, (committed, _))| {
                    before.lagging.get(p).is_some_and(|(c, _)| c == committed)
                })
                .map(|(p, _)| *p)
                .collect(),
            _ => Vec::new(),
        };
        let (mut stuck, mine): (Vec<i32>, Vec<i32>) =
            stalled.into_iter().partition(|p| !now.owned.contains(p));
        self.previous = Some(now);
        if stuck.is_empty() || !mine.is_empty() {
            return Ok(());
        }
        stuck.sort_unstable();
        tracing::warn!(
            partitions = ?stuck,
            stalled_for_s = self.session_timeout.as_secs(),
            "kafka consumer: partitions this member does not own lag without progress; \
             rejoining the group as a dynamic member so the broker expires dead members"
        );
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        self.rejoin(true).await
    }

    fn record(m: &rdkafka::message::BorrowedMessage<'_>) -> LogRecord {
        let possible_duplicate = m.headers().is_some_and(|h| {
            h.iter()
                .any(|h| h.key == POSSIBLE_DUPLICATE && h.value == Some(b"1".as_slice()))
        });
        LogRecord {
            partition: m.partition() as u32,
            offset: m.offset() as u64,
            payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            possible_duplicate,
        }
    }
}

/// Reads a topic from chosen offsets, outside any consumer group: no membership, no commits.
/// For a process that must see every record of a topic whoever else consumes it (the billing
/// role's key filter, docs/events.md). Its calls block: run it on a thread of its own.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    /// The offset of the next record to read, by partition (what is assigned).
    next: BTreeMap<i32, i64>,
}

/// Where a partition stands: the first offset still held and the offset the next record gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

const READER_TIMEOUT: Duration = Duration::from_secs(30);

impl TopicReader {
    pub fn new(config: &KafkaConfig) -> Result<TopicReader, EventLogError> {
        let mut c = config.client();
        // librdkafka wants a group for a consumer; this one never joins it (assign, no
        // subscribe) and never commits.
        c.set("group.id", "peage-topic-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset that retention removed meanwhile: start from what is left.
            .set("auto.offset.reset", "earliest");
        config.apply_properties(&mut c);
        let consumer: BaseConsumer = c.create().map_err(|e| kafka_err("topic reader", e))?;
        Ok(TopicReader {
            consumer,
            topic: config.topic.clone(),
            next: BTreeMap::new(),
        })
    }

    /// The topic's partitions (a metadata request).
    pub fn partitions(&self) -> Result<Vec<i32>, EventLogError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), READER_TIMEOUT)
            .map_err(|e| kafka_err("topic metadata", e))?;
        let mut out = Vec::new();
        for t in metadata.topics().iter().filter(|t| t.name() == self.topic) {
            if let Some(e) = t.error() {
                return Err(EventLogError::Kafka(format!(
                    "topic {}: {:?}",
                    self.topic,
                    RDKafkaErrorCode::from(e)
                )));
            }
            out.extend(t.partitions().iter().map(|p| p.id()));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Where each of `partitions` stands now (two ListOffsets requests each: a broker may
    /// answer them slowly under load, so this is for a start, not for every turn).
    pub fn watermarks(
        &self,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Watermarks>, EventLogError> {
        let mut out = BTreeMap::new();
        for p in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, *p, READER_TIMEOUT)
                .map_err(|e| kafka_err("watermarks", e))?;
            out.insert(*p, Watermarks { low, high });
        }
        Ok(out)
    }

    /// Reads each partition of `from` from its offset on (those not named are not read).
    pub fn assign(&mut self, from: &BTreeMap<i32, i64>) -> Result<(), EventLogError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in from {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(|e| kafka_err("assign", e))?;
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assign", e))?;
        self.next = from.clone();
        Ok(())
    }

    /// Where the next record of each assigned partition is read from.
    pub fn next_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.next
    }

    /// Waits up to `wait` for records, and hands each one's payload to `each`, until `max`
    /// records or none is ready. A transient error (a broker away) is
    /// logged and reads nothing: the client reconnects by itself.
    pub fn read(&mut self, max: usize, wait: Duration, mut each: impl FnMut(&[u8])) -> usize {
        let mut read = 0;
        let mut timeout = wait;
        while read < max {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    each(m.payload().unwrap_or_default());
                    self.next.insert(m.partition(), m.offset() + 1);
                    read += 1;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, topic = %self.topic, "topic reader");
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        read
    }
}

/// If this member owns no partition of `topic`: the partitions that have lag, with their
/// committed offset and high watermark (blocking calls: run off the async threads).
fn group_snapshot(
    consumer: &StreamConsumer<MemberContext>,
    topic: &str,
) -> Result<Option<GroupSnapshot>, KafkaError> {
    let owned = consumer
        .assignment()?
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect();
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lagging = HashMap::new();
    for e in committed.elements_for_topic(topic) {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        if high > at {
            lagging.insert(e.partition(), (at, high));
        }
    }
    Ok(Some(GroupSnapshot {
        at: Instant::now(),
        lagging,
        owned,
    }))
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    /// Waits up to `wait` for records and keeps collecting until `max` or until `wait` has
    /// passed (a batch by size and time). Records read before a rebalance that happened during
    /// the collection are dropped: they belong to the old assignment, and the new one resumes
    /// from the committed offsets.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, EventLogError> {
        self.watch_for_a_stall().await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        let mut epoch = self.membership.epoch.load(Ordering::SeqCst);
        let mut back_off = false;
        while out.len() < max {
            // Fast path: a record librdkafka already fetched, without arming a timer.
            let next = match futures::FutureExt::now_or_never(self.consumer.recv()) {
                Some(r) => Ok(r),
                None => tokio::time::timeout_at(deadline, self.consumer.recv()).await,
            };
            let now = self.membership.epoch.load(Ordering::SeqCst);
            if now != epoch {
                out.clear();
                epoch = now;
            }
            match next {
                Err(_) => break,
                Ok(Ok(m)) => out.push(Self::record(&m)),
                Ok(Err(e)) => {
                    // Transient broker errors are reported and retried by librdkafka.
                    tracing::warn!(error = %e, "kafka consumer");
                    back_off = out.is_empty();
                    break;
                }
            }
        }
        // Once per poll, not per record: the lease needs the time of the last call into
        // librdkafka, which was just now.
        self.membership.polled();
        if back_off {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(out)
    }

    async fn commit(&mut self, records: &[LogRecord]) -> Result<(), EventLogError> {
        let mut next: HashMap<u32, u64> = HashMap::new();
        for r in records {
            let n = next.entry(r.partition).or_default();
            *n = (*n).max(r.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.config.topic, p as i32, Offset::Offset(o as i64))
                .map_err(|e| kafka_err("commit", e))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| kafka_err("commit", e))
    }

    /// Always 0: a distributed aggregator stops after the batch in hand; the group's lag is
    /// Kafka's own metric.
    async fn lag(&self) -> Result<u64, EventLogError> {
        Ok(0)
    }

    fn topic(&self) -> &str {
        &self.config.topic
    }

    fn assignment_epoch(&self) -> u64 {
        self.membership.epoch.load(Ordering::SeqCst)
    }

    fn lease(&self) -> Lease {
        self.membership.lease()
    }

    fn settle_remaining(&self, wait: Duration) -> Duration {
        self.membership.settle_remaining(wait)
    }

    /// A fresh member with the same identity: librdkafka then resumes every partition it is
    /// given from the committed offsets, whatever it had fetched before.
    async fn restart(&mut self) -> Result<(), EventLogError> {
        self.rejoin(false).await
    }
}

/// Publishes dead letters to the dead-letter topic, keyed by the source partition, with the
/// reason and origin in headers and the original bytes as payload.
pub struct KafkaDeadLetters {
    producer: KafkaProducer,
    topic: String,
}

impl KafkaDeadLetters {
    pub fn new(config: &KafkaConfig) -> Result<KafkaDeadLetters, EventLogError> {
        Ok(KafkaDeadLetters {
            producer: KafkaProducer::new(config)?,
            topic: config.dead_letter_topic.clone(),
        })
    }
}

#[async_trait]
impl crate::DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[crate::DeadLetter]) -> Result<(), EventLogError> {
        let meta: Vec<(String, String, String)> = letters
            .iter()
            .map(|l| {
                (
                    l.partition.to_string(),
                    l.offset.to_string(),
                    l.reason.clone(),
                )
            })
            .collect();
        let headers: Vec<[(&str, &str); 3]> = meta
            .iter()
            .map(|(p, o, r)| {
                [
                    ("peage-source-partition", p.as_str()),
                    ("peage-source-offset", o.as_str()),
                    ("peage-reason", r.as_str()),
                ]
            })
            .collect();
        let out: Vec<OutRecord<'_>> = letters
            .iter()
            .zip(&meta)
            .zip(&headers)
            .map(|((l, (p, _, _)), h)| OutRecord {
                key: p.as_bytes(),
                payload: &l.payload,
                possible_duplicate: false,
                headers: h,
            })
            .collect();
        self.producer.send_all(&self.topic, &out).await
    }
}

/// Opens the spool directory of a gateway; exposed for operators' tools and tests.
pub fn spool_backlog(dir: &Path) -> Result<u64, EventLogError> {
    let log = EmbeddedLog::open(dir)?;
    Ok(log
        .end_offset()
        .saturating_sub(log.committed_offset(FORWARDER_GROUP)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn event() -> CallEvent {
        serde_json::from_str(include_str!(
            "../../../schemas/events/examples/rest_call.json"
        ))
        .unwrap()
    }

    /// A broker address nothing listens on: the forwarder keeps retrying, the spool fills.
    fn unreachable() -> KafkaConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        KafkaConfig {
            brokers: format!("127.0.0.1:{port}"),
            ..Default::default()
        }
    }

    /// A spool of 10 events in front of a broker nothing listens on.
    async fn spool_of_ten(
        dir: &tempfile::TempDir,
        when_full: SpoolFullPolicy,
    ) -> Arc<SpooledKafkaLog> {
        SpooledKafkaLog::start(
            &unreachable(),
            SpoolConfig {
                dir: dir.path().to_path_buf(),
                max_events: 10,
                when_full,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_full_spool_fails_open_by_dropping_and_counting() {
        let dir = tempfile::tempdir().unwrap();
        let log = spool_of_ten(&dir, SpoolFullPolicy::FailOpen).await;
        for _ in 0..15 {
            log.append(&[event()]).await.unwrap();
        }
        assert_eq!(log.stats().dropped.load(Relaxed), 5);
        assert_eq!(log.pending(), 10, "kept on disk while Kafka is away");
        assert!(log.accepting(), "fail_open keeps serving");
        assert_eq!(spool_backlog(dir.path()).unwrap(), 10);
    }

    #[tokio::test]
    async fn a_full_spool_fails_closed_by_refusing_calls_and_dropping_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = spool_of_ten(&dir, SpoolFullPolicy::FailClosed).await;
        for i in 0..12 {
            assert_eq!(log.accepting(), i < 10, "event {i}");
            log.append(&[event()]).await.unwrap();
        }
        assert_eq!(log.stats().dropped.load(Relaxed), 0);
        assert_eq!(log.pending(), 12, "what was admitted is kept");
        assert!(!log.accepting());
    }
}
