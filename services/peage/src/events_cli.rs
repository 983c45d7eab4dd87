//! `peage events import FILE`: a backfill of usage events (NDJSON or CSV of CloudEvents, or
//! stdin) through `POST /v1/events`, the same checks as every other event, in batches sent a
//! few at a time. Re-running the same file changes nothing: events already received count as
//! duplicates (docs/events.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Send a file of CloudEvents (one JSON object a line, or CSV with a header row) to the
    /// events API; prints what was accepted, what was already there, and every line refused.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The file, or `-` for standard input.
    pub file: PathBuf,
    /// `ndjson` or `csv`; by default from the file's extension (`.csv` is CSV), else NDJSON.
    #[arg(long, value_parser = ["ndjson", "csv"])]
    pub format: Option<String>,
    /// The control API. Default: the one of `--data-dir`'s `peage up` (its demo.json), else
    /// http://127.0.0.1:8090.
    #[arg(long, env = "PEAGE_CONTROL_URL")]
    pub url: Option<String>,
    /// A token allowed to post events (`events:write`, or the admin token). Default: the
    /// admin token of `--data-dir`.
    #[arg(long, env = "PEAGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The data directory of a `peage up` whose API and admin token to use.
    #[arg(long, env = "PEAGE_DATA_DIR", default_value = "./peage-data")]
    pub data_dir: PathBuf,
    /// Events per request (at most the server's events.max_batch_events).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// Events of one request, with the file line each came from.
struct Batch {
    lines: Vec<u64>,
    body: String,
}

#[derive(Default)]
struct Summary {
    accepted: u64,
    duplicates: u64,
    /// (line, reason), in line order at the end.
    rejected: Vec<(u64, String)>,
}

pub async fn run(c: EventsCommand) -> anyhow::Result<()> {
    match c {
        EventsCommand::Import(args) => import(args).await,
    }
}

