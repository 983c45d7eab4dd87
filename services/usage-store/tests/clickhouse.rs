//! The ClickHouse usage store against a real server (`deploy/dev/services.sh start`).
//! These tests run only with `--features real-servers` (as `deploy/dev/test-all.sh` runs them);
//! without it they are listed as ignored, and with it a missing server (or chDB) fails them.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use peage_core::meter::{Aggregation, Dimension, MeterField, RollupRow};
use peage_core::{CallEvent, Env, Meter};
use peage_usage_store::clickhouse::Rollup;
use peage_usage_store::{
    ClickHouseConfig, ClickHouseUsageStore, LoggedEvent, LoggedUsageEvent, UsageQuery, UsageStore,
};
use rust_decimal::Decimal;

type HourKey = (DateTime<Utc>, String, String, String, u16);

/// Sums rollup rows per hour and dimensions: (calls, units, request bytes).
fn per_hour(rows: &[(DateTime<Utc>, RollupRow)]) -> BTreeMap<HourKey, (u64, Decimal, u64)> {
    let mut out: BTreeMap<HourKey, (u64, Decimal, u64)> = BTreeMap::new();
    for (hour, r) in rows {
        let key = (
            *hour,
            r.api.clone(),
            r.version.clone(),
            r.operation.clone(),
            r.status,
        );
        let cell = out.entry(key).or_default();
        cell.0 += r.calls;
        cell.1 += r.units;
        cell.2 += r.request_bytes;
    }
    out
}

async fn store() -> ClickHouseUsageStore {
    let url = std::env::var("PEAGE_TEST_CLICKHOUSE_URL").unwrap_or("http://127.0.0.1:8123".into());
    let config = ClickHouseConfig {
        url: url.clone(),
        database: format!("peage_test_{}", uuid::Uuid::now_v7().simple()),
        validation: std::env::var("PEAGE_TEST_CLICKHOUSE_VALIDATION").is_ok_and(|v| v == "true"),
        ..Default::default()
    };
    match ClickHouseUsageStore::connect(&config).await {
        Ok(s) => s.record_queries(),
        Err(e) => {
            panic!("ClickHouse is not reachable at {url}: {e} (deploy/dev/services.sh start)")
        }
    }
}

/// A CI run without the switch would list the tests as ignored and pass: it fails instead.
#[cfg(not(feature = "real-servers"))]
#[test]
fn ci_runs_the_real_server_tests() {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: run with --features real-servers, so that ClickHouse is tested"
    );
}

/// The refused calls of `prt_a` in `env` among `all`, as the stores answer them.
fn sent_refused(all: &[CallEvent], env: Env) -> Vec<peage_usage_store::RefusedCalls> {
    let mut by: BTreeMap<(String, u16), u64> = BTreeMap::new();
    for e in all
        .iter()
        .filter(|e| e.partner_id == "prt_a" && e.env == env)
    {
        if let Some(r) = e.refusal() {
            *by.entry((r.to_string(), e.status)).or_default() += 1;
        }
    }
    let mut out: Vec<_> = by
        .into_iter()
        .map(
            |((refusal, status), calls)| peage_usage_store::RefusedCalls {
                refusal,
                status,
                calls,
            },
        )
        .collect();
    out.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.refusal.cmp(&b.refusal)));
    out
}

fn event(i: u64, partner: &str, time: DateTime<Utc>) -> CallEvent {
    let ops = ["GET /forecast/{city}", "POST /bulk", "GET /alerts"];
    let op = ops[(i % 3) as usize];
    // Every 11th call is a recorded refusal (a 429, no units): kept raw, out of the rollups.
    let refused = i % 11 == 5 || i % 13 == 6;
    let not_entitled = i % 11 != 5 && refused;
    let mut attributes = BTreeMap::from([("graphql.root_fields".to_string(), format!("f{i}"))]);
    if refused {
        let slug = if not_entitled {
            "not-entitled"
        } else {
            "rate-limited"
        };
        attributes.insert(peage_core::event::REFUSAL.into(), slug.into());
    }
    CallEvent {
        id: uuid::Uuid::now_v7(),
        time,
        partner_id: partner.into(),
        key_id: format!("key_{:020x}", i % 4),
        env: if i.is_multiple_of(10) {
            Env::Sandbox
        } else {
            Env::Live
        },
        api: ["weather", "maps"][(i % 2) as usize].into(),
        version: ["v1", "v2"][(i / 2 % 2) as usize].into(),
        operation: op.into(),
        method: op.split(' ').next().unwrap().into(),
        status: if not_entitled {
            403
        } else if refused {
            429
        } else {
            [200, 200, 201, 404, 500][(i % 5) as usize]
        },
        latency_us: 1_000 + i * 37,
        request_bytes: i * 3,
        response_bytes: 100 + i * 7,
        units: if refused {
            Decimal::ZERO
        } else {
            Decimal::new((i % 17) as i64 * 125, 3)
        },
        gateway_id: "gw-test".into(),
        attributes,
    }
}

