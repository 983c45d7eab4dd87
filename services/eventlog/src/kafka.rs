//! The event log on Kafka (`rdkafka`), for the distributed mode.
//!
//! Producing (the gateway): events go first to a local disk spool (an [`EmbeddedLog`], fsynced
//! per batch) and a forwarder ships the spool to the topic in order, with an idempotent
//! producer (`acks=all`), keyed by partner id. A broker outage or a full producer queue only
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
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::{EmbeddedLog, EventLog, EventLogError, LogConsumer, LogRecord};

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
    pub linger_ms: u32,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, …), applied last.
    pub properties: BTreeMap<String, String>,
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
            linger_ms: 5,
            properties: BTreeMap::new(),
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
        let mut c = config.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger_ms.to_string())
            .set("batch.num.messages", "10000")
            // Waiting in the spool is safe; give up on a record only after 2 minutes so a
            // long outage surfaces as an error and a fresh producer, never as a silent drop.
            .set("message.timeout.ms", "120000")
            .set("queue.buffering.max.messages", "200000");
        config.apply_properties(&mut c);
        let producer = c.create().map_err(|e| kafka_err("producer", e))?;
        Ok(KafkaProducer { producer })
    }

    /// Sends call events to `topic` as gateways do (JSON, keyed by partner id) and waits until
    /// all are acknowledged.
    pub async fn send_events(
        &self,
        topic: &str,
        events: &[CallEvent],
    ) -> Result<(), EventLogError> {
        let payloads = events
            .iter()
            .map(crate::encode)
            .collect::<Result<Vec<_>, _>>()?;
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
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "./peage-data/spool".into(),
            max_events: 10_000_000,
            when_full: SpoolFullPolicy::FailOpen,
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
}

/// The gateway side of the Kafka log: append to the spool, forward in the background.
/// `consumer` is not offered here (the aggregator uses [`KafkaConsumer`]).
pub struct SpooledKafkaLog {
    spool: EmbeddedLog,
    config: SpoolConfig,
    stats: Arc<SpoolStats>,
    forwarded_to: Arc<AtomicU64>,
    full_logged: AtomicBool,
}

