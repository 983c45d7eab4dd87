//! Usage-event intake cost (`cargo bench -p peage-core --bench usage_events`): checking one
//! CloudEvent of the events benchmark's shape (`parse_cloud_event`: attributes, data
//! properties, digest, owned copy), against the floor any intake pays, measured in the same
//! run: parsing the event's JSON once and copying it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peage_core::usage_event::parse_cloud_event;
use serde_json::value::RawValue;

/// The event load-tests/events/main.rs sends (~230 bytes).
fn event(n: u64) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"run-3-{n}","source":"/bench/llm","type":"com.example.bench.tokens","subject":"par_01JDZ8Q4W9M5N7K2H3B6C1V0XY","time":"2026-12-07T10:00:00.123456Z","data":{{"tokens":{},"model":"{}","region":"{}"}}}}"#,
        n % 997 + 1,
        ["small", "large", "xl"][(n % 3) as usize],
        ["eu", "us"][(n % 2) as usize],
    )
}

fn bench(c: &mut Criterion) {
    let events: Vec<Box<RawValue>> = (0..100)
        .map(|n| RawValue::from_string(event(n)).unwrap())
        .collect();
    let mut g = c.benchmark_group("usage_event");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("floor: parse once and copy", |b| {
        b.iter(|| {
            for e in &events {
                let v: &RawValue = serde_json::from_str(e.get()).unwrap();
                black_box(v.to_owned());
            }
        })
    });
    g.bench_function("parse_cloud_event", |b| {
        b.iter(|| {
            for e in &events {
                black_box(parse_cloud_event(e).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
