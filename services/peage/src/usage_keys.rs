//! The distributed control API's filter of stored usage-event keys: `POST /v1/events` asks it
//! before ClickHouse, and a key it has never seen is answered "not stored" without a query
//! (docs/events.md, "Durable, and counted once").
//!
//! Why: each duplicate look-up costs ClickHouse some 30 ms of CPU for a round of 800 keys at a
//! million stored events, whatever the index granularity; measured on
//! `load-tests/events/run.sh`, the look-ups were most of what held distributed mode back. Nearly
//! every key is new (ids repeat only when a request is retried), so not asking is the lever.
//!
//! What makes "never seen" mean "not stored": every key in ClickHouse reached it through the
//! usage topic and the aggregator. The filter learns
//! 1. the keys already stored, with one scan of `usage_events`, after reading where the stored
//!    events stand in each partition (`log_positions`). An insert with materialized views is
//!    not atomic in ClickHouse: a position may be visible before its rows, or after. So
//! 2. it reads the topic, outside any consumer group, from [`MARGIN`] records before those
//!    positions (keys read twice are harmless), and keeps following it;
//! 3. the keys this instance appends, before it appends them: once stored, this instance never
//!    answers "not stored" for them, however far behind its reading is.
//!
//! It answers only once it has read each partition up to where it stood when the reading
//! began; until then, and after an error at the start until it has caught up again, every key
//! goes to ClickHouse as before. Once it follows the topic nothing stops it: the Kafka client
//! reconnects by itself, and it asks the broker where partitions stand (ListOffsets) only when
//! it starts, since a loaded broker may take long to answer those (tansu did, under the
//! events bench). A key the reader has not reached yet while the aggregator has stored
//! it (the reader behind the aggregator) can be answered "not stored" wrongly. That never
//! stores a duplicate: the aggregator checks every usage event against the store. It only
//! weakens the answer (accepted instead of duplicate; a reused id dead-lettered by the
//! aggregator instead of refused), as a retry to another instance already is while an event
//! is on its way to ClickHouse.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use peage_billing::service::events::KnownKeys;
use peage_eventlog::kafka::{KafkaConfig, TopicReader};
use peage_usage_store::{ClickHouseUsageStore, KeySet, UsageKey, UsageStore};
use uuid::Uuid;

/// Records read again before the stored positions of each partition: more than the
/// aggregator's largest batches in flight (5,000 records by default), whose rows may become
/// visible after their position.
const MARGIN: i64 = 100_000;
/// Keys added to the set under one hold of its lock.
const CHUNK: usize = 10_000;
/// How often the reader looks for partitions added to the topic.
const PARTITIONS_EVERY: Duration = Duration::from_secs(30);
/// How long the reader waits after an error before it starts again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The filter (see the module's documentation), and how it answered.
#[derive(Default)]
pub struct TopicKeyFilter {
    keys: KeySet,
    /// Keys answered "not stored" without asking ClickHouse.
    answered: AtomicU64,
    /// Keys sent to ClickHouse: the filter was not ready, or had seen them (or a false
    /// "maybe").
    asked: AtomicU64,
}

impl KnownKeys for TopicKeyFilter {
    fn keep_maybe_stored(&self, keys: &mut Vec<UsageKey>) {
        let before = keys.len();
        if let Some(set) = self.keys.when_ready() {
            keys.retain(|(_, key)| set.may_hold(key));
        }
        self.answered
            .fetch_add((before - keys.len()) as u64, Relaxed);
        self.asked.fetch_add(keys.len() as u64, Relaxed);
    }

    fn appending(&self, keys: &mut dyn Iterator<Item = Uuid>) {
        self.keys.add(keys);
    }
}

impl TopicKeyFilter {
    /// Starts learning the keys of `usage` and of the usage topic `kafka` names, on a thread
    /// of its own (it stops once the filter is dropped). Call from within the Tokio runtime.
    pub fn start(
        kafka: &KafkaConfig,
        usage: Arc<ClickHouseUsageStore>,
    ) -> anyhow::Result<Arc<TopicKeyFilter>> {
        Self::start_with_margin(kafka, usage, MARGIN)
    }

