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

#[path = "../common/cpu.rs"]
mod cpu;
use cpu::cpu_of;

/// The allocator `peage aggregator` runs with (services/peage/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Waits (up to 2 minutes) until ClickHouse has no merge running, so that one phase's
/// background merges do not take the next phase's cores. Answers how long it waited.
async fn quiet_merges(store: &ClickHouseUsageStore) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        let running: u64 = store
            .client()
            .query("SELECT count() FROM system.merges")
            .fetch_one()
            .await?;
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(t.elapsed())
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// A number the run is given in the environment, or `default`.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The aggregator's batch size (`PEAGE_BENCH_MAX_BATCH`, default 100,000 as `peage aggregator`).
fn max_batch() -> usize {
    setting("PEAGE_BENCH_MAX_BATCH", 100_000)
}

/// Inserts a batch is split into (`PEAGE_BENCH_PARALLEL_INSERTS`, default as `peage aggregator`).
fn parallel_inserts() -> usize {
    setting("PEAGE_BENCH_PARALLEL_INSERTS", 2)
}

fn cores_f() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The processes whose CPU the benchmark accounts for: the broker, ClickHouse, and this one
/// (the consumer, the inserting client, or the aggregator, phase by phase).
struct Cpu {
    broker: String,
    clickhouse: String,
}

