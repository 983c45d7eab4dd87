//! `[[meter]]`: call meters and event meters (value, filters, group_by).

use std::collections::{BTreeMap, HashSet};

use toml::Spanned;

use crate::meter::{Aggregation, Dimension, Meter, MeterField};

use super::raw::*;
use super::source::{parse_enum, Source};

pub(super) fn validate_meters(src: &mut Source, raw: &[RawMeter]) -> Vec<Meter> {
    let mut meters = Vec::new();
    let mut seen = HashSet::new();
    for m in raw {
        let path = format!("meter[{}]", m.name.get_ref());
        src.name(&m.name, &format!("{path}.name"));
        if !seen.insert(m.name.get_ref().clone()) {
            src.issue(
                m.name.span(),
                format!("{path}.name"),
                "duplicate meter name",
            );
        }
        let Some(aggregation) = parse_enum::<Aggregation>(m.aggregation.get_ref()) else {
            src.issue(
                m.aggregation.span(),
                format!("{path}.aggregation"),
                format!(
                    "{:?} is not one of count, sum, max, unique_count, latest, weighted_sum",
                    m.aggregation.get_ref()
                ),
            );
            continue;
        };
        if let Some(t) = m
            .event_type
            .as_ref()
            .filter(|t| t.get_ref() != crate::usage_event::CALL_EVENT_TYPE)
        {
            if let Some(meter) = event_meter(src, &path, m, aggregation, t) {
                meters.push(meter);
            }
            continue;
        }
        if let Some(v) = &m.value {
            src.issue(
                v.span(),
                format!("{path}.value"),
                "value reads the data of usage events; a meter of call events reads `field`",
            );
        }
        if let Some(r) = &m.recurring {
            src.issue(
                r.span(),
                format!("{path}.recurring"),
                "recurring meters read usage events (set event_type and value)",
            );
        }
        if aggregation == Aggregation::WeightedSum {
            src.issue(
                m.aggregation.span(),
                format!("{path}.aggregation"),
                "weighted_sum reads gauge readings from usage events (set event_type and value)",
            );
            continue;
        }
        let field = match (&m.field, aggregation) {
            (None, Aggregation::Count) => MeterField::Calls,
            (None, _) => {
                src.issue(m.aggregation.span(), format!("{path}.field"), "this aggregation needs a field (calls, request_bytes, response_bytes, units, latency_ms)");
                continue;
            }
            (Some(f), _) => match parse_enum::<MeterField>(f.get_ref()) {
                Some(field) if field.is_numeric() || aggregation == Aggregation::UniqueCount => {
                    field
                }
                Some(_) => {
                    src.issue(
                        f.span(),
                        format!("{path}.field"),
                        format!(
                            "{:?} is an identifier; only unique_count can read it",
                            f.get_ref()
                        ),
                    );
                    continue;
                }
                None => {
                    src.issue(f.span(), format!("{path}.field"), format!("{:?} is not one of calls, request_bytes, response_bytes, units, latency_ms, key_id, operation", f.get_ref()));
                    continue;
                }
            },
        };
        let scale = m
            .scale
            .as_ref()
            .and_then(|s| src.decimal(s, &format!("{path}.scale")));
        let mut filter = BTreeMap::new();
        for (dim, values) in &m.filter {
            match parse_enum::<Dimension>(dim) {
                Some(d) => {
                    filter.insert(d, values.get_ref().iter().cloned().collect());
                }
                None => src.issue(
                    values.span(),
                    format!("{path}.filter.{dim}"),
                    "not one of api, version, operation, method, status_class, key_id",
                ),
            }
        }
        let mut group_by = Vec::new();
        for g in &m.group_by {
            match parse_enum::<Dimension>(g.get_ref()) {
                Some(d) => group_by.push(d),
                None => src.issue(
                    g.span(),
                    format!("{path}.group_by"),
                    format!(
                        "{:?} is not one of api, version, operation, method, status_class, key_id",
                        g.get_ref()
                    ),
                ),
            }
        }
        let refusals = match &m.refusals {
            None => crate::meter::Refusals::Exclude,
            Some(r) => match parse_enum::<crate::meter::Refusals>(r.get_ref()) {
                Some(r) => r,
                None => {
                    src.issue(
                        r.span(),
                        format!("{path}.refusals"),
                        format!("{:?} is not one of exclude, include, only", r.get_ref()),
                    );
                    crate::meter::Refusals::Exclude
                }
            },
        };
        meters.push(Meter {
            name: m.name.get_ref().clone(),
            aggregation,
            field,
            scale,
            filter,
            group_by,
            refusals,
            events: None,
        });
    }
    meters
}