    fn start_with_margin(
        kafka: &KafkaConfig,
        usage: Arc<ClickHouseUsageStore>,
        margin: i64,
    ) -> anyhow::Result<Arc<TopicKeyFilter>> {
        let filter = Arc::new(TopicKeyFilter::default());
        let follower = Follower {
            filter: Arc::downgrade(&filter),
            kafka: kafka.clone(),
            usage,
            runtime: tokio::runtime::Handle::current(),
            margin,
            scanned: false,
            next: BTreeMap::new(),
        };
        std::thread::Builder::new()
            .name("peage-usage-keys".into())
            .spawn(move || follower.run())?;
        Ok(filter)
    }

    pub fn is_ready(&self) -> bool {
        self.keys.is_ready()
    }

    /// `peage_events_key_filter_ready`, and `peage_events_key_lookups_total` by answer.
    pub fn exposition(&self) -> String {
        let (ready, name) = (
            "peage_events_key_filter_ready",
            "peage_events_key_lookups_total",
        );
        format!(
            "# HELP {ready} 1 once the usage key filter has read the usage topic up to its end; 0 while every key is looked up in ClickHouse.\n\
             # TYPE {ready} gauge\n{ready} {}\n\
             # HELP {name} Usage-event keys POST /v1/events checked for an earlier copy: answered by the key filter alone (filter), or by ClickHouse (store).\n\
             # TYPE {name} counter\n\
             {name}{{answer=\"filter\"}} {}\n{name}{{answer=\"store\"}} {}\n",
            u8::from(self.is_ready()),
            self.answered.load(Relaxed),
            self.asked.load(Relaxed),
        )
    }
}

/// The reading thread's state, kept across errors.
struct Follower {
    filter: Weak<TopicKeyFilter>,
    kafka: KafkaConfig,
    usage: Arc<ClickHouseUsageStore>,
    runtime: tokio::runtime::Handle,
    /// Records read again before the stored positions ([`MARGIN`]).
    margin: i64,
    /// The stored keys are in the filter: after an error, reading resumes at `next`.
    scanned: bool,
    /// Where reading resumes, by partition.
    next: BTreeMap<i32, i64>,
}

/// Why the reading stopped: the filter is gone, or an error to retry after.
enum Stop {
    Dropped,
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Stop {
        Stop::Failed(e.to_string())
    }
}

impl Follower {
    fn run(mut self) {
        loop {
            match self.follow() {
                Ok(()) | Err(Stop::Dropped) => return,
                Err(Stop::Failed(e)) => {
                    let Some(filter) = self.filter.upgrade() else {
                        return;
                    };
                    filter.keys.set_ready(false);
                    tracing::warn!(
                        error = %e,
                        topic = %self.kafka.topic,
                        "usage key filter: reading stopped; every look-up asks ClickHouse until it has caught up again"
                    );
                }
            }
            std::thread::sleep(RETRY_AFTER);
        }
    }

    fn filter(&self) -> Result<Arc<TopicKeyFilter>, Stop> {
        self.filter.upgrade().ok_or(Stop::Dropped)
    }