fn endpoint(args: &ImportArgs) -> anyhow::Result<(String, String)> {
    let demo: Option<Value> = std::fs::read_to_string(args.data_dir.join("demo.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let url = match (&args.url, &demo) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) if d["control_url"].is_string() => {
            d["control_url"].as_str().unwrap_or_default().to_string()
        }
        _ => "http://127.0.0.1:8090".to_string(),
    };
    let token = match &args.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(args.data_dir.join("admin-token"))
            .map(|t| t.trim().to_string())
            .with_context(|| {
                format!(
                    "no --token (PEAGE_TOKEN) and no admin token in {}",
                    args.data_dir.display()
                )
            })?,
    };
    Ok((url.trim_end_matches('/').to_string(), token))
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&args.batch) || !(1..=64).contains(&args.concurrency) {
        bail!("--batch must be 1–10000 and --concurrency 1–64");
    }
    let (url, token) = endpoint(&args)?;
    let csv = match args.format.as_deref() {
        Some(f) => f == "csv",
        None => args.file.extension().is_some_and(|e| e == "csv"),
    };
    let stdin = args.file == Path::new("-");
    let total = if stdin {
        None
    } else {
        Some(count_lines(&args.file)?.saturating_sub(u64::from(csv)))
    };
    let reader: Box<dyn BufRead + Send> = if stdin {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("opening {}", args.file.display()))?,
        ))
    };
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} events {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    let mut summary = Summary::default();
    let batches = batches(reader, csv, args.batch, &mut summary.rejected)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("HTTP client")?;
    let endpoint = format!("{url}/v1/events");
    let mut results = futures::stream::iter(batches)
        .map(|b| {
            let (client, endpoint, token) = (client.clone(), endpoint.clone(), token.clone());
            async move {
                let n = b.lines.len() as u64;
                (
                    n,
                    b.lines.clone(),
                    send(&client, &endpoint, &token, b).await,
                )
            }
        })
        .buffer_unordered(args.concurrency);
    while let Some((n, lines, result)) = results.next().await {
        let out = result?;
        summary.accepted += out["accepted"].as_u64().unwrap_or(0);
        summary.duplicates += out["duplicates"].as_u64().unwrap_or(0);
        for r in out["rejected"].as_array().into_iter().flatten() {
            let index = r["index"].as_u64().unwrap_or(0) as usize;
            let line = lines.get(index).copied().unwrap_or(0);
            summary
                .rejected
                .push((line, r["reason"].as_str().unwrap_or("rejected").to_string()));
        }
        bar.inc(n);
    }
    bar.finish_and_clear();
    summary.rejected.sort();
    println!(
        "accepted {}, duplicates {}, rejected {}",
        summary.accepted,
        summary.duplicates,
        summary.rejected.len()
    );
    const SHOWN: usize = 100;
    for (line, reason) in summary.rejected.iter().take(SHOWN) {
        println!("line {line}: {reason}");
    }
    if summary.rejected.len() > SHOWN {
        println!("… and {} more", summary.rejected.len() - SHOWN);
    }
    if !summary.rejected.is_empty() {
        bail!(
            "{} events were rejected (listed above); the others are stored",
            summary.rejected.len()
        );
    }
    Ok(())
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    for line in BufReader::new(f).lines() {
        if !line?.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

/// The file's events in batches of `size`; lines that are no event at all are refused here,
/// with their line number, and never sent.
fn batches(
    reader: Box<dyn BufRead + Send>,
    csv: bool,
    size: usize,
    refused: &mut Vec<(u64, String)>,
) -> anyhow::Result<Vec<Batch>> {
    let mut out = Vec::new();
    let mut current = Batch {
        lines: Vec::new(),
        body: String::from("["),
    };
    let mut push = |line: u64, event: String, out: &mut Vec<Batch>| {
        if !current.lines.is_empty() {
            current.body.push(',');
        }
        current.body.push_str(&event);
        current.lines.push(line);
        if current.lines.len() == size {
            current.body.push(']');
            out.push(std::mem::replace(
                &mut current,
                Batch {
                    lines: Vec::new(),
                    body: String::from("["),
                },
            ));
        }
    };
    if csv {
        let mut rows = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(reader);
        let header: Vec<String> = rows
            .headers()
            .context("reading the CSV header")?
            .iter()
            .map(str::to_string)
            .collect();
        for record in rows.records() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    refused.push((line, format!("not a CSV row: {e}")));
                    continue;
                }
            };
            let line = record.position().map_or(0, |p| p.line());
            match csv_event(&header, &record) {
                Ok(event) => push(line, event, &mut out),
                Err(reason) => refused.push((line, reason)),
            }
        }
    } else {
        for (i, line) in reader.lines().enumerate() {
            let line_no = i as u64 + 1;
            let text = line.with_context(|| format!("reading line {line_no}"))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<&RawValue>(text) {
                Ok(raw) if raw.get().starts_with('{') => {
                    push(line_no, raw.get().to_string(), &mut out)
                }
                Ok(_) => refused.push((line_no, "not a JSON object".into())),
                Err(e) => refused.push((line_no, format!("not JSON: {e}"))),
            }
        }
    }
    if !current.lines.is_empty() {
        current.body.push(']');
        out.push(current);
    }
    Ok(out)
}

/// One CSV row as a CloudEvent: columns named after attributes (`id`, `source`, `type`,
/// `subject`, `time`, …; `specversion` defaults to 1.0), `data` a JSON object, and `data.<path>`
/// columns properties of data (numbers, as written, when they read as JSON numbers, else
/// strings). Empty cells are left out.
fn csv_event(header: &[String], row: &csv::StringRecord) -> Result<String, String> {
    let mut event = Map::new();
    event.insert("specversion".into(), "1.0".into());
    let mut data = Node::default();
    for (name, cell) in header.iter().zip(row.iter()) {
        if cell.is_empty() {
            continue;
        }
        if name == "data" {
            match serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(cell) {
                Ok(m) => {
                    for (k, v) in m {
                        data.insert(&[k.as_str()], v.get().to_string());
                    }
                }
                _ => return Err("the data column must hold a JSON object".into()),
            }
        } else if let Some(path) = name.strip_prefix("data.") {
            let is_number = serde_json::from_str::<Value>(cell).is_ok_and(|v| v.is_number());
            let json = if is_number {
                cell.to_string()
            } else {
                Value::from(cell).to_string()
            };
            data.insert(&path.split('.').collect::<Vec<_>>(), json);
        } else {
            event.insert(name.clone(), cell.into());
        }
    }
    let mut text = serde_json::to_string(&event).map_err(|e| e.to_string())?;
    if let Node::Object(fields) = &data {
        if !fields.is_empty() {
            text.pop();
            text.push_str(",\"data\":");
            data.write(&mut text);
            text.push('}');
        }
    }
    Ok(text)
}

