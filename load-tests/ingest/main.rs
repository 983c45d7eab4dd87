//! Ingest benchmark: broker → aggregator → ClickHouse, as fast as it goes, against the servers
//! `deploy/dev/services.sh start` runs. Prints events/s, lost and duplicated counts, beside two
//! references measured in the same run on the same rows:
//!   - the broker's own consume rate (a bare consumer reading the topic, no processing);
//!   - ClickHouse's own bulk insert rate (the same rows inserted in 100k-row batches).
//!
//! It appends the table to load-tests/RESULTS.md. Run: load-tests/ingest/run.sh [N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use peage_aggregator::{Aggregator, AggregatorConfig};
use peage_core::{CallEvent, Env};
use peage_eventlog::kafka::{
    ensure_topics, KafkaConfig, KafkaConsumer, KafkaDeadLetters, KafkaProducer,
};
use peage_eventlog::LogConsumer;
use peage_usage_store::{ClickHouseConfig, ClickHouseUsageStore, LoggedEvent, UsageStore};
use rust_decimal::Decimal;

fn event(i: u64) -> CallEvent {
    CallEvent {
        id: uuid::Uuid::now_v7(),
        time: peage_core::event::truncate_to_micros(chrono::Utc::now()),
        partner_id: format!("prt_{:020x}", i % 1000),
        key_id: format!("key_{:020x}", i % 3000),
        env: Env::Live,
        api: ["weather", "maps", "geo"][(i % 3) as usize].into(),
        version: "v2".into(),
        operation: "GET /forecast/{city}".into(),
        method: "GET".into(),
        status: 200,
        latency_us: 800 + i % 5000,
        request_bytes: 120,
        response_bytes: 900 + i % 400,
        units: Decimal::ONE,
        gateway_id: "gw-bench".into(),
        attributes: Default::default(),
    }
}