/// A meter over usage events of type `t` (`[[meter]]` with `event_type`): `value`, `filter` and
/// `group_by` name data properties; the call-only settings are refused.
fn event_meter(
    src: &mut Source,
    path: &str,
    m: &RawMeter,
    aggregation: Aggregation,
    t: &Spanned<String>,
) -> Option<Meter> {
    let mut ok = true;
    for (key, given) in [
        ("field", m.field.as_ref().map(Spanned::span)),
        ("refusals", m.refusals.as_ref().map(Spanned::span)),
    ] {
        if let Some(span) = given {
            src.issue(
                span,
                format!("{path}.{key}"),
                format!(
                    "{key} is for meters of call events; a meter of {:?} events reads `value`",
                    t.get_ref()
                ),
            );
            ok = false;
        }
    }
    let bad_path = |p: &str| p.is_empty() || p.split('.').any(str::is_empty);
    let value = match (&m.value, aggregation) {
        (None, Aggregation::Count) => None,
        (None, _) => {
            src.issue(
                m.aggregation.span(),
                format!("{path}.value"),
                "this aggregation needs a value: the data property it reads, e.g. \"tokens\" or \"usage.input_tokens\"",
            );
            return None;
        }
        (Some(v), _) if bad_path(v.get_ref()) => {
            src.issue(
                v.span(),
                format!("{path}.value"),
                format!(
                    "{:?} is not a property path (names joined by dots)",
                    v.get_ref()
                ),
            );
            return None;
        }
        (Some(v), _) => Some(v.get_ref().clone()),
    };
    if t.get_ref().is_empty() {
        src.issue(t.span(), format!("{path}.event_type"), "must not be empty");
        ok = false;
    }
    if t.get_ref()
        .starts_with(crate::usage_event::RESERVED_TYPE_PREFIX)
    {
        src.issue(
            t.span(),
            format!("{path}.event_type"),
            format!("{:?} is reserved: types starting with \"peage.\" are Péage's own (peage.call.v1 is the call meters')", t.get_ref()),
        );
        ok = false;
    }
    let mut filter = BTreeMap::new();
    for (prop, values) in &m.filter {
        if bad_path(prop) {
            src.issue(
                values.span(),
                format!("{path}.filter.{prop}"),
                "not a property path (names joined by dots)",
            );
            ok = false;
        }
        filter.insert(prop.clone(), values.get_ref().iter().cloned().collect());
    }
    let mut group_by = Vec::new();
    for g in &m.group_by {
        if bad_path(g.get_ref()) {
            src.issue(
                g.span(),
                format!("{path}.group_by"),
                format!(
                    "{:?} is not a property path (names joined by dots)",
                    g.get_ref()
                ),
            );
            ok = false;
        }
        group_by.push(g.get_ref().clone());
    }
    let recurring = m.recurring.as_ref().is_some_and(|r| *r.get_ref());
    if let Some(r) = m.recurring.as_ref().filter(|r| *r.get_ref()) {
        let why = match aggregation {
            Aggregation::Latest | Aggregation::UniqueCount => None,
            Aggregation::WeightedSum => Some("a weighted_sum always carries its last reading into the next period; recurring is for latest and unique_count"),
            _ => Some("only latest and unique_count carry values across periods"),
        };
        if let Some(why) = why {
            src.issue(r.span(), format!("{path}.recurring"), why);
            ok = false;
        }
    }
    let scale = m
        .scale
        .as_ref()
        .and_then(|s| src.decimal(s, &format!("{path}.scale")));
    ok.then(|| Meter {
        name: m.name.get_ref().clone(),
        aggregation,
        field: MeterField::Calls,
        scale,
        filter: BTreeMap::new(),
        group_by: Vec::new(),
        refusals: crate::meter::Refusals::Exclude,
        events: Some(crate::meter::EventSelector {
            event_type: t.get_ref().clone(),
            value,
            filter,
            group_by,
            recurring,
        }),
    })
}