impl Cpu {
    fn new() -> Cpu {
        let pid = |env: &str, file: &str| {
            std::env::var(env).unwrap_or_else(|_| {
                std::fs::read_to_string(format!("/tmp/peage-services/{file}.pid"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
        };
        Cpu {
            broker: pid("PEAGE_BENCH_BROKER_PID", "kafka"),
            clickhouse: pid("PEAGE_BENCH_CLICKHOUSE_PID", "clickhouse"),
        }
    }

    /// (broker, ClickHouse, this process) CPU so far.
    fn now(&self) -> [Duration; 3] {
        [
            cpu_of(&self.broker),
            cpu_of(&self.clickhouse),
            cpu_of("self"),
        ]
    }

    /// CPU µs per event of each, between two readings.
    fn per_event(a: [Duration; 3], b: [Duration; 3], n: u64) -> [f64; 3] {
        [0, 1, 2].map(|i| (b[i] - a[i]).as_secs_f64() * 1e6 / n.max(1) as f64)
    }
}

/// Runs `members` aggregators in one consumer group on `kafka`'s topic into database `db`,
/// until it holds `n` rows. With `then_produce`, the group first settles on the empty topic
/// (tansu staggers the members' joins, and each assignment waits out one insert deadline),
/// then the events are produced: the rate is the group's steady one. Answers (events/s after
/// the first insert landed, the store, CPU µs per event of broker, ClickHouse and this
/// process).
async fn aggregate(
    kafka: &KafkaConfig,
    db: &str,
    members: usize,
    n: u64,
    cpu: &Cpu,
    then_produce: Option<&[CallEvent]>,
) -> anyhow::Result<(f64, Arc<ClickHouseUsageStore>, [f64; 3])> {
    let store = Arc::new(clickhouse(db).await?);
    let waited = quiet_merges(&store).await?;
    eprintln!(
        "  (waited {} ms for ClickHouse's merges)",
        waited.as_millis()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut tasks, mut stats) = (Vec::new(), Vec::new());
    for _ in 0..members {
        let agg = Aggregator::new(
            Box::new(KafkaConsumer::new(kafka, &format!("{db}-agg"), None)?),
            store.clone(),
            Box::new(KafkaDeadLetters::new(kafka)?),
            AggregatorConfig {
                max_batch: max_batch(),
                poll_wait: Duration::from_millis(200),
                parallel_inserts: parallel_inserts(),
                ..Default::default()
            },
        );
        stats.push(agg.stats());
        tasks.push(tokio::spawn(agg.run(stop_rx.clone())));
    }
    if let Some(events) = then_produce {
        tokio::time::sleep(Duration::from_secs(40)).await;
        let producer = KafkaProducer::new(kafka)?;
        for chunk in events.chunks(20_000) {
            producer.send_events(&kafka.topic, chunk).await?;
        }
    }
    let mut first = None;
    let started = Instant::now();
    let mut stored = 0;
    // Progress from the aggregators' own counts: asking ClickHouse every 20 ms would scan the
    // table each time and take its CPU from the inserts being measured.
    while stored < n && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stored = stats
            .iter()
            .map(|s| s.inserted.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if stored > 0 && first.is_none() {
            first = Some((Instant::now(), stored, cpu.now()));
        }
    }
    let (at, first_rows, cpu0) = first.unwrap_or((Instant::now(), 0, cpu.now()));
    // Rate over the rows after the first insert landed (group join and settling excluded).
    let ingest = rate(stored.saturating_sub(first_rows), at.elapsed());
    let per_event = Cpu::per_event(cpu0, cpu.now(), stored.saturating_sub(first_rows));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await??;
    }
    Ok((ingest, store, per_event))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PEAGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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

    let cpu = Cpu::new();
    // Reference 1: the broker's own consume rate (bare consumer, no decoding, no storage).
    let cpu_consume0 = cpu.now();
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
    let cpu_consume = Cpu::per_event(cpu_consume0, cpu.now(), n);
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
    let cpu_bulk0 = cpu.now();
    for chunk in logged.chunks(100_000) {
        reference.insert_logged("reference", chunk).await?;
    }
    let bulk = rate(n, t.elapsed());
    let cpu_bulk = Cpu::per_event(cpu_bulk0, cpu.now(), n);
    eprintln!("  clickhouse bulk insert {bulk:.0}/s");

    // Péage: the aggregator (the same code `peage aggregator` runs), Kafka → ClickHouse; then
    // two aggregators in one group, on the same topic into a database of their own.
    let (ingest, store, cpu_agg) = aggregate(&kafka, &run, 1, n, &cpu, None).await?;
    eprintln!("  one aggregator {ingest:.0}/s");
    let kafka_two = KafkaConfig {
        topic: format!("{run}.two"),
        ..kafka.clone()
    };
    ensure_topics(&kafka_two).await?;
    let (ingest_two, two, _) =
        aggregate(&kafka_two, &format!("{run}_two"), 2, n, &cpu, Some(&events)).await?;
    let two_rows = two.raw_totals(None).await?.calls;
    eprintln!("  two aggregators {ingest_two:.0}/s");
    let rows = store.raw_totals(None).await?.calls;
    let distinct: u64 = store
        .client()
        .query("SELECT uniqExact(id) FROM call_events")
        .fetch_one()
        .await?;
    let lost = n.saturating_sub(distinct);
    let duplicated = rows - distinct;
    let two_distinct: u64 = two
        .client()
        .query("SELECT uniqExact(id) FROM call_events")
        .fetch_one()
        .await?;
    let (lost_two, dup_two) = (n.saturating_sub(two_distinct), two_rows - two_distinct);
    // What each event costs in CPU, by process, in each phase; on a machine of C cores the
    // pipeline cannot pass C ÷ (the sum of its costs).
    let total = |c: [f64; 3]| c.iter().sum::<f64>();
    let bound = cores_f() * 1e6 / total(cpu_agg);
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
         one aggregator, 4 partitions, batches of {batch} split into {ways} parallel inserts by partition, ClickHouse lz4 {lz4}. {n} events of ~450 bytes.\n\n\
         | measure | events/s |\n|---|---:|\n\
         | broker produce (idempotent, acks=all, lz4) | {produce:.0} |\n\
         | reference: broker consume (bare consumer) | {consume:.0} |\n\
         | reference: ClickHouse bulk insert (100k-row batches, same schema and views) | {bulk:.0} |\n\
         | **Péage aggregator, Kafka → ClickHouse** | **{ingest:.0}** |\n\
         | two aggregators in one group (same process; settled group, events produced while it runs) | {ingest_two:.0} |\n\n\
         Péage / slower reference = **{pct:.0} %** (aim ≥ 90 %). Lost: **{lost}**, duplicated: **{duplicated}** \
         ({rows} rows, {distinct} distinct ids). Two aggregators: {scale:.2}× one; lost {lost_two}, duplicated {dup_two}.\n\n\
         CPU µs per event (broker / ClickHouse / the benchmark's process): consume reference {c0:.1} / {c1:.1} / {c2:.1}; \
         bulk-insert reference {b0:.1} / {b1:.1} / {b2:.1}; aggregator run {a0:.1} / {a1:.1} / {a2:.1} = {at:.1} µs, \
         so {cores} cores bound the pipeline at about {bound:.0} events/s.\n",
        scale = ingest_two / ingest,
        batch = max_batch(),
        ways = parallel_inserts(),
        c0 = cpu_consume[0], c1 = cpu_consume[1], c2 = cpu_consume[2],
        b0 = cpu_bulk[0], b1 = cpu_bulk[1], b2 = cpu_bulk[2],
        a0 = cpu_agg[0], a1 = cpu_agg[1], a2 = cpu_agg[2], at = total(cpu_agg),
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
    for db in [run.clone(), format!("{run}_ref"), format!("{run}_two")] {
        store
            .client()
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await
            .ok();
    }
    anyhow::ensure!(
        lost == 0 && duplicated == 0 && lost_two == 0 && dup_two == 0,
        "lost {lost}, duplicated {duplicated}; two aggregators: lost {lost_two}, duplicated {dup_two}"
    );
    Ok(())
}