/// Data built from CSV columns: JSON text kept as written at the leaves.
enum Node {
    Json(String),
    Object(BTreeMap<String, Node>),
}

impl Default for Node {
    fn default() -> Self {
        Node::Object(BTreeMap::new())
    }
}

impl Node {
    fn insert(&mut self, path: &[&str], json: String) {
        let Some((head, rest)) = path.split_first() else {
            *self = Node::Json(json);
            return;
        };
        if !matches!(self, Node::Object(_)) {
            *self = Node::default();
        }
        if let Node::Object(fields) = self {
            fields
                .entry(head.to_string())
                .or_default()
                .insert(rest, json);
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Node::Json(j) => out.push_str(j),
            Node::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(k.as_str()).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Posts one batch, retrying what the server says to retry (503, 429) and network failures,
/// which is safe: a re-sent event counts once.
async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    batch: Batch,
) -> anyhow::Result<Value> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = client
            .post(endpoint)
            .bearer_auth(token)
            .header("content-type", "application/cloudevents-batch+json")
            .body(batch.body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                return r.json().await.context("reading the events API's answer")
            }
            Ok(r) if matches!(r.status().as_u16(), 429 | 502 | 503 | 504) => {
                format!("{}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                bail!(
                    "the events API refused a batch (lines {}–{}): {status} {text}",
                    batch.lines.first().unwrap_or(&0),
                    batch.lines.last().unwrap_or(&0)
                );
            }
            Err(e) => e.to_string(),
        };
        if attempt >= 10 {
            bail!("the events API did not take a batch after {attempt} attempts: {retry}");
        }
        tracing::warn!(attempt, error = %retry, "events import: retrying a batch");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_cloudevents_with_nested_data() {
        let header: Vec<String> = [
            "id",
            "source",
            "type",
            "subject",
            "data.tokens",
            "data.usage.model",
            "data",
        ]
        .map(String::from)
        .to_vec();
        let row = csv::StringRecord::from(vec![
            "e1",
            "/llm",
            "t",
            "cust",
            "0.10",
            "small",
            r#"{"x":1}"#,
        ]);
        let event: Value = serde_json::from_str(&csv_event(&header, &row).unwrap()).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["data"]["usage"]["model"], "small");
        assert_eq!(event["data"]["x"], 1);
        // The number's text is kept as written (exact decimals downstream).
        assert!(csv_event(&header, &row)
            .unwrap()
            .contains("\"tokens\":0.10"));
        let bad = csv::StringRecord::from(vec!["e1", "/llm", "t", "cust", "", "", "[1]"]);
        assert!(csv_event(&header, &bad)
            .unwrap_err()
            .contains("JSON object"));
    }

    #[test]
    fn ndjson_lines_are_batched_with_their_line_numbers_and_bad_lines_refused() {
        let text = "{\"id\":\"a\"}\n\n[1]\n{nope\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n";
        let mut refused = Vec::new();
        let b = batches(Box::new(std::io::Cursor::new(text)), false, 2, &mut refused).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].lines, [1, 5]);
        assert_eq!(b[0].body, r#"[{"id":"a"},{"id":"b"}]"#);
        assert_eq!(b[1].lines, [6]);
        assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4]);
    }
}