fn meters() -> Vec<Meter> {
    let m = |name: &str, aggregation, field, group_by: Vec<Dimension>| Meter {
        name: name.into(),
        aggregation,
        field,
        scale: None,
        filter: Default::default(),
        group_by,
        refusals: Default::default(),
        events: None,
    };
    let mut ok_calls = m(
        "ok_calls",
        Aggregation::Count,
        MeterField::Calls,
        vec![Dimension::Api, Dimension::Version],
    );
    ok_calls
        .filter
        .insert(Dimension::StatusClass, ["2xx".to_string()].into());
    let mut egress = m(
        "egress_kb",
        Aggregation::Sum,
        MeterField::ResponseBytes,
        vec![Dimension::Operation],
    );
    egress.scale = Some(Decimal::from_str("0.001").unwrap());
    let mut refused = m(
        "refused_calls",
        Aggregation::Count,
        MeterField::Calls,
        vec![Dimension::StatusClass],
    );
    refused.refusals = peage_core::meter::Refusals::Only;
    vec![
        // Counts refusals only: answered from raw events (refusals are not in the rollups).
        refused,
        ok_calls,
        m("units", Aggregation::Sum, MeterField::Units, vec![]),
        egress,
        m(
            "latency",
            Aggregation::Sum,
            MeterField::LatencyMs,
            vec![Dimension::StatusClass],
        ),
        // Not in the rollups: answered from raw events.
        m("max_units", Aggregation::Max, MeterField::Units, vec![]),
        m("keys", Aggregation::UniqueCount, MeterField::KeyId, vec![]),
        m(
            "by_key",
            Aggregation::Count,
            MeterField::Calls,
            vec![Dimension::KeyId],
        ),
    ]
}