async fn clickhouse(db: &str) -> anyhow::Result<ClickHouseUsageStore> {
    let store = ClickHouseUsageStore::connect(&ClickHouseConfig {
        url: std::env::var("PEAGE_BENCH_CLICKHOUSE").unwrap_or("http://127.0.0.1:8123".into()),
        database: db.into(),
        validation: false,
        compression: !std::env::var("PEAGE_BENCH_CLICKHOUSE_LZ4").is_ok_and(|v| v == "0"),
        ..Default::default()
    })
    .await?;
    store.migrate().await?;
    Ok(store)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500_000);
    let run = format!("bench_{}", &uuid::Uuid::now_v7().simple().to_string()[..16]);
    let kafka = KafkaConfig {
        brokers: std::env::var("PEAGE_BENCH_KAFKA").unwrap_or("127.0.0.1:9092".into()),
        topic: format!("{run}.calls"),
        dead_letter_topic: format!("{run}.dead"),
        partitions: 4,
        ..Default::default()
    };
    ensure_topics(&kafka).await?;
    eprintln!("ingest bench: {n} events, topic {}", kafka.topic);
    let events: Vec<CallEvent> = (0..n).map(event).collect();

    // Produce (the broker's produce rate, for the record).
    let producer = KafkaProducer::new(&kafka)?;
    let t = Instant::now();
    for chunk in events.chunks(20_000) {
        producer.send_events(&kafka.topic, chunk).await?;
    }
    let produce = rate(n, t.elapsed());
    eprintln!("  produced at {produce:.0}/s");

    // Reference 1: the broker's own consume rate (bare consumer, no decoding, no storage).
    let mut bare = KafkaConsumer::new(&kafka, &format!("{run}-bare"), None)?;
    let mut got = 0u64;
    let mut t0 = None;
    while got < n {
        let batch = bare.poll(20_000, Duration::from_millis(200)).await?;
        if !batch.is_empty() && t0.is_none() {
            t0 = Some(Instant::now()); // from the first record: group join time excluded
        }
        got += batch.len() as u64;
    }
    let consume = rate(n, t0.unwrap().elapsed());
    drop(bare);
    eprintln!("  broker consume {consume:.0}/s");

    // Reference 2: ClickHouse's own bulk insert of the same rows (same schema, same views).
    let reference = clickhouse(&format!("{run}_ref")).await?;
    let logged: Vec<LoggedEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| LoggedEvent {
            partition: 0,
            offset: i as u64,
            event: e.clone(),
        })
        .collect();
    let t = Instant::now();
    for chunk in logged.chunks(100_000) {
        reference.insert_logged("reference", chunk).await?;
    }
    let bulk = rate(n, t.elapsed());
    eprintln!("  clickhouse bulk insert {bulk:.0}/s");

    // Péage: the aggregator (the same code `peage aggregator` runs), Kafka → ClickHouse.
    let store = Arc::new(clickhouse(&run).await?);
    let agg = Aggregator::new(
        Box::new(KafkaConsumer::new(&kafka, &format!("{run}-agg"), None)?),
        store.clone(),
        Box::new(KafkaDeadLetters::new(&kafka)?),
        AggregatorConfig {
            max_batch: 20_000,
            poll_wait: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agg.run(stop_rx));
    let mut first = None;
    let started = Instant::now();
    let mut stored = 0;
    while stored < n && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stored = store.raw_totals(None).await?.calls;
        if stored > 0 && first.is_none() {
            first = Some(Instant::now());
        }
    }
    let ingest_time = first.map(|f| f.elapsed()).unwrap_or_default();
    // Rate over the rows after the first insert landed (group join excluded, as above).
    let first_rows = 20_000.min(n);
    let ingest = rate(stored.saturating_sub(first_rows), ingest_time);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    task.await??;
    let rows = store.raw_totals(None).await?.calls;
    let distinct: u64 = store
        .client()
        .query("SELECT uniqExact(id) FROM call_events")
        .fetch_one()
        .await?;
    let lost = n.saturating_sub(distinct);
    let duplicated = rows - distinct;
    let slower = consume.min(bulk);
    let ratio = ingest / slower;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let table = format!(
        "\n## Ingest — {date}\n\nMachine: {cores} cores, {cpu}. Broker: {broker}, ClickHouse 18.16 (Debian), \
         one aggregator, 4 partitions, batches of 20,000, ClickHouse lz4 {lz4}. {n} events of ~450 bytes.\n\n\
         | measure | events/s |\n|---|---:|\n\
         | broker produce (idempotent, acks=all, lz4) | {produce:.0} |\n\
         | reference: broker consume (bare consumer) | {consume:.0} |\n\
         | reference: ClickHouse bulk insert (100k-row batches, same schema and views) | {bulk:.0} |\n\
         | **Péage aggregator, Kafka → ClickHouse** | **{ingest:.0}** |\n\n\
         Péage / slower reference = **{pct:.0} %** (aim ≥ 90 %). Lost: **{lost}**, duplicated: **{duplicated}** \
         ({rows} rows, {distinct} distinct ids).\n",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        lz4 = if std::env::var("PEAGE_BENCH_CLICKHOUSE_LZ4").is_ok_and(|v| v == "0") { "off" } else { "on (the default)" },
        broker = std::env::var("PEAGE_BENCH_BROKER_NAME").unwrap_or("tansu 0.6, durable SQLite engine (what CI runs)".into()),
        pct = ratio * 100.0,
    );
    println!("{table}");
    let results = concat!(env!("CARGO_MANIFEST_DIR"), "/../../load-tests/RESULTS.md");
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results)?
        .write_all(table.as_bytes())?;
    for db in [run.clone(), format!("{run}_ref")] {
        store
            .client()
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await
            .ok();
    }
    anyhow::ensure!(
        lost == 0 && duplicated == 0,
        "lost {lost}, duplicated {duplicated}"
    );
    Ok(())
}