    /// Learns the stored keys (once), then follows the topic until an error.
    fn follow(&mut self) -> Result<(), Stop> {
        let started = Instant::now();
        let mut reader = TopicReader::new(&self.kafka)?;
        let partitions = reader.partitions()?;
        if partitions.is_empty() {
            return Err(Stop::Failed(format!(
                "topic {} has no partition",
                self.kafka.topic
            )));
        }
        // Where each partition stands now: the filter answers once it has read this far.
        let marks = reader.watermarks(&partitions)?;
        let mut from = BTreeMap::new();
        if self.scanned {
            for (p, w) in &marks {
                from.insert(*p, self.next.get(p).copied().unwrap_or(w.low).max(w.low));
            }
        } else {
            let partitions: Vec<u32> = partitions.iter().map(|p| *p as u32).collect();
            let stored = self
                .runtime
                .block_on(self.usage.stored_positions(&self.kafka.topic, &partitions))?;
            for (p, w) in &marks {
                let at = stored
                    .get(&(*p as u32))
                    .map_or(w.low, |o| (*o as i64).saturating_add(1 - self.margin));
                from.insert(*p, at.max(w.low));
            }
            let filter = self.filter()?;
            let keys = self.runtime.block_on(
                self.usage
                    .scan_usage_keys(CHUNK, |chunk| filter.keys.add(chunk.drain(..))),
            )?;
            self.scanned = true;
            tracing::info!(
                keys,
                seconds = started.elapsed().as_secs_f64(),
                "usage key filter: the stored keys are in; reading the topic up to its end"
            );
        }
        reader.assign(&from)?;
        self.next = from;
        let mut behind: BTreeMap<i32, i64> = marks.iter().map(|(p, w)| (*p, w.high)).collect();
        let mut look_again = Instant::now() + PARTITIONS_EVERY;
        let mut keys = Vec::with_capacity(CHUNK);
        // From here on nothing fails: the client reconnects by itself, and the look for new
        // partitions is tried again later.
        loop {
            let filter = self.filter()?;
            reader.read(CHUNK, Duration::from_millis(500), |payload| {
                if let Some(key) = key_of_record(payload) {
                    keys.push(key);
                }
            });
            filter.keys.add(keys.drain(..));
            self.next.clone_from(reader.next_offsets());
            if !behind.is_empty() {
                behind.retain(|p, high| self.next.get(p).is_none_or(|at| at < high));
                if behind.is_empty() {
                    filter.keys.set_ready(true);
                    tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        "usage key filter: caught up with the usage topic; new keys are answered without ClickHouse"
                    );
                }
            }
            if Instant::now() >= look_again {
                look_again = Instant::now() + PARTITIONS_EVERY;
                match reader.partitions() {
                    Ok(now) if now.iter().any(|p| !self.next.contains_key(p)) => {
                        let mut from = self.next.clone();
                        for p in &now {
                            // From their start (an offset below it reads from the first left).
                            from.entry(*p).or_insert(0);
                        }
                        tracing::info!(
                            partitions = now.len(),
                            "usage key filter: the topic has new partitions; reading them from their start"
                        );
                        reader.assign(&from)?;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "usage key filter: cannot look for new partitions now");
                    }
                }
            }
        }
    }
}