#[tokio::test]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs ClickHouse and chDB: cargo test --features real-servers (deploy/dev/services.sh install, start)"
)]
async fn rollups_raw_events_and_the_embedded_engine_agree_and_positions_are_kept() {
    let store = store().await;
    let applied = store.migrate().await.unwrap();
    assert_eq!(
        applied,
        [
            "0001_call_events",
            "0002_usage_rollups",
            "0003_rollups_of_served_calls",
            "0004_usage_events"
        ]
    );
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "a second migrate applies nothing"
    );

    let start = Utc.with_ymd_and_hms(2026, 10, 31, 22, 58, 17).unwrap();
    // 3,000 events over ~4 hours, crossing a month boundary (two ClickHouse partitions), with
    // microsecond times that put some events on either side of every edge.
    let events: Vec<LoggedEvent> = (0..3_000u64)
        .map(|i| LoggedEvent {
            partition: (i % 3) as u32,
            offset: i / 3,
            event: event(
                i,
                if i % 7 == 0 { "prt_other" } else { "prt_a" },
                start + TimeDelta::microseconds((i * 4_801_003) as i64),
            ),
        })
        .collect();
    for chunk in events.chunks(1_000) {
        store.insert_logged("peage.calls.v1", chunk).await.unwrap();
    }
    // Many partners at once (an invoice run) equals partner by partner, on whole hours (one
    // query) and on a range that is not (the fallback); partners without usage get zeros.
    let partners: Vec<String> = ["prt_a", "prt_other", "prt_none"]
        .map(String::from)
        .to_vec();
    for (from, to) in [
        (
            Utc.with_ymd_and_hms(2026, 10, 31, 22, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 3, 0, 0).unwrap(),
        ),
        (start, start + TimeDelta::minutes(90)),
    ] {
        let many = store
            .meter_usage_many(&partners, Env::Live, from, to, &meters())
            .await
            .unwrap();
        let each =
            peage_usage_store::meter_usage_each(&store, &partners, Env::Live, from, to, &meters())
                .await
                .unwrap();
        assert_eq!(many, each, "{from} – {to}");
        assert!(many["prt_a"][0].quantity > Decimal::ZERO);
    }
    let positions = store
        .stored_positions("peage.calls.v1", &[0, 1, 2, 3])
        .await
        .unwrap();
    assert_eq!(
        positions,
        [(0, 999), (1, 999), (2, 999)].into_iter().collect()
    );
    assert!(store
        .stored_positions("another.topic", &[0])
        .await
        .unwrap()
        .is_empty());

    let raw = store.raw_totals(None).await.unwrap();
    let refused = (0..3_000u64).filter(|i| i % 11 == 5 || i % 13 == 6).count() as u64;
    assert_eq!(raw.calls, 3_000 - refused, "totals are of served calls");
    let stored: u64 = store
        .client()
        .query("SELECT count() FROM call_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(stored, 3_000, "refusals are kept raw");
    assert_eq!(
        store.rollup_totals(Rollup::Minute, None).await.unwrap(),
        raw
    );
    assert_eq!(store.rollup_totals(Rollup::Hour, None).await.unwrap(), raw);
    let a = store.raw_totals(Some("prt_a")).await.unwrap();
    assert_eq!(
        store
            .rollup_totals(Rollup::Hour, Some("prt_a"))
            .await
            .unwrap(),
        a
    );

    let meters = meters();
    let all: Vec<CallEvent> = events.iter().map(|l| l.event.clone()).collect();
    for (from, to) in [
        (start, start + TimeDelta::hours(5)),
        (
            start + TimeDelta::microseconds(4_801_003 * 10 + 1),
            start + TimeDelta::minutes(187) + TimeDelta::seconds(13),
        ),
        (
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 1, 0, 0).unwrap(),
        ),
        (
            start + TimeDelta::seconds(5),
            start + TimeDelta::seconds(40),
        ),
    ] {
        for env in [Env::Live, Env::Sandbox] {
            let q = UsageQuery {
                partner_id: "prt_a".into(),
                env,
                from,
                to,
            };
            let expected = peage_core::meter::evaluate(
                &meters,
                all.iter().filter(|e| {
                    e.partner_id == "prt_a" && e.env == env && e.time >= from && e.time < to
                }),
            );
            assert!(expected[0].quantity > Decimal::ZERO || to - from < TimeDelta::minutes(1));
            assert_eq!(
                store.meter_usage(&q, &meters).await.unwrap(),
                expected,
                "rollups {from}..{to} {env:?}"
            );
            assert_eq!(
                store.meter_usage_raw(&q, &meters).await.unwrap(),
                expected,
                "raw {from}..{to} {env:?}"
            );
        }
    }
    // Raw events come back field for field, attributes included.
    let q = UsageQuery {
        partner_id: "prt_a".into(),
        env: Env::Live,
        from: start,
        to: start + TimeDelta::hours(5),
    };
    let back = store.raw_events(&q).await.unwrap();
    let mut sent: Vec<CallEvent> = all
        .iter()
        .filter(|e| e.partner_id == "prt_a" && e.env == Env::Live)
        .cloned()
        .collect();
    sent.sort_by_key(|e| e.time);
    assert_eq!(back, sent);

    // The hourly rollups the dashboard charts hold exactly each hour's served raw events (not
    // the refusals), here and in the embedded store.
    let reference: Vec<(DateTime<Utc>, RollupRow)> = sent
        .iter()
        .filter(|e| RollupRow::holds(e))
        .map(|e| {
            let hour = e.time.duration_trunc(TimeDelta::hours(1)).unwrap();
            (hour, RollupRow::of(e))
        })
        .collect();
    let clickhouse = store.hourly_rollups(&q).await.unwrap();
    assert_eq!(per_hour(&clickhouse), per_hour(&reference));
    let dir = tempfile::tempdir().unwrap();
    let embedded = peage_usage_store::SqliteUsageStore::open(&dir.path().join("usage.db"))
        .await
        .unwrap();
    embedded.insert(&all).await.unwrap();
    assert_eq!(
        per_hour(&embedded.hourly_rollups(&q).await.unwrap()),
        per_hour(&reference)
    );

    // Refused calls, by refusal and status, from the raw rows: the same in both stores and
    // as counted here, live and sandbox apart.
    for env in [Env::Live, Env::Sandbox] {
        let q = UsageQuery { env, ..q.clone() };
        let want = sent_refused(&all, env);
        assert!(want[0].calls > 0, "the test has refusals in {env:?}");
        assert_eq!(store.refused_calls(&q).await.unwrap(), want, "{env:?}");
        assert_eq!(embedded.refused_calls(&q).await.unwrap(), want, "{env:?}");
    }

    // Dedup by id for events from outside the log.
    let stored = store.stored_ids(&all[..10]).await.unwrap();
    assert_eq!(stored.len(), 10);
    let fresh = event(7, "prt_a", start);
    let outcome = store
        .insert(&[all[0].clone(), fresh.clone()])
        .await
        .unwrap();
    assert_eq!((outcome.inserted, outcome.duplicates), (1, 1));
    assert_eq!(store.raw_totals(None).await.unwrap().calls, raw.calls + 1);
    store
        .client()
        .query(&format!("DROP DATABASE {}", store_db(&store)))
        .execute()
        .await
        .ok();
    chdb_check(&store.recorded_queries());
}

