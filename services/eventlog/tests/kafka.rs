//! The Kafka log against a real broker (`deploy/dev/services.sh start`: tansu on :9092).
//! It runs only with `--features real-servers` (as `deploy/dev/test-all.sh` runs it); without it
//! it is listed as ignored, and with it an unreachable broker fails it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use peage_core::CallEvent;
use peage_eventlog::kafka::{
    ensure_topics, KafkaConfig, KafkaConsumer, SpoolConfig, SpooledKafkaLog,
};
use peage_eventlog::{EventLog, LogConsumer};

fn config() -> KafkaConfig {
    let brokers = std::env::var("PEAGE_TEST_KAFKA").unwrap_or("127.0.0.1:9092".into());
    let addr: std::net::SocketAddr = brokers
        .parse()
        .unwrap_or_else(|e| panic!("PEAGE_TEST_KAFKA={brokers}: not host:port ({e})"));
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!("no Kafka broker on {brokers}: {e} (deploy/dev/services.sh start)");
    }
    let topic = format!("test.calls.{}", uuid::Uuid::now_v7().simple());
    KafkaConfig {
        brokers,
        dead_letter_topic: format!("{topic}.dead"),
        topic,
        partitions: 3,
        ..Default::default()
    }
}

/// A CI run without the switch would list the broker test as ignored and pass: it fails instead.
#[cfg(not(feature = "real-servers"))]
#[test]
fn ci_runs_the_real_server_tests() {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: run with --features real-servers, so that the Kafka log is tested"
    );
}

fn event(i: u64) -> CallEvent {
    let mut e: CallEvent = serde_json::from_str(include_str!(
        "../../../schemas/events/examples/rest_call.json"
    ))
    .unwrap();
    e.id = uuid::Uuid::now_v7();
    e.partner_id = format!("prt_{:020x}", i % 5);
    e.latency_us = i;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs a Kafka-wire broker: cargo test --features real-servers (deploy/dev/services.sh start)"
)]
async fn spooled_events_reach_the_topic_in_order_per_partner_and_a_restart_flags_the_unacknowledged(
) {
    let kafka = config();
    ensure_topics(&kafka).await.unwrap();
    ensure_topics(&kafka).await.unwrap(); // idempotent
    let dir = tempfile::tempdir().unwrap();
    let spool = SpoolConfig {
        dir: dir.path().join("spool"),
        ..Default::default()
    };
    let log = SpooledKafkaLog::start(&kafka, spool.clone()).await.unwrap();
    let events: Vec<CallEvent> = (0..5_000).map(event).collect();
    for chunk in events.chunks(500) {
        log.append(chunk).await.unwrap();
    }
    assert_eq!(
        log.drain(Duration::from_secs(60)).await,
        0,
        "spool drained to Kafka"
    );
    assert_eq!(
        log.stats()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        5_000
    );

    let mut consumer = KafkaConsumer::new(&kafka, "test-group", None).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 5_000 && Instant::now() < deadline {
        got.extend(
            consumer
                .poll(2_000, Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(got.len(), 5_000);
    assert!(got.iter().all(|r| !r.possible_duplicate));
    // Per partner, the order of appends is kept (one partner, one partition).
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut partition_of: HashMap<String, u32> = HashMap::new();
    for r in &got {
        let e: CallEvent = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(
            *partition_of
                .entry(e.partner_id.clone())
                .or_insert(r.partition),
            r.partition
        );
        if let Some(prev) = last.insert(e.partner_id.clone(), e.latency_us) {
            assert!(prev < e.latency_us, "order kept for {}", e.partner_id);
        }
    }
    consumer.commit(&got).await.unwrap();
    drop(consumer);
    drop(log);

    // Records left unacknowledged in the spool when a gateway stops are re-sent, flagged.
    std::fs::write(
        dir.path().join("spool/consumers/kafka-forwarder.offset"),
        "4990",
    )
    .unwrap();
    let log = SpooledKafkaLog::start(&kafka, spool).await.unwrap();
    assert_eq!(log.drain(Duration::from_secs(60)).await, 0);
    let mut consumer = KafkaConsumer::new(&kafka, "test-group", None).unwrap();
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while again.len() < 10 && Instant::now() < deadline {
        again.extend(
            consumer
                .poll(100, Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        again.len(),
        10,
        "the group resumed after its commit and got only the re-sent"
    );
    assert!(again.iter().all(|r| r.possible_duplicate));
}
