//! Events API benchmark: how many usage events per second `POST /v1/events` accepts, durable,
//! in batches of 100 over 8 connections, beside the raw append rate of the same log (the sink
//! the route writes to, driven directly from this process with the same batches and the same
//! concurrency) measured in the same run. At the end it waits until every accepted event is
//! counted, once, by a `count` meter over the bench's event type: as long as the catch-up
//! progresses (it gives up after two minutes without progress, or an hour in all).
//!
//! Run through load-tests/events/run.sh, which starts the server and passes:
//!   PEAGE_BENCH_MODE      embedded | distributed (which log the raw rate appends to)
//!   PEAGE_BENCH_URL       the control API serving POST /v1/events
//!   PEAGE_BENCH_TOKEN     a token allowed to write events and read usage (admin)
//!   PEAGE_BENCH_PARTNER   the partner the events are for (their `subject`)
//!   PEAGE_BENCH_SECONDS   how long each measure lasts (default 10)
//!   PEAGE_BENCH_RAW_DIR   a scratch directory for the raw log
//!   PEAGE_BENCH_KAFKA     brokers (distributed: the raw rate spools to a topic of its own)
//!   PEAGE_BENCH_TOPIC     that topic
//!   PEAGE_BENCH_PROCS     the processes whose CPU the route's measure accounts for, as
//!                         `name=PID` or `name=comm:COMMAND` (every process of that command
//!                         name), space-separated; this client is always counted
//!   PEAGE_BENCH_PERF      optional `PID[,PID…]` that perf records during the route's measure,
//!   PEAGE_BENCH_PERF_OUT  into this file
//!   PEAGE_BENCH_METRICS   metrics URLs (space-separated) whose usage consumer lag and events spool
//!                         the end waits on before it counts
//! It prints one `RESULT key=value ...` line last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use peage_billing::service::events::UsageEventSink;
use peage_core::usage_event::{parse_cloud_event, TimeWindow};
use peage_core::UsageEvent;

/// The allocator `peage` runs with (services/peage/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../common/cpu.rs"]
mod cpu;

const BATCH: usize = 100;
const CONNECTIONS: usize = 8;
const EVENT_TYPE: &str = "com.example.bench.tokens";

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (run load-tests/events/run.sh)"))
}

/// One CloudEvent as a client sends it: an LLM completion with a few properties, about 230
/// bytes. `run` and `n` make the id unique across runs and connections.
fn cloud_event(out: &mut String, run: &str, conn: usize, n: u64, partner: &str) {
    use std::fmt::Write;
    let _ = write!(
        out,
        r#"{{"specversion":"1.0","id":"{run}-{conn}-{n}","source":"/bench/llm","type":"{EVENT_TYPE}","subject":"{partner}","data":{{"tokens":{},"model":"{}","region":"{}"}}}}"#,
        n % 997 + 1,
        ["small", "large", "xl"][(n % 3) as usize],
        ["eu", "us"][(n % 2) as usize],
    );
}

fn batch_body(run: &str, conn: usize, first: u64, partner: &str) -> String {
    let mut body = String::with_capacity(BATCH * 240 + 2);
    body.push('[');
    for i in 0..BATCH as u64 {
        if i > 0 {
            body.push(',');
        }
        cloud_event(&mut body, run, conn, first + i, partner);
    }
    body.push(']');
    body
}