/// The key of a usage-event record (UsageEvent v1 JSON); `None` for a record that is not one
/// (the aggregator dead-letters it: it is never stored).
fn key_of_record(payload: &[u8]) -> Option<Uuid> {
    // The key is the first field as Péage writes records: read it without parsing the rest.
    const HEAD: &[u8] = b"{\"key\":\"";
    if let Some(rest) = payload.strip_prefix(HEAD) {
        if rest.get(36) == Some(&b'"') {
            if let Ok(key) = Uuid::try_parse_ascii(&rest[..36]) {
                return Some(key);
            }
        }
    }
    #[derive(serde::Deserialize)]
    struct Keyed {
        key: Uuid,
    }
    serde_json::from_slice::<Keyed>(payload).ok().map(|k| k.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_key_is_read_from_its_head_or_from_anywhere_in_it() {
        let key = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let head = format!(r#"{{"key":"{key}","partner_id":"prt_a","cloudevent":{{"id":"1"}}}}"#);
        assert_eq!(key_of_record(head.as_bytes()), Some(key));
        let later = format!(r#"{{ "partner_id": "prt_a", "key": "{key}" }}"#);
        assert_eq!(key_of_record(later.as_bytes()), Some(key));
        for bad in [
            &b"not json"[..],
            br#"{"key":"not-a-uuid","partner_id":"prt_a"}"#,
            br#"{"partner_id":"prt_a"}"#,
            br#"{"key":"0123456789abcdef0123456789abcdef0"}"#,
        ] {
            assert_eq!(key_of_record(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_filter_answers_only_once_ready_and_counts_its_answers() {
        let filter = TopicKeyFilter::default();
        let (seen, fresh) = (Uuid::from_u128(1), Uuid::from_u128(2));
        filter.appending(&mut [seen].into_iter());
        let keys = || vec![("prt_a".to_string(), seen), ("prt_a".to_string(), fresh)];
        let mut asked = keys();
        filter.keep_maybe_stored(&mut asked);
        assert_eq!(asked, keys(), "not ready: every key goes to the store");
        filter.keys.set_ready(true);
        assert!(filter
            .exposition()
            .contains("\npeage_events_key_filter_ready 1\n"));
        let mut asked = keys();
        filter.keep_maybe_stored(&mut asked);
        assert_eq!(asked, vec![("prt_a".to_string(), seen)]);
        let text = filter.exposition();
        assert!(
            text.contains("peage_events_key_lookups_total{answer=\"filter\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("peage_events_key_lookups_total{answer=\"store\"} 3\n"),
            "{text}"
        );
    }

    /// Against the dev Kafka and ClickHouse: the filter learns the stored keys from
    /// ClickHouse, then reads the topic from after the stored positions (no margin here) and
    /// keeps following it; a key neither stored nor in what it read is "not stored".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(feature = "real-servers"),
        ignore = "needs Kafka and ClickHouse: cargo test --features real-servers"
    )]
    async fn the_filter_learns_stored_keys_then_follows_the_topic_from_the_stored_positions() {
        use peage_eventlog::kafka::{ensure_topics, KafkaProducer, OutRecord};
        use peage_usage_store::{ClickHouseConfig, Logged};

        let name = format!("peage_test_{}", Uuid::now_v7().simple());
        let usage = ClickHouseUsageStore::connect(&ClickHouseConfig {
            url: std::env::var("PEAGE_TEST_CLICKHOUSE_URL")
                .unwrap_or("http://127.0.0.1:8123".into()),
            database: name.clone(),
            validation: std::env::var("PEAGE_TEST_CLICKHOUSE_VALIDATION")
                .is_ok_and(|v| v == "true"),
            ..Default::default()
        })
        .await
        .expect("ClickHouse (deploy/dev/services.sh start)");
        usage.migrate().await.unwrap();
        let kafka = KafkaConfig {
            brokers: std::env::var("PEAGE_TEST_KAFKA").unwrap_or("127.0.0.1:9092".into()),
            topic: format!("{name}.usage"),
            dead_letter_topic: format!("{name}.usage.dead"),
            partitions: 1,
            idempotent: false,
            ..Default::default()
        };
        ensure_topics(&kafka)
            .await
            .expect("Kafka (deploy/dev/services.sh start)");
        let event = |id: &str| {
            let raw = serde_json::value::RawValue::from_string(format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"t","subject":"prt_a"}}"#
            ))
            .unwrap();
            peage_core::usage_event::parse_cloud_event(&raw)
                .unwrap()
                .into_usage_event("prt_a", chrono::Utc::now(), &Default::default())
                .unwrap()
        };
        let producer = KafkaProducer::new(&kafka).unwrap();
        let produce = |events: Vec<peage_core::UsageEvent>| {
            let (producer, topic) = (&producer, kafka.topic.clone());
            async move {
                let payloads: Vec<Vec<u8>> = events
                    .iter()
                    .map(|e| serde_json::to_vec(e).unwrap())
                    .collect();
                let records: Vec<OutRecord<'_>> = payloads
                    .iter()
                    .map(|p| OutRecord {
                        key: b"prt_a",
                        payload: p,
                        possible_duplicate: false,
                        headers: &[],
                    })
                    .collect();
                producer.send_all(&topic, &records).await.unwrap();
            }
        };
        // Offsets 0 to 2 on the topic; ClickHouse holds 0 and 1, and an event whose record
        // retention removed long ago (stored at offset 2's position: the stored end is 2).
        let [e0, e1, e2, old, later, never] =
            ["e0", "e1", "e2", "old", "later", "never"].map(event);
        produce(vec![e0.clone(), e1.clone(), e2.clone()]).await;
        let logged = |offset: u64, e: &peage_core::UsageEvent| Logged {
            partition: 0,
            offset,
            event: e.clone(),
        };
        usage
            .insert_usage_events(
                &kafka.topic,
                &[logged(0, &e0), logged(1, &e1), logged(2, &old)],
            )
            .await
            .unwrap();

        let filter = TopicKeyFilter::start_with_margin(&kafka, Arc::new(usage), 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !filter.is_ready() {
            assert!(Instant::now() < deadline, "not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kept = |events: &[&peage_core::UsageEvent]| {
            let mut keys: Vec<UsageKey> = events
                .iter()
                .map(|e| (e.partner_id.clone(), e.key))
                .collect();
            filter.keep_maybe_stored(&mut keys);
            keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>()
        };
        // Stored: from the scan. e2 was read neither from ClickHouse nor from the topic
        // (before the stored end): not stored, as ClickHouse would say.
        assert_eq!(
            kept(&[&e0, &e1, &e2, &old, &later, &never]),
            [e0.key, e1.key, old.key]
        );
        // A record appended now (by another instance) is learned from the topic.
        produce(vec![later.clone()]).await;
        while kept(&[&later]).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the new record was not read within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(kept(&[&never]).is_empty());
    }
}