/// Token events for three partners over a month boundary, with values that are exact only as
/// decimals, nested properties, events without the value and events of another type.
fn usage_events(start: DateTime<Utc>) -> Vec<peage_core::UsageEvent> {
    use peage_core::usage_event::{parse_cloud_event, TimeWindow};
    let window = TimeWindow {
        backfill: TimeDelta::days(3650),
        ahead: TimeDelta::days(3650),
    };
    (0..600u64)
        .map(|i| {
            let partner = ["prt_a", "prt_a", "prt_b"][(i % 3) as usize];
            let time = start + TimeDelta::microseconds((i * 19_001_003) as i64);
            let ty = if i % 10 == 9 { "com.example.storage" } else { "com.example.llm" };
            let tokens = if i % 13 == 4 {
                String::new()
            } else {
                format!(r#""tokens":{}.{},"#, i % 40, i % 10)
            };
            // Some events remove their user from the recurring `members` meter.
            let op = if i % 5 == 2 {
                r#","operation_type":"remove""#
            } else {
                ""
            };
            let data = format!(
                r#"{{{tokens}"model":"{}","usage":{{"input":{}}},"region":"{}","user":"u{}"{op}}}"#,
                ["small", "large", "x"][(i % 3) as usize],
                i * 7 % 100,
                ["eu", "us"][(i / 3 % 2) as usize],
                i % 17,
            );
            let raw = serde_json::value::RawValue::from_string(format!(
                r#"{{"specversion":"1.0","id":"ev-{i}","source":"/llm","type":"{ty}","subject":"{partner}","time":"{}","data":{data}}}"#,
                time.to_rfc3339()
            ))
            .unwrap();
            parse_cloud_event(&raw)
                .unwrap()
                .into_usage_event(partner, time, &window)
                .unwrap()
        })
        .collect()
}

fn usage_meters() -> Vec<Meter> {
    use peage_core::meter::EventSelector;
    let m = |name: &str,
             aggregation,
             value: Option<&str>,
             filter: &[(&str, &str)],
             group_by: &[&str]| Meter {
        name: name.into(),
        aggregation,
        field: MeterField::Calls,
        scale: None,
        filter: BTreeMap::new(),
        group_by: vec![],
        refusals: Default::default(),
        events: Some(EventSelector {
            event_type: "com.example.llm".into(),
            value: value.map(String::from),
            filter: filter
                .iter()
                .map(|(k, v)| (k.to_string(), [v.to_string()].into()))
                .collect(),
            group_by: group_by.iter().map(|g| g.to_string()).collect(),
            recurring: false,
        }),
    };
    let recurring = |m: Meter| Meter {
        events: m.events.map(|s| EventSelector {
            recurring: true,
            ..s
        }),
        ..m
    };
    vec![
        m("tokens", Aggregation::Sum, Some("tokens"), &[], &["model"]),
        m(
            "eu_tokens",
            Aggregation::Sum,
            Some("tokens"),
            &[("region", "eu")],
            &[],
        ),
        m(
            "completions",
            Aggregation::Count,
            None,
            &[],
            &["region", "model"],
        ),
        m("largest", Aggregation::Max, Some("usage.input"), &[], &[]),
        m("models", Aggregation::UniqueCount, Some("model"), &[], &[]),
        m(
            "last_input",
            Aggregation::Latest,
            Some("usage.input"),
            &[],
            &["region"],
        ),
        Meter {
            scale: Some(Decimal::new(1, 3)),
            ..m("ktokens", Aggregation::Sum, Some("tokens"), &[], &[])
        },
        // Meters that carry over: gauges, and recurring seats and members.
        m(
            "input_seconds",
            Aggregation::WeightedSum,
            Some("usage.input"),
            &[],
            &["region"],
        ),
        Meter {
            scale: Some(Decimal::ONE / Decimal::from(3600)),
            ..m(
                "eu_token_hours",
                Aggregation::WeightedSum,
                Some("tokens"),
                &[("region", "eu")],
                &[],
            )
        },
        recurring(m(
            "seats",
            Aggregation::Latest,
            Some("usage.input"),
            &[],
            &["region"],
        )),
        recurring(m(
            "seats_all",
            Aggregation::Latest,
            Some("tokens"),
            &[],
            &[],
        )),
        recurring(m(
            "members",
            Aggregation::UniqueCount,
            Some("user"),
            &[],
            &["region"],
        )),
        recurring(m(
            "eu_members",
            Aggregation::UniqueCount,
            Some("user"),
            &[("region", "eu")],
            &[],
        )),
        // A call meter beside them reads call events only (there are none here).
        Meter {
            events: None,
            ..m("calls", Aggregation::Count, None, &[], &[])
        },
    ]
}

#[tokio::test]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs ClickHouse and chDB: cargo test --features real-servers (deploy/dev/services.sh install, start)"
)]
async fn meters_of_usage_events_agree_with_the_embedded_store_and_events_count_once() {
    let store = store().await;
    store.migrate().await.unwrap();
    let start = Utc.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap();
    let mut events = usage_events(start);
    // Three events cancelled, by records made days later (outside every range below): the
    // stores leave them out all the same.
    for i in [4usize, 17, 250] {
        let c = peage_core::UsageEvent::cancellation_of(&events[i], start + TimeDelta::days(5));
        events.push(c);
    }
    let cancelled: std::collections::HashSet<(String, uuid::Uuid)> = events
        .iter()
        .filter_map(|e| e.cancels().map(|k| (e.partner_id.clone(), k)))
        .collect();
    let logged: Vec<LoggedUsageEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| LoggedUsageEvent {
            partition: (i % 2) as u32,
            offset: (i / 2) as u64,
            event: e.clone(),
        })
        .collect();
    for chunk in logged.chunks(250) {
        store
            .insert_usage_events("peage.usage-events.v1", chunk)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let embedded = peage_usage_store::SqliteUsageStore::open(&dir.path().join("usage.db"))
        .await
        .unwrap();
    let first = embedded.insert_usage_events("", &logged).await.unwrap();
    assert_eq!((first.inserted, first.duplicates), (603, 0));
    // Inserting again stores nothing twice.
    let again = embedded
        .insert_usage_events("", &logged[..100])
        .await
        .unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 100));

    // Positions of the usage topic are kept as the call topic's.
    let positions = store
        .stored_positions("peage.usage-events.v1", &[0, 1])
        .await
        .unwrap();
    assert_eq!(positions, [(0, 301), (1, 300)].into());

    let meters = usage_meters();
    for (partner, from, to) in [
        ("prt_a", start, start + TimeDelta::days(1)),
        ("prt_b", start, start + TimeDelta::days(1)),
        // Across the month boundary on an edge that is not on the hour or minute.
        (
            "prt_a",
            start + TimeDelta::microseconds(1_234_567_891),
            start + TimeDelta::minutes(150),
        ),
        ("prt_none", start, start + TimeDelta::days(1)),
        // Starting after some events, and after every event: what carries over comes from
        // before the range.
        (
            "prt_a",
            start + TimeDelta::minutes(127) + TimeDelta::microseconds(17),
            start + TimeDelta::days(1),
        ),
        (
            "prt_b",
            start + TimeDelta::hours(5),
            start + TimeDelta::hours(6),
        ),
    ] {
        let q = UsageQuery {
            partner_id: partner.into(),
            env: Env::Live,
            from,
            to,
        };
        let expected = peage_core::meter::evaluate_usage_events(
            &meters,
            events.iter().filter(|e| {
                e.partner_id == partner && !cancelled.contains(&(e.partner_id.clone(), e.key))
            }),
            peage_core::meter::Span::new(from, to),
        );
        if partner != "prt_none" {
            // What carries over is there to compare.
            for name in ["input_seconds", "seats", "members"] {
                let u = expected.iter().find(|u| u.meter == name).unwrap();
                assert!(!u.quantity.is_zero() && !u.groups.is_empty(), "{u:?}");
            }
        }
        let ch = store.meter_usage(&q, &meters).await.unwrap();
        let sqlite = embedded.meter_usage(&q, &meters).await.unwrap();
        // Each event's amount, for charges that price each event: the same list, in the same
        // order, from both stores, and summing to the meter.
        for m in meters
            .iter()
            .filter(|m| m.aggregation == Aggregation::Sum && m.events.is_some())
        {
            let want = peage_core::meter::event_amounts(
                m,
                events.iter().filter(|e| e.partner_id == partner),
                peage_core::meter::Span::new(from, to),
            );
            let sum: Decimal = want.iter().sum();
            let metered = expected.iter().find(|u| u.meter == m.name).unwrap();
            assert_eq!(sum.normalize(), metered.quantity, "{}", m.name);
            assert_eq!(
                store.event_amounts(&q, m).await.unwrap(),
                want,
                "ClickHouse amounts of {}",
                m.name
            );
            assert_eq!(
                embedded.event_amounts(&q, m).await.unwrap(),
                want,
                "embedded amounts of {}",
                m.name
            );
        }
        assert_eq!(ch, expected, "ClickHouse, {partner} {from}..{to}");
        assert_eq!(sqlite, expected, "embedded, {partner} {from}..{to}");
        // The sandbox has no usage events.
        let sandbox = UsageQuery {
            env: Env::Sandbox,
            ..q
        };
        let zero = store.meter_usage(&sandbox, &meters).await.unwrap();
        assert!(zero.iter().all(|u| u.quantity.is_zero()), "{zero:?}");
    }
    let q = UsageQuery {
        partner_id: "prt_a".into(),
        env: Env::Live,
        from: start,
        to: start + TimeDelta::days(1),
    };
    let tokens = store.meter_usage(&q, &meters).await.unwrap();
    assert!(
        tokens[0].quantity > Decimal::ZERO && tokens[0].groups.len() == 2,
        "{tokens:?}"
    );

    // Per bucket, as dashboards chart them: buckets of 5 minutes from an edge off the minute,
    // each evaluated on its own, equal on both stores and to peage_core's.
    let edges: Vec<DateTime<Utc>> = (0..40)
        .map(|i| start + TimeDelta::seconds(17) + TimeDelta::minutes(5 * i))
        .collect();
    for m in meters.iter().filter(|m| m.events.is_some()) {
        for partner in ["prt_a", "prt_b"] {
            let live: Vec<&peage_core::UsageEvent> = events
                .iter()
                .filter(|e| {
                    e.partner_id == partner && !cancelled.contains(&(e.partner_id.clone(), e.key))
                })
                .collect();
            let expected = peage_core::series::event_meter_buckets(m, live, &edges, Utc::now());
            assert!(
                expected.iter().filter(|v| !v.is_zero()).count() > 10,
                "{}",
                m.name
            );
            let ch = store.event_meter_series(partner, m, &edges).await.unwrap();
            let sqlite = embedded
                .event_meter_series(partner, m, &edges)
                .await
                .unwrap();
            assert_eq!(
                ch.values, expected,
                "ClickHouse series of {} for {partner}",
                m.name
            );
            assert_eq!(
                sqlite.values, expected,
                "embedded series of {} for {partner}",
                m.name
            );
            // The total is the meter over the whole range, not the sum of the buckets.
            let whole = UsageQuery {
                partner_id: partner.into(),
                env: Env::Live,
                from: edges[0],
                to: *edges.last().unwrap(),
            };
            let total = store
                .meter_usage(&whole, std::slice::from_ref(m))
                .await
                .unwrap()[0]
                .quantity;
            assert_eq!(
                (ch.total, sqlite.total),
                (total, total),
                "total of {}",
                m.name
            );
        }
    }
    // The event types received, cancellation records left out.
    let types = store.usage_event_types(&q).await.unwrap();
    let want = |ty: &str| {
        let of_type: Vec<_> = events
            .iter()
            .filter(|e| {
                e.partner_id == "prt_a" && e.event_type == ty && e.time >= q.from && e.time < q.to
            })
            .collect();
        (
            of_type.len() as u64,
            of_type.iter().map(|e| e.time).max().unwrap(),
        )
    };
    let seen: Vec<(String, u64, DateTime<Utc>)> = types
        .iter()
        .map(|t| (t.event_type.clone(), t.events, t.last_time))
        .collect();
    let (llm, llm_last) = want("com.example.llm");
    let (storage, storage_last) = want("com.example.storage");
    assert_eq!(
        seen,
        [
            ("com.example.llm".to_string(), llm, llm_last),
            ("com.example.storage".to_string(), storage, storage_last)
        ]
    );
    assert_eq!(embedded.usage_event_types(&q).await.unwrap(), types);

    // The digests of what is stored, for the aggregator's re-send and conflict checks.
    let keys = |events: &[peage_core::UsageEvent]| -> Vec<(String, uuid::Uuid)> {
        events
            .iter()
            .map(|e| (e.partner_id.clone(), e.key))
            .collect()
    };
    let digests = store
        .stored_usage_digests(&keys(&events[..20]))
        .await
        .unwrap();
    assert_eq!(digests.len(), 20);
    assert_eq!(
        digests[&(events[3].partner_id.clone(), events[3].key)],
        events[3].digest
    );
    assert_eq!(
        embedded
            .stored_usage_digests(&keys(&events[..20]))
            .await
            .unwrap(),
        digests
    );
    // The same ids received 40 days later (another time, as a re-send of an event without
    // `time` would have) are found by key, with the stored copy's digest.
    let later = usage_events(start + TimeDelta::days(40));
    let found = store
        .stored_usage_digests(&keys(&later[..5]))
        .await
        .unwrap();
    assert_eq!(found.len(), 5, "{found:?}");
    for (e, l) in events[..5].iter().zip(&later[..5]) {
        assert_eq!(found[&(l.partner_id.clone(), l.key)], e.digest);
        assert_ne!(e.digest, l.digest);
    }
    assert_eq!(
        embedded
            .stored_usage_digests(&keys(&later[..5]))
            .await
            .unwrap(),
        found
    );
    // Keys never stored are not found, in lookups of more keys than one query names.
    let unknown: Vec<_> = (0..4_500)
        .map(|i| {
            let mut e = later[i % later.len()].clone();
            e.key = uuid::Uuid::now_v7();
            e
        })
        .collect();
    assert!(store
        .stored_usage_digests(&keys(&unknown))
        .await
        .unwrap()
        .is_empty());
    // A stored event read back by key, whatever its time.
    let back = store
        .stored_usage_event(&events[3].partner_id, events[3].key)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (back.time, &back.digest),
        (events[3].time, &events[3].digest)
    );

    store
        .client()
        .query(&format!("DROP DATABASE {}", store_db(&store)))
        .execute()
        .await
        .ok();
    chdb_check(&store.recorded_queries());
}