impl SpooledKafkaLog {
    /// Opens the spool and starts the forwarder on the current runtime.
    pub async fn start(
        kafka: &KafkaConfig,
        spool: SpoolConfig,
    ) -> Result<Arc<SpooledKafkaLog>, EventLogError> {
        let log = EmbeddedLog::open(&spool.dir)?;
        let consumer = log.consumer(FORWARDER_GROUP).await?;
        let backlog = consumer.lag().await?;
        let forwarded_to = Arc::new(AtomicU64::new(log.end_offset() - backlog));
        let stats = Arc::new(SpoolStats::default());
        if backlog > 0 {
            tracing::info!(
                backlog,
                "kafka spool: replaying events left from the last run"
            );
        }
        KafkaProducer::new(kafka)?; // fail fast on a bad configuration
        let (st, fwd) = (Arc::clone(&stats), Arc::clone(&forwarded_to));
        tokio::spawn(forward(consumer, kafka.clone(), backlog, st, fwd));
        Ok(Arc::new(SpooledKafkaLog {
            spool: log,
            config: spool,
            stats,
            forwarded_to,
            full_logged: AtomicBool::new(false),
        }))
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    /// Events spooled but not yet acknowledged by Kafka.
    pub fn pending(&self) -> u64 {
        self.spool
            .end_offset()
            .saturating_sub(self.forwarded_to.load(Ordering::Relaxed))
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

#[derive(Deserialize)]
struct PartnerKey<'a> {
    #[serde(borrow)]
    partner_id: std::borrow::Cow<'a, str>,
}

fn partner_key(payload: &[u8]) -> Vec<u8> {
    // A record without a partner id still goes out (the aggregator dead-letters it).
    serde_json::from_slice::<PartnerKey>(payload)
        .map(|k| k.partner_id.into_owned().into_bytes())
        .unwrap_or_default()
}

async fn forward(
    mut consumer: Box<dyn LogConsumer>,
    kafka: KafkaConfig,
    mut resend_backlog: u64,
    stats: Arc<SpoolStats>,
    forwarded_to: Arc<AtomicU64>,
) {
    let mut producer = None;
    // A batch whose delivery failed, to send again (flagged: it may have landed).
    let mut retry: Option<Vec<LogRecord>> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let (records, resend) = match retry.take() {
            Some(r) => (r, true),
            None => match consumer.poll(20_000, Duration::from_millis(200)).await {
                Ok(r) if r.is_empty() => continue,
                Ok(r) => (r, false),
                Err(e) => {
                    tracing::error!(error = %e, "kafka spool: cannot read the spool");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let keys: Vec<Vec<u8>> = records.iter().map(|r| partner_key(&r.payload)).collect();
        let out: Vec<OutRecord<'_>> = records
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (r, key))| OutRecord {
                key,
                payload: &r.payload,
                // Records unacknowledged when this process started may have been sent by the
                // last one.
                possible_duplicate: resend || (i as u64) < resend_backlog,
                headers: &[],
            })
            .collect();
        let p = match &producer {
            Some(p) => p,
            None => match KafkaProducer::new(&kafka) {
                Ok(p) => producer.insert(p),
                Err(e) => {
                    tracing::error!(error = %e, "kafka spool: cannot create the producer");
                    retry = Some(records);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        match p.send_all(&kafka.topic, &out).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                resend_backlog = resend_backlog.saturating_sub(records.len() as u64);
                if let Err(e) = consumer.commit(&records).await {
                    tracing::error!(error = %e, "kafka spool: cannot record progress; records will be re-sent after a restart (flagged)");
                }
                let last = records.last().map_or(0, |r| r.offset + 1);
                forwarded_to.store(last, Ordering::Relaxed);
                stats
                    .forwarded
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.forward_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, events = records.len(), retry_in_ms = backoff.as_millis() as u64,
                    "kafka spool: forwarding failed; the events stay in the spool and are sent again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // A fresh producer starts clean of any fatal idempotence state.
                producer = None;
                retry = Some(records);
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
                    self.stats
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
        self.spool.append(events).await
    }

    async fn consumer(&self, _group: &str) -> Result<Box<dyn LogConsumer>, EventLogError> {
        Err(EventLogError::Kafka(
            "the spooled producer does not consume; use KafkaConsumer".into(),
        ))
    }

    fn accepting(&self) -> bool {
        self.config.when_full == SpoolFullPolicy::FailOpen
            || self.pending() < self.config.max_events
    }
}

/// Counts rebalances so the aggregator knows when partition ownership may have changed.
#[derive(Clone, Default)]
pub struct RebalanceEpoch(Arc<AtomicU64>);

impl ClientContext for RebalanceEpoch {}

impl ConsumerContext for RebalanceEpoch {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "kafka consumer: partitions assigned");
            }
            Rebalance::Revoke(_) => tracing::info!("kafka consumer: partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka consumer: rebalance error"),
        }
    }
}

/// A consumer-group member with manual commits. Offsets are committed after the records are
/// stored; they are advisory for exactly once (the store's own positions decide) but keep the
/// group's lag meaningful.
pub struct KafkaConsumer {
    consumer: StreamConsumer<RebalanceEpoch>,
    epoch: RebalanceEpoch,
    topic: String,
}

impl KafkaConsumer {
    /// Joins `group`. With `instance_id` (Kafka static membership), a restarted member takes
    /// its partitions back at once instead of waiting for the broker to expire the old one.
    pub fn new(
        config: &KafkaConfig,
        group: &str,
        instance_id: Option<&str>,
    ) -> Result<KafkaConsumer, EventLogError> {
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
            .set("fetch.min.bytes", "1");
        config.apply_properties(&mut c);
        let epoch = RebalanceEpoch::default();
        let consumer: StreamConsumer<RebalanceEpoch> = c
            .create_with_context(epoch.clone())
            .map_err(|e| kafka_err("consumer", e))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(|e| kafka_err("subscribe", e))?;
        Ok(KafkaConsumer {
            consumer,
            epoch,
            topic: config.topic.clone(),
        })
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

#[async_trait]
impl LogConsumer for KafkaConsumer {
    /// Waits up to `wait` for records and keeps collecting until `max` or until `wait` has
    /// passed (a batch by size and time).
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, EventLogError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            // Fast path: a record librdkafka already fetched, without arming a timer.
            if let Some(Ok(m)) = futures::FutureExt::now_or_never(self.consumer.recv()) {
                out.push(Self::record(&m));
                continue;
            }
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => out.push(Self::record(&m)),
                Ok(Err(e)) => {
                    // Transient broker errors are reported and retried by librdkafka.
                    tracing::warn!(error = %e, "kafka consumer");
                    if out.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            }
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
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(o as i64))
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
        &self.topic
    }

    fn assignment_epoch(&self) -> u64 {
        self.epoch.0.load(Ordering::SeqCst)
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