/// The raw rate: the same batches appended to the route's own sink, CONNECTIONS at a time.
async fn raw_rate(
    sink: Arc<dyn UsageEventSink>,
    partner: &str,
    seconds: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let window = TimeWindow {
        backfill: chrono::TimeDelta::days(35),
        ahead: chrono::TimeDelta::minutes(5),
    };
    let now = chrono::Utc::now();
    // Prepared once: the raw rate is the log's, not the parser's.
    let mut batches: Vec<Vec<UsageEvent>> = Vec::new();
    for b in 0..64u64 {
        let body = batch_body("raw", 0, b * BATCH as u64, partner);
        let raws: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(&body)?;
        let events = raws
            .iter()
            .map(|r| {
                parse_cloud_event(r)
                    .and_then(|e| e.into_usage_event(partner, now, &window))
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        batches.push(events);
    }
    let batches = Arc::new(batches);
    let appended = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (sink, batches, appended) = (sink.clone(), batches.clone(), appended.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while start.elapsed() < seconds {
                sink.append(&batches[i % batches.len()])
                    .await
                    .map_err(|e| anyhow::anyhow!("raw append: {}", e.0))?;
                appended.fetch_add(BATCH as u64, Ordering::Relaxed);
                i += CONNECTIONS;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((appended.load(Ordering::Relaxed), start.elapsed()))
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    /// Requests answered other than 200 (each is retried with the same batch).
    refused: AtomicU64,
    requests: AtomicU64,
}

async fn post_load(
    url: &str,
    token: &str,
    partner: &str,
    run: &str,
    seconds: Duration,
) -> anyhow::Result<(Arc<Counts>, Duration, Vec<Duration>)> {
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..CONNECTIONS {
        // A client each: one connection each, kept alive.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()?;
        let (url, token, partner, run, counts) = (
            format!("{url}/v1/events"),
            token.to_string(),
            partner.to_string(),
            run.to_string(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut latencies = Vec::new();
            while start.elapsed() < seconds {
                let body = batch_body(&run, conn, n, &partner);
                loop {
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(body.clone())
                        .send()
                        .await?;
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    if r.status() != 200 {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if status != 503 && status != 429 {
                            anyhow::bail!("POST /v1/events answered {status}: {text}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    let out: serde_json::Value = r.json().await?;
                    latencies.push(t.elapsed());
                    let field = |k: &str| out[k].as_u64().unwrap_or(0);
                    counts
                        .accepted
                        .fetch_add(field("accepted"), Ordering::Relaxed);
                    counts
                        .duplicates
                        .fetch_add(field("duplicates"), Ordering::Relaxed);
                    let rejected = out["rejected"].as_array().map_or(0, |a| a.len()) as u64;
                    if rejected > 0 {
                        anyhow::bail!("events rejected: {out}");
                    }
                    counts.rejected.fetch_add(rejected, Ordering::Relaxed);
                    break;
                }
                n += BATCH as u64;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok((counts, elapsed, latencies))
}

/// `PEAGE_BENCH_PERF=PID[,PID…]` and `PEAGE_BENCH_PERF_OUT=FILE`: perf records those
/// processes during the route's measure (from its second second to a second before its end).
fn start_perf(seconds: Duration) -> anyhow::Result<Option<std::process::Child>> {
    let Ok(pids) = std::env::var("PEAGE_BENCH_PERF") else {
        return Ok(None);
    };
    let out = env("PEAGE_BENCH_PERF_OUT")?;
    let span = seconds.as_secs().saturating_sub(2).max(1);
    // `PEAGE_BENCH_PERF_GRAPH=dwarf` for call graphs through code built without frame pointers.
    let (freq, graph) = match std::env::var("PEAGE_BENCH_PERF_GRAPH").as_deref() {
        Ok("dwarf") => (199, "--call-graph dwarf,16384"),
        _ => (999, "-g"),
    };
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 1; exec perf record -q -F {freq} {graph} -p {pids} -o {out} -- sleep {span}"
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("perf")?;
    Ok(Some(child))
}

/// CPU used by the processes of `PEAGE_BENCH_PROCS` (and this client) from one snapshot to
/// the next.
struct ProcCpu(Vec<(String, String)>);

impl ProcCpu {
    fn from_env() -> ProcCpu {
        let mut procs: Vec<(String, String)> = std::env::var("PEAGE_BENCH_PROCS")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        procs.push(("client".into(), "self".into()));
        ProcCpu(procs)
    }

    fn snapshot(&self) -> Vec<Duration> {
        self.0
            .iter()
            .map(|(_, p)| match p.strip_prefix("comm:") {
                Some(comm) => cpu::pids_named(comm).iter().map(|p| cpu::cpu_of(p)).sum(),
                None => cpu::cpu_of(p),
            })
            .collect()
    }

    /// `name=µs` of CPU per event between the snapshots, for the RESULT line.
    fn per_event(&self, before: &[Duration], after: &[Duration], events: u64) -> String {
        self.0
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| {
                let us = a.saturating_sub(*b).as_secs_f64() * 1e6 / events.max(1) as f64;
                format!("cpu_us_{name}={us:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A wait that lasts while what it watches moves forward: it ends after `stall` without a new
/// best reading, or after `cap` in all.
struct Progress {
    best: Option<u64>,
    last: Instant,
    started: Instant,
    stall: Duration,
    cap: Duration,
}

impl Progress {
    fn new(stall: Duration, cap: Duration) -> Progress {
        Progress {
            best: None,
            last: Instant::now(),
            started: Instant::now(),
            stall,
            cap,
        }
    }

    /// Records a reading (larger is further along).
    fn saw(&mut self, reading: u64) {
        if self.best.is_none_or(|b| reading > b) {
            self.best = Some(reading);
            self.last = Instant::now();
        }
    }

    fn goes_on(&self) -> bool {
        self.last.elapsed() < self.stall && self.started.elapsed() < self.cap
    }
}

/// The usage events not stored yet, summed over the metrics endpoints: the consumers' lag
/// (`peage_consumer_lag_events` of topics whose name holds `usage`) and what the control API's
/// spool still holds (`peage_events_spool_pending_events`); 0 once every event is stored.
async fn usage_lag(client: &reqwest::Client, urls: &[&str]) -> anyhow::Result<u64> {
    let mut lag = 0u64;
    let mut seen = false;
    for url in urls {
        let text = client
            .get(*url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        for line in text.lines() {
            let value = if let Some(v) = line.strip_prefix("peage_events_spool_pending_events ") {
                // Events the control API still holds in its spool, not yet in the topic.
                v
            } else if let Some((_, v)) = line
                .strip_prefix("peage_consumer_lag_events{")
                .and_then(|rest| rest.split_once("} "))
                .filter(|(labels, _)| {
                    labels
                        .split(',')
                        .any(|l| l.starts_with("topic=") && l.contains("usage"))
                })
            {
                seen = true;
                v
            } else {
                continue;
            };
            lag += value
                .trim()
                .parse::<f64>()
                .with_context(|| format!("metric line {line:?}"))?
                .max(0.0) as u64;
        }
    }
    anyhow::ensure!(seen, "no usage consumer in {urls:?}");
    Ok(lag)
}

/// The bench meter's quantity for the partner, as the usage route reports it.
async fn counted(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    partner: &str,
) -> anyhow::Result<u64> {
    let usage: serde_json::Value = client
        .get(format!("{url}/v1/partners/{partner}/usage"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let m = usage["meters"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["meter"] == "bench_events"))
        .with_context(|| format!("no bench_events meter in {usage}"))?;
    let q: rust_decimal::Decimal = m["quantity"].as_str().unwrap_or("0").parse()?;
    u64::try_from(q).context("the count is not a whole number")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = env("PEAGE_BENCH_MODE")?;
    let url = env("PEAGE_BENCH_URL")?;
    let token = env("PEAGE_BENCH_TOKEN")?;
    let partner = env("PEAGE_BENCH_PARTNER")?;
    let seconds = Duration::from_secs(
        std::env::var("PEAGE_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let raw_dir = std::path::PathBuf::from(env("PEAGE_BENCH_RAW_DIR")?);

    // 1. The raw append rate of the log the route writes to.
    let mut raw_spool = None;
    let sink: Arc<dyn UsageEventSink> = match mode.as_str() {
        "embedded" => Arc::new(peage::events_sink::EmbeddedEvents(
            peage_eventlog::EmbeddedLog::open(raw_dir.join("usage-log"))?,
        )),
        "distributed" => {
            let kafka = peage_eventlog::kafka::KafkaConfig {
                brokers: env("PEAGE_BENCH_KAFKA")?,
                topic: env("PEAGE_BENCH_TOPIC")?,
                // As the billing role's (`events_kafka`).
                idempotent: false,
                // `PEAGE_BENCH_KAFKA_PROPERTIES=k=v,k=v`: librdkafka properties to try on the
                // raw spool's forwarder (its cost is printed after the drain).
                properties: std::env::var("PEAGE_BENCH_KAFKA_PROPERTIES")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect(),
                ..Default::default()
            };
            peage_eventlog::kafka::ensure_topics(&kafka).await?;
            let spool = peage_eventlog::kafka::SpooledKafkaLog::start(
                &kafka,
                peage_eventlog::kafka::SpoolConfig {
                    dir: raw_dir.join("events-spool"),
                    // As the control API's: synced on every append.
                    sync_interval_ms: 0,
                    ..Default::default()
                },
            )
            .await?;
            raw_spool = Some(spool.clone());
            Arc::new(peage::events_sink::SpooledEvents(spool))
        }
        other => anyhow::bail!("PEAGE_BENCH_MODE must be embedded or distributed, not {other}"),
    };
    let (raw_n, raw_t) = raw_rate(sink, &partner, seconds).await?;
    let raw = raw_n as f64 / raw_t.as_secs_f64();
    eprintln!("raw append ({mode}): {raw_n} events in {raw_t:.1?}: {raw:.0} events/s");
    if let Some(spool) = raw_spool {
        // Its forwarder would otherwise send the raw events to the broker during the route's
        // measure, on the same cores.
        let t = Instant::now();
        let cpu = cpu::cpu_of("self");
        let left = spool.drain(Duration::from_secs(600)).await;
        let forward_us = cpu::cpu_of("self").saturating_sub(cpu).as_secs_f64() * 1e6 / raw_n as f64;
        anyhow::ensure!(
            left == 0,
            "the raw spool still holds {left} events after 600 s"
        );
        eprintln!(
            "raw spool forwarded to the broker in {:.1?}: {:.0} events/s, {forward_us:.1} µs of this process's CPU per event",
            t.elapsed(),
            raw_n as f64 / t.elapsed().as_secs_f64()
        );
    }

    // 2. The route, from 8 connections.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let procs = ProcCpu::from_env();
    let cpu_before = procs.snapshot();
    let perf = start_perf(seconds)?;
    let (counts, api_t, latencies) = post_load(&url, &token, &partner, &run, seconds).await?;
    if let Some(mut perf) = perf {
        perf.wait()?;
    }
    let accepted = counts.accepted.load(Ordering::Relaxed);
    let cpu = procs.per_event(&cpu_before, &procs.snapshot(), accepted);
    eprintln!("CPU per accepted event during the route's measure: {cpu}");
    let api = accepted as f64 / api_t.as_secs_f64();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    eprintln!(
        "POST /v1/events ({mode}): {accepted} accepted in {api_t:.1?}: {api:.0} events/s; \
         {} requests, {} refused and retried, duplicates {}, p50 {:.2} ms, p99 {:.2} ms",
        counts.requests.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.duplicates.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
    );

    // 3. Every accepted event counted once: the meter reaches the accepted total and stays.
    // Counting evaluates the meter over every stored event, so the wait first watches the
    // consumers' lag (cheap, PEAGE_BENCH_METRICS) and counts only once it is gone; the CPU the
    // processes use until then is the catch-up's.
    let client = reqwest::Client::new();
    let waited = Instant::now();
    let lag_urls = std::env::var("PEAGE_BENCH_METRICS").unwrap_or_default();
    let lag_urls: Vec<&str> = lag_urls.split_whitespace().collect();
    let cpu_after_load = procs.snapshot();
    // The wait lasts while the catch-up progresses: it gives up after two minutes without
    // progress (or after an hour).
    let mut progress = Progress::new(Duration::from_secs(120), Duration::from_secs(3600));
    // The events not yet stored when the load stopped: what the catch-up's CPU is for.
    let mut backlog = None;
    while !lag_urls.is_empty() && progress.goes_on() {
        match usage_lag(&client, &lag_urls).await {
            Ok(lag) => {
                backlog.get_or_insert(lag);
                if lag == 0 {
                    break;
                }
                progress.saw(u64::MAX - lag);
            }
            Err(e) => eprintln!("consumer lag unknown ({e:#}); counting instead"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The catch-up's CPU ends with the lag, before the count; without the lag it ends after
    // the count, over all the events (an upper bound).
    let lag_gone = backlog.map(|_| procs.snapshot());
    let count_started = Instant::now();
    let mut seen = counted(&client, &url, &token, &partner).await?;
    eprintln!(
        "one count over the stored events took {:.1?}",
        count_started.elapsed()
    );
    let mut progress = Progress::new(Duration::from_secs(120), Duration::from_secs(3600));
    progress.saw(seen);
    while seen < accepted && progress.goes_on() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = counted(&client, &url, &token, &partner).await?;
        progress.saw(seen);
    }
    let caught_up = waited.elapsed();
    let backlog = backlog.unwrap_or(accepted);
    let catch_up_cpu = procs
        .per_event(
            &cpu_after_load,
            &lag_gone.unwrap_or_else(|| procs.snapshot()),
            backlog,
        )
        .replace("cpu_us_", "catch_up_cpu_us_");
    eprintln!(
        "{backlog} events were not stored yet when the load stopped; CPU per event of them until all were counted: {catch_up_cpu}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = counted(&client, &url, &token, &partner).await?;
    eprintln!(
        "counted {settled} of {accepted} accepted ({:.1?} after the load stopped)",
        caught_up
    );
    println!(
        "RESULT mode={mode} api_events_per_s={api:.0} raw_events_per_s={raw:.0} api_vs_raw={:.2} \
         accepted={accepted} counted={settled} duplicates={} refused={} p50_ms={:.2} p99_ms={:.2} \
         caught_up_s={:.1} backlog={backlog} {cpu} {catch_up_cpu}",
        api / raw,
        counts.duplicates.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        caught_up.as_secs_f64(),
    );
    Ok(())
}