/// Runs every query this test sent (to Debian's ClickHouse 18.16) on a current ClickHouse
/// through chDB, after applying every migration there (schemas/clickhouse/chdb_check.py).
fn chdb_check(queries: &[String]) {
    let python = std::env::var("PEAGE_CHDB_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let tools = std::env::var("PEAGE_TOOLS_DIR").unwrap_or(format!("{home}/.cache/peage"));
        format!("{tools}/chdb-venv/bin/python")
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "chDB is not installed: no {python} (deploy/dev/services.sh install)"
    );
    assert!(
        queries.len() >= 10,
        "the test recorded its queries: {}",
        queries.len()
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(queries).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/clickhouse/chdb_check.py"
        ))
        .arg(file.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "queries fail on a current ClickHouse (chDB):\n{text}"
    );
}

fn store_db(store: &ClickHouseUsageStore) -> String {
    store.client().database().unwrap_or("default").to_string()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs ClickHouse: cargo test --features real-servers (deploy/dev/services.sh start)"
)]
async fn retention_drops_only_whole_old_months_of_raw_calls_and_keeps_the_rollups() {
    let store = store().await;
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let embedded = peage_usage_store::SqliteUsageStore::open(&dir.path().join("usage.db"))
        .await
        .unwrap();
    // Calls in August, September (up to its last microsecond) and October 2026.
    let times = [
        Utc.with_ymd_and_hms(2026, 8, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 8, 20, 12, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 9, 30, 23, 59, 59).unwrap() + TimeDelta::microseconds(999_999),
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 10, 15, 8, 30, 0).unwrap(),
    ];
    let events: Vec<LoggedEvent> = (0..500u64)
        .map(|i| LoggedEvent {
            partition: 0,
            offset: i,
            event: event(i, "prt_a", times[(i % 5) as usize]),
        })
        .collect();
    store.insert_logged("calls", &events).await.unwrap();
    embedded.insert_logged("calls", &events).await.unwrap();
    let whole = UsageQuery {
        partner_id: "prt_a".into(),
        env: Env::Live,
        from: times[0] - TimeDelta::days(1),
        to: times[4] + TimeDelta::days(1),
    };
    let rollups_before = (
        store.rollup_totals(Rollup::Hour, None).await.unwrap(),
        per_hour(&embedded.hourly_rollups(&whole).await.unwrap()),
    );
    let raw_before = store.raw_totals(None).await.unwrap();

    // Not a month's first instant: refused, nothing dropped.
    let mid = Utc.with_ymd_and_hms(2026, 10, 15, 0, 0, 0).unwrap();
    for e in [
        store.drop_raw_call_months(mid).await.unwrap_err(),
        embedded.drop_raw_call_months(mid).await.unwrap_err(),
    ] {
        assert!(e.to_string().contains("whole months"), "{e}");
    }
    let october = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    assert_eq!(
        store.drop_raw_call_months(october).await.unwrap(),
        [202608, 202609]
    );
    assert_eq!(
        embedded.drop_raw_call_months(october).await.unwrap(),
        [202608, 202609]
    );
    // Again: nothing left to drop.
    assert!(store
        .drop_raw_call_months(october)
        .await
        .unwrap()
        .is_empty());
    assert!(embedded
        .drop_raw_call_months(october)
        .await
        .unwrap()
        .is_empty());

    // October's raw calls are all there, the rest gone; the rollups did not move.
    let kept = |e: &&LoggedEvent| e.event.time >= october;
    let raw_after = store.raw_totals(None).await.unwrap();
    assert!(raw_after.calls < raw_before.calls);
    let served_in_october = events
        .iter()
        .filter(kept)
        .filter(|e| !e.event.attributes.contains_key(peage_core::event::REFUSAL))
        .count() as u64;
    assert_eq!(raw_after.calls, served_in_october);
    let ch_refused: u64 = store
        .refused_calls(&whole)
        .await
        .unwrap()
        .iter()
        .map(|r| r.calls)
        .sum();
    let sqlite_refused: u64 = embedded
        .refused_calls(&whole)
        .await
        .unwrap()
        .iter()
        .map(|r| r.calls)
        .sum();
    let expected_refused = events
        .iter()
        .filter(kept)
        .filter(|e| e.event.env == Env::Live)
        .filter(|e| e.event.attributes.contains_key(peage_core::event::REFUSAL))
        .count() as u64;
    assert_eq!(
        (ch_refused, sqlite_refused),
        (expected_refused, expected_refused)
    );
    assert_eq!(
        (
            store.rollup_totals(Rollup::Hour, None).await.unwrap(),
            per_hour(&embedded.hourly_rollups(&whole).await.unwrap()),
        ),
        rollups_before,
        "rollups are kept"
    );
}
