//! Meters are declared data: an aggregation over one event field, with filters and group-by.
//! They are evaluated over raw events, so a new or changed meter applies to past data too.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::CallEvent;
use crate::usage_event::{Properties, UsageEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Max,
    UniqueCount,
    Latest,
    /// Gauge readings weighted by how long each held (value × seconds), over meters of usage
    /// events: the reading in force when the range starts is carried in (see [`crate::carry`]).
    WeightedSum,
}

/// The event field a meter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterField {
    /// 1 per call.
    Calls,
    RequestBytes,
    ResponseBytes,
    Units,
    LatencyMs,
    /// Identifiers, only meaningful for `unique_count` (e.g. active keys).
    KeyId,
    Operation,
}

impl MeterField {
    pub fn is_numeric(self) -> bool {
        !matches!(self, MeterField::KeyId | MeterField::Operation)
    }

    fn numeric(self, e: &CallEvent) -> Decimal {
        match self {
            MeterField::Calls => Decimal::ONE,
            MeterField::RequestBytes => Decimal::from(e.request_bytes),
            MeterField::ResponseBytes => Decimal::from(e.response_bytes),
            MeterField::Units => e.units,
            // Exact: microseconds / 1000, no float in between.
            MeterField::LatencyMs => Decimal::from(e.latency_us) / Decimal::from(1000),
            MeterField::KeyId | MeterField::Operation => Decimal::ZERO,
        }
    }

    fn identity(self, e: &CallEvent) -> String {
        match self {
            MeterField::KeyId => e.key_id.clone(),
            MeterField::Operation => e.operation.clone(),
            other => other.numeric(e).normalize().to_string(),
        }
    }
}

/// Event dimensions a meter can filter on and group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Api,
    Version,
    Operation,
    Method,
    StatusClass,
    KeyId,
}

impl Dimension {
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Api => "api",
            Dimension::Version => "version",
            Dimension::Operation => "operation",
            Dimension::Method => "method",
            Dimension::StatusClass => "status_class",
            Dimension::KeyId => "key_id",
        }
    }

    /// Kept in the usage rollups (everything but `key_id`).
    pub fn rolled_up(self) -> bool {
        !matches!(self, Dimension::KeyId)
    }

    pub fn value(self, e: &CallEvent) -> &str {
        match self {
            Dimension::Api => &e.api,
            Dimension::Version => &e.version,
            Dimension::Operation => &e.operation,
            Dimension::Method => &e.method,
            Dimension::StatusClass => e.status_class(),
            Dimension::KeyId => &e.key_id,
        }
    }
}

/// Which calls the gateway refused (docs/gateway.md, "Refusals") a meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusals {
    /// Served calls only: being refused is not billable.
    #[default]
    Exclude,
    /// Refused calls too.
    Include,
    /// Refused calls only (a meter of 429s and 403s).
    Only,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub name: String,
    pub aggregation: Aggregation,
    pub field: MeterField,
    /// Multiplies the aggregated value (e.g. `1e-9` turns bytes into GB).
    pub scale: Option<Decimal>,
    /// Every listed dimension must match one of its values.
    pub filter: BTreeMap<Dimension, BTreeSet<String>>,
    pub group_by: Vec<Dimension>,
    #[serde(default)]
    pub refusals: Refusals,
    /// Set on meters over usage events (`POST /v1/events`): which events they read and how.
    /// Call meters leave it out; `field`, `filter`, `group_by` and `refusals` are theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventSelector>,
}

/// What a meter over usage events reads: events of one `type`, the number at `value` in their
/// data (count needs none), filtered and grouped by data properties (dotted paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSelector {
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Every listed property's text must be one of its values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// `latest` and `unique_count` carried from one period to the next (seats): the latest
    /// value before a range counts in it, and a unique value stays until an event with
    /// `operation_type = "remove"` removes it ([`crate::carry`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recurring: bool,
}

impl EventSelector {
    pub fn matches(&self, e: &UsageEvent, p: &Properties) -> bool {
        e.event_type == self.event_type
            && self
                .filter
                .iter()
                .all(|(path, allowed)| p.text(path).is_some_and(|v| allowed.contains(v)))
    }
}

impl Meter {
    pub fn matches(&self, e: &CallEvent) -> bool {
        self.events.is_none()
            && self.admits_refusal_of(e)
            && self
                .filter
                .iter()
                .all(|(dim, allowed)| allowed.contains(dim.value(e)))
    }

    fn admits_refusal_of(&self, e: &CallEvent) -> bool {
        match (self.refusals, e.refusal().is_some()) {
            (Refusals::Exclude, refused) => !refused,
            (Refusals::Include, _) => true,
            (Refusals::Only, refused) => refused,
        }
    }

    /// Whether this meter can be computed from the usage rollups (sums by api, version,
    /// operation, method and status) rather than from raw events: counts and sums of numeric
    /// fields, filtered and grouped by rolled-up dimensions only.
    pub fn rollup_compatible(&self) -> bool {
        // Rollups hold served calls only ([`RollupRow::holds`]).
        self.events.is_none()
            && self.refusals == Refusals::Exclude
            && matches!(self.aggregation, Aggregation::Count | Aggregation::Sum)
            && self.field.is_numeric()
            && self
                .filter
                .keys()
                .chain(self.group_by.iter())
                .all(|d| d.rolled_up())
    }

    /// Whether a quota can be set on this meter: it must grow call by call (count, or sum of a
    /// numeric field), so gateways can spend it locally from leases.
    pub fn quotable(&self) -> bool {
        self.events.is_none()
            && matches!(self.aggregation, Aggregation::Count | Aggregation::Sum)
            && self.field.is_numeric()
    }

    /// What one call adds to this meter, or zero when the call does not match its filter.
    pub fn contribution(&self, e: &CallEvent) -> Decimal {
        if !self.matches(e) {
            return Decimal::ZERO;
        }
        self.value_of(e)
    }

    /// [`Meter::contribution`] before the response is known: the status filter is assumed to
    /// match, and fields not yet measured (bytes, latency) count as they stand in `e`.
    pub fn estimate(&self, e: &CallEvent) -> Decimal {
        if !self.may_match(e) {
            return Decimal::ZERO;
        }
        self.value_of(e)
    }

    /// Whether a call can count towards this meter once its status is known.
    pub fn may_match(&self, e: &CallEvent) -> bool {
        self.events.is_none()
            && self.admits_refusal_of(e)
            && self.filter.iter().all(|(dim, allowed)| {
                *dim == Dimension::StatusClass || allowed.contains(dim.value(e))
            })
    }

    fn value_of(&self, e: &CallEvent) -> Decimal {
        let raw = match self.aggregation {
            Aggregation::Count => Decimal::ONE,
            Aggregation::Sum => self.field.numeric(e),
            _ => Decimal::ZERO,
        };
        self.scale.map_or(raw, |s| raw.saturating_mul(s))
    }

    /// Whether this meter reads events from before its range: a weighted sum (the reading in
    /// force when the range starts) and a recurring meter (values carried across periods).
    pub fn carries_over(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|s| s.recurring || self.aggregation == Aggregation::WeightedSum)
    }

    pub fn accumulator(&self) -> MeterAccumulator<'_> {
        MeterAccumulator {
            meter: self,
            total: Acc::default(),
            groups: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Acc {
    count: u64,
    sum: Decimal,
    max: Option<Decimal>,
    unique: HashSet<String>,
    latest: Option<(DateTime<Utc>, Decimal)>,
}

impl Acc {
    /// One usage event: count it, or read the number (for `unique_count`, the text) at
    /// `value`.
    fn add_event(
        &mut self,
        aggregation: Aggregation,
        value: Option<&str>,
        e: &UsageEvent,
        p: &Properties,
    ) {
        let number = || value.and_then(|v| p.number(v));
        match aggregation {
            Aggregation::Count => self.count += 1,
            Aggregation::Sum => {
                if let Some(v) = number() {
                    self.sum = self.sum.saturating_add(v);
                }
            }
            Aggregation::Max => {
                if let Some(v) = number() {
                    self.max = Some(self.max.map_or(v, |m| m.max(v)));
                }
            }
            Aggregation::UniqueCount => {
                if let Some(t) = value.and_then(|v| p.text(v)) {
                    self.unique.insert(t.to_string());
                }
            }
            Aggregation::Latest => {
                if let Some(v) = number() {
                    if self.latest.is_none_or(|(t, lv)| (e.time, v) > (t, lv)) {
                        self.latest = Some((e.time, v));
                    }
                }
            }
            // Time-weighted: [`crate::carry`] evaluates it from the readings.
            Aggregation::WeightedSum => {}
        }
    }

    fn add(&mut self, meter: &Meter, e: &CallEvent) {
        match meter.aggregation {
            Aggregation::Count => self.count += 1,
            Aggregation::Sum => self.sum = self.sum.saturating_add(meter.field.numeric(e)),
            Aggregation::Max => {
                let v = meter.field.numeric(e);
                self.max = Some(self.max.map_or(v, |m| m.max(v)));
            }
            Aggregation::UniqueCount => {
                self.unique.insert(meter.field.identity(e));
            }
            Aggregation::Latest => {
                let v = meter.field.numeric(e);
                // Ties on time break towards the larger value so the result is order-independent.
                if self.latest.is_none_or(|(t, lv)| (e.time, v) > (t, lv)) {
                    self.latest = Some((e.time, v));
                }
            }
            // Only over usage events (the catalog refuses it on call meters).
            Aggregation::WeightedSum => {}
        }
    }

    fn value(&self, meter: &Meter) -> Decimal {
        let raw = match meter.aggregation {
            Aggregation::Count => Decimal::from(self.count),
            Aggregation::Sum | Aggregation::WeightedSum => self.sum,
            Aggregation::Max => self.max.unwrap_or(Decimal::ZERO),
            Aggregation::UniqueCount => Decimal::from(self.unique.len() as u64),
            Aggregation::Latest => self.latest.map_or(Decimal::ZERO, |(_, v)| v),
        };
        scaled(meter, raw)
    }
}

/// Feeds events through one meter; yields its total and per-group values.
pub struct MeterAccumulator<'m> {
    meter: &'m Meter,
    total: Acc,
    groups: BTreeMap<Vec<String>, Acc>,
}

impl MeterAccumulator<'_> {
    pub fn add(&mut self, e: &CallEvent) {
        if !self.meter.matches(e) {
            return;
        }
        self.total.add(self.meter, e);
        if !self.meter.group_by.is_empty() {
            let key = self
                .meter
                .group_by
                .iter()
                .map(|d| d.value(e).to_string())
                .collect();
            self.groups.entry(key).or_default().add(self.meter, e);
        }
    }

    pub fn finish(self) -> MeterUsage {
        let meter = self.meter;
        MeterUsage {
            amounts: None,
            meter: meter.name.clone(),
            quantity: self.total.value(meter),
            groups: self
                .groups
                .iter()
                .map(|(key, acc)| MeterGroup {
                    dimensions: meter
                        .group_by
                        .iter()
                        .map(|d| d.name().to_string())
                        .zip(key.iter().cloned())
                        .collect(),
                    quantity: acc.value(meter),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MeterUsage {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<MeterGroup>,
    /// Each event's amount in time order, read only for a charge that prices each event
    /// ([`crate::pricing::Charge::prices_each_event`]); never serialized.
    #[serde(skip)]
    pub amounts: Option<Vec<Decimal>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MeterGroup {
    pub dimensions: BTreeMap<String, String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
}

/// One row of a usage rollup: the sums of every call with the same dimensions in some time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub api: String,
    pub version: String,
    pub operation: String,
    pub method: String,
    pub status: u16,
    pub calls: u64,
    pub units: Decimal,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_us: u64,
}

impl RollupRow {
    /// Whether rollups hold this call: served calls only, so that every meter that leaves
    /// refused calls out (the default) can be read from rollups, and those that count them are
    /// read from raw events.
    pub fn holds(e: &CallEvent) -> bool {
        e.refusal().is_none()
    }

    /// The rollup row of one call.
    pub fn of(e: &CallEvent) -> RollupRow {
        RollupRow {
            api: e.api.clone(),
            version: e.version.clone(),
            operation: e.operation.clone(),
            method: e.method.clone(),
            status: e.status,
            calls: 1,
            units: e.units,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            latency_us: e.latency_us,
        }
    }

    /// Adds one more call with the same dimensions.
    pub fn add(&mut self, e: &CallEvent) {
        self.calls += 1;
        self.units = self.units.saturating_add(e.units);
        self.request_bytes += e.request_bytes;
        self.response_bytes += e.response_bytes;
        self.latency_us += e.latency_us;
    }

    fn dimension(&self, d: Dimension) -> Option<&str> {
        Some(match d {
            Dimension::Api => &self.api,
            Dimension::Version => &self.version,
            Dimension::Operation => &self.operation,
            Dimension::Method => &self.method,
            Dimension::StatusClass => crate::event::status_class(self.status),
            Dimension::KeyId => return None,
        })
    }

    fn sum_of(&self, field: MeterField) -> Decimal {
        match field {
            MeterField::Calls => Decimal::from(self.calls),
            MeterField::RequestBytes => Decimal::from(self.request_bytes),
            MeterField::ResponseBytes => Decimal::from(self.response_bytes),
            MeterField::Units => self.units,
            MeterField::LatencyMs => Decimal::from(self.latency_us) / Decimal::from(1000),
            MeterField::KeyId | MeterField::Operation => Decimal::ZERO,
        }
    }
}

/// Evaluates rollup-compatible meters ([`Meter::rollup_compatible`]) over rollup rows; gives the
/// same result as [`evaluate`] over the raw events the rows sum up. `None` for a meter that
/// needs raw events.
pub fn evaluate_rollups(meter: &Meter, rows: &[RollupRow]) -> Option<MeterUsage> {
    if !meter.rollup_compatible() {
        return None;
    }
    let value = |r: &RollupRow| match meter.aggregation {
        Aggregation::Count => Decimal::from(r.calls),
        _ => r.sum_of(meter.field),
    };
    let mut total = Decimal::ZERO;
    let mut groups: BTreeMap<Vec<String>, Decimal> = BTreeMap::new();
    for r in rows {
        let matches = meter
            .filter
            .iter()
            .all(|(d, allowed)| r.dimension(*d).is_some_and(|v| allowed.contains(v)));
        if !matches {
            continue;
        }
        let v = value(r);
        total = total.saturating_add(v);
        if !meter.group_by.is_empty() {
            let key = meter
                .group_by
                .iter()
                .map(|d| r.dimension(*d).unwrap_or_default().to_string())
                .collect();
            let g = groups.entry(key).or_default();
            *g = g.saturating_add(v);
        }
    }
    let scaled = |raw: Decimal| match meter.scale {
        Some(s) => (raw * s).normalize(),
        None => raw.normalize(),
    };
    Some(MeterUsage {
        amounts: None,
        meter: meter.name.clone(),
        quantity: scaled(total),
        groups: groups
            .into_iter()
            .map(|(key, v)| MeterGroup {
                dimensions: meter
                    .group_by
                    .iter()
                    .map(|d| d.name().to_string())
                    .zip(key)
                    .collect(),
                quantity: scaled(v),
            })
            .collect(),
    })
}

/// Every meter's usage: the rollup-compatible ones over `rollups`, the others taken in order
/// from `raw` (one result per meter that needs raw events, as a store computed them).
pub fn combine(
    meters: &[Meter],
    rollups: &[RollupRow],
    raw: impl IntoIterator<Item = MeterUsage>,
) -> Vec<MeterUsage> {
    let mut raw = raw.into_iter();
    meters
        .iter()
        .map(|m| match evaluate_rollups(m, rollups) {
            Some(u) => u,
            None => raw.next().expect("one raw result per raw meter"),
        })
        .collect()
}

/// Evaluates every meter over one pass of events.
pub fn evaluate<'a>(
    meters: &[Meter],
    events: impl IntoIterator<Item = &'a CallEvent>,
) -> Vec<MeterUsage> {
    let mut accs: Vec<_> = meters.iter().map(Meter::accumulator).collect();
    for e in events {
        for a in &mut accs {
            a.add(e);
        }
    }
    accs.into_iter().map(MeterAccumulator::finish).collect()
}

/// The range a meter of usage events is evaluated over: events in `[from, to)` count; a meter
/// that carries over ([`Meter::carries_over`]) reads the earlier ones too. Weighted readings
/// hold until `until` at the latest: the end of the range, or the present in a range that has
/// not ended (a reading's future is not known yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Span {
    /// A range that has ended.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Span {
        Span {
            from,
            to,
            until: to,
        }
    }

    /// A range as it stands at `now`.
    pub fn as_of(from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> Span {
        Span {
            from,
            to,
            until: now.min(to).max(from),
        }
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }
}

/// Evaluates every meter over usage events in `span`: meters over events of their type, call
/// meters zero, events cancelled by a cancellation record among `events` left out. Events
/// before the span count only for meters that carry over, events at or after its end for
/// none. Events whose data gives no properties count with none (a store checked them when they
/// came in).
pub fn evaluate_usage_events<'a>(
    meters: &[Meter],
    events: impl IntoIterator<Item = &'a UsageEvent>,
    span: Span,
) -> Vec<MeterUsage> {
    let mut accs: Vec<(Acc, BTreeMap<Vec<String>, Acc>)> =
        meters.iter().map(|_| Default::default()).collect();
    let mut readings: Vec<Vec<crate::carry::Reading>> = meters.iter().map(|_| Vec::new()).collect();
    // Cancelled events count for nothing (stores leave them out the same way).
    let events: Vec<&UsageEvent> = events.into_iter().collect();
    let cancelled: HashSet<(String, uuid::Uuid)> = events
        .iter()
        .filter_map(|e| e.cancels().map(|k| (e.partner_id.clone(), k)))
        .collect();
    for e in events {
        if e.time >= span.to || cancelled.contains(&(e.partner_id.clone(), e.key)) {
            continue;
        }
        let in_span = e.time >= span.from;
        if !meters.iter().any(|m| {
            (in_span || m.carries_over())
                && m.events
                    .as_ref()
                    .is_some_and(|s| s.event_type == e.event_type)
        }) {
            continue;
        }
        let props = e.properties().unwrap_or_default();
        for (i, m) in meters.iter().enumerate() {
            let Some(sel) = &m.events else { continue };
            if m.carries_over() {
                if sel.matches(e, &props) {
                    readings[i].extend(crate::carry::Reading::of(m, sel, e, &props));
                }
                continue;
            }
            if !in_span {
                continue;
            }
            let (total, groups) = &mut accs[i];
            let value = sel.value.as_deref();
            // An event without the value counts for `count` only: it is in no group either.
            let has_value = match (m.aggregation, value) {
                (Aggregation::Count, _) => true,
                (Aggregation::UniqueCount, Some(v)) => props.text(v).is_some(),
                (_, Some(v)) => props.number(v).is_some(),
                (_, None) => false,
            };
            if !has_value || !sel.matches(e, &props) {
                continue;
            }
            total.add_event(m.aggregation, value, e, &props);
            if !sel.group_by.is_empty() {
                let key = sel
                    .group_by
                    .iter()
                    .map(|p| props.text(p).unwrap_or_default().to_string())
                    .collect();
                groups
                    .entry(key)
                    .or_default()
                    .add_event(m.aggregation, value, e, &props);
            }
        }
    }
    meters
        .iter()
        .zip(accs.into_iter().zip(readings))
        .map(|(m, ((total, groups), readings))| {
            if m.carries_over() {
                return crate::carry::evaluate(m, readings, span);
            }
            MeterUsage {
                amounts: None,
                meter: m.name.clone(),
                quantity: total.value(m),
                groups: groups
                    .iter()
                    .map(|(key, acc)| MeterGroup {
                        dimensions: group_dimensions(m, key),
                        quantity: acc.value(m),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The amounts of a `sum` meter of usage events, one per event of `span` that has the value,
/// in time order (ties by key text, as stores order them), each scaled as the meter is;
/// events cancelled by a record among `events` left out. What a charge that prices each event
/// reads ([`crate::pricing::Charge::price_each_event`]).
pub fn event_amounts<'a>(
    meter: &Meter,
    events: impl IntoIterator<Item = &'a UsageEvent>,
    span: Span,
) -> Vec<Decimal> {
    let Some(sel) = &meter.events else {
        return Vec::new();
    };
    let Some(path) = sel.value.as_deref() else {
        return Vec::new();
    };
    let events: Vec<&UsageEvent> = events.into_iter().collect();
    let cancelled: HashSet<(String, uuid::Uuid)> = events
        .iter()
        .filter_map(|e| e.cancels().map(|k| (e.partner_id.clone(), k)))
        .collect();
    let mut out: Vec<(DateTime<Utc>, String, Decimal)> = events
        .into_iter()
        .filter(|e| span.contains(e.time) && e.event_type == sel.event_type)
        .filter(|e| !cancelled.contains(&(e.partner_id.clone(), e.key)))
        .filter_map(|e| {
            let props = e.properties().unwrap_or_default();
            let v = props.number(path).filter(|_| sel.matches(e, &props))?;
            Some((e.time, e.key.to_string(), v))
        })
        .collect();
    out.sort();
    out.into_iter()
        .map(|(_, _, v)| match meter.scale {
            Some(s) => v.saturating_mul(s),
            None => v,
        })
        .collect()
}

/// A group of a meter of usage events: its `group_by` paths with the group's values.
pub(crate) fn group_dimensions(m: &Meter, key: &[String]) -> BTreeMap<String, String> {
    m.events
        .iter()
        .flat_map(|s| s.group_by.iter().cloned())
        .zip(key.iter().cloned())
        .collect()
}

/// The meter's scale applied to a raw quantity, normalized.
pub(crate) fn scaled(m: &Meter, raw: Decimal) -> Decimal {
    match m.scale {
        Some(s) => raw.saturating_mul(s).normalize(),
        None => raw.normalize(),
    }
}

/// Every meter's usage from the two kinds of events: meters over usage events from `events`,
/// the others from `calls` (each one result per meter, in order).
pub fn merge_event_meters(
    meters: &[Meter],
    calls: Vec<MeterUsage>,
    events: Vec<MeterUsage>,
) -> Vec<MeterUsage> {
    meters
        .iter()
        .zip(calls.into_iter().zip(events))
        .map(|(m, (c, e))| if m.events.is_some() { e } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample_event;
    use std::str::FromStr;

    fn meter(aggregation: Aggregation, field: MeterField) -> Meter {
        Meter {
            name: "m".into(),
            aggregation,
            field,
            scale: None,
            filter: BTreeMap::new(),
            group_by: vec![],
            refusals: Default::default(),
            events: None,
        }
    }

    fn events() -> Vec<CallEvent> {
        let mut out = vec![];
        for (i, (status, bytes, key)) in [(200, 100, "a"), (404, 300, "b"), (500, 50, "a")]
            .into_iter()
            .enumerate()
        {
            let mut e = sample_event();
            e.status = status;
            e.response_bytes = bytes;
            e.key_id = key.into();
            e.time += chrono::Duration::seconds(i as i64);
            e.api = if i == 2 {
                "maps".into()
            } else {
                "weather".into()
            };
            out.push(e);
        }
        out
    }

    #[test]
    fn each_aggregation_over_three_events() {
        let ev = events();
        let q = |m: Meter| evaluate(&[m], &ev)[0].quantity;
        assert_eq!(
            q(meter(Aggregation::Count, MeterField::Calls)),
            Decimal::from(3)
        );
        assert_eq!(
            q(meter(Aggregation::Sum, MeterField::ResponseBytes)),
            Decimal::from(450)
        );
        assert_eq!(
            q(meter(Aggregation::Max, MeterField::ResponseBytes)),
            Decimal::from(300)
        );
        assert_eq!(
            q(meter(Aggregation::UniqueCount, MeterField::KeyId)),
            Decimal::from(2)
        );
        assert_eq!(
            q(meter(Aggregation::Latest, MeterField::ResponseBytes)),
            Decimal::from(50)
        );
    }

    #[test]
    fn refused_calls_count_only_in_meters_that_ask_for_them() {
        let mut ev = events();
        let mut refused = sample_event();
        refused.status = 429;
        refused.units = Decimal::ZERO;
        refused
            .attributes
            .insert(crate::event::REFUSAL.into(), "rate-limited".into());
        ev.push(refused.clone());
        let count = |refusals: Refusals| {
            let mut m = meter(Aggregation::Count, MeterField::Calls);
            m.refusals = refusals;
            evaluate(&[m], &ev)[0].quantity
        };
        assert_eq!(count(Refusals::Exclude), Decimal::from(3), "the default");
        assert_eq!(count(Refusals::Include), Decimal::from(4));
        assert_eq!(count(Refusals::Only), Decimal::from(1));
        let mut m = meter(Aggregation::Count, MeterField::Calls);
        assert!(m.rollup_compatible());
        assert_eq!(m.contribution(&refused), Decimal::ZERO);
        assert!(
            !RollupRow::holds(&refused),
            "rollups hold served calls only"
        );
        m.refusals = Refusals::Only;
        assert!(!m.rollup_compatible(), "read from raw events");
    }

    #[test]
    fn filter_by_status_class_and_scale() {
        let ev = events();
        let mut m = meter(Aggregation::Sum, MeterField::ResponseBytes);
        m.filter.insert(
            Dimension::StatusClass,
            ["2xx".to_string(), "4xx".to_string()].into(),
        );
        m.scale = Some(Decimal::from_str("1e-3").unwrap());
        assert_eq!(
            evaluate(&[m], &ev)[0].quantity,
            Decimal::from_str("0.4").unwrap()
        );
    }

    #[test]
    fn group_by_api_gives_one_value_per_group() {
        let ev = events();
        let mut m = meter(Aggregation::Count, MeterField::Calls);
        m.group_by = vec![Dimension::Api];
        let u = &evaluate(&[m], &ev)[0];
        assert_eq!(u.groups.len(), 2);
        assert_eq!(u.groups[0].dimensions["api"], "maps");
        assert_eq!(u.groups[0].quantity, Decimal::ONE);
        assert_eq!(u.groups[1].quantity, Decimal::from(2));
    }

    #[test]
    fn no_events_is_zero() {
        let u = evaluate(&[meter(Aggregation::Max, MeterField::Units)], &[]);
        assert_eq!(u[0].quantity, Decimal::ZERO);
    }

    #[test]
    fn rollups_give_the_same_usage_as_raw_events() {
        use crate::event::status_class;
        let ops = ["GET /a", "POST /b", "GET /c/{id}"];
        let events: Vec<CallEvent> = (0..300u64)
            .map(|i| {
                let mut e = sample_event();
                e.api = ["weather", "maps"][(i % 2) as usize].into();
                e.version = ["v1", "v2", "v3"][(i % 3) as usize].into();
                e.operation = ops[(i % 3) as usize].into();
                e.method = e.operation.split(' ').next().unwrap().into();
                e.status = [200, 201, 404, 500, 503][(i % 5) as usize];
                e.units = Decimal::new((i * 37 % 1000) as i64, 3);
                e.request_bytes = i * 11;
                e.response_bytes = i * 13 + 7;
                e.latency_us = i * 997;
                e
            })
            .collect();
        // The rollup a store would keep: sums by (api, version, operation, method, status).
        let mut sums: BTreeMap<(String, String, String, String, u16), RollupRow> = BTreeMap::new();
        for e in &events {
            let r = sums
                .entry((
                    e.api.clone(),
                    e.version.clone(),
                    e.operation.clone(),
                    e.method.clone(),
                    e.status,
                ))
                .or_insert_with(|| RollupRow {
                    api: e.api.clone(),
                    version: e.version.clone(),
                    operation: e.operation.clone(),
                    method: e.method.clone(),
                    status: e.status,
                    calls: 0,
                    units: Decimal::ZERO,
                    request_bytes: 0,
                    response_bytes: 0,
                    latency_us: 0,
                });
            r.calls += 1;
            r.units += e.units;
            r.request_bytes += e.request_bytes;
            r.response_bytes += e.response_bytes;
            r.latency_us += e.latency_us;
        }
        let rows: Vec<RollupRow> = sums.into_values().collect();
        let mut meters = Vec::new();
        for field in [
            MeterField::Calls,
            MeterField::Units,
            MeterField::RequestBytes,
            MeterField::ResponseBytes,
            MeterField::LatencyMs,
        ] {
            for aggregation in [Aggregation::Count, Aggregation::Sum] {
                let mut m = meter(aggregation, field);
                m.group_by = vec![Dimension::Api, Dimension::StatusClass];
                m.filter.insert(
                    Dimension::StatusClass,
                    ["2xx".to_string(), "5xx".to_string()].into(),
                );
                m.scale = Some(Decimal::from_str("0.001").unwrap());
                meters.push(m);
            }
        }
        assert_eq!(status_class(503), "5xx");
        for m in &meters {
            assert!(m.rollup_compatible());
            let raw = evaluate(std::slice::from_ref(m), &events).remove(0);
            assert_eq!(evaluate_rollups(m, &rows), Some(raw), "{m:?}");
        }
        let mut by_key = meter(Aggregation::Count, MeterField::Calls);
        by_key.group_by = vec![Dimension::KeyId];
        assert!(!by_key.rollup_compatible());
        assert!(!meter(Aggregation::Max, MeterField::Units).rollup_compatible());
        assert_eq!(evaluate_rollups(&by_key, &rows), None);
    }

    #[test]
    fn meters_over_usage_events_sum_exact_data_grouped_by_a_property() {
        use crate::usage_event::{parse_cloud_event, TimeWindow};
        let now = Utc::now();
        let ev = |id: &str, ty: &str, data: &str| {
            let raw = serde_json::value::RawValue::from_string(format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"{ty}","subject":"p","data":{data}}}"#
            ))
            .unwrap();
            parse_cloud_event(&raw)
                .unwrap()
                .into_usage_event("p", now, &TimeWindow::default())
                .unwrap()
        };
        let events = [
            ev("1", "tok", r#"{"tokens":0.1,"model":"a"}"#),
            ev("2", "tok", r#"{"tokens":0.2,"model":"b"}"#),
            ev("3", "tok", r#"{"tokens":5,"model":"a","region":"us"}"#),
            ev("4", "tok", r#"{"model":"a"}"#),
            ev("5", "other", r#"{"tokens":100}"#),
        ];
        let sel = |value: Option<&str>, filter: &[(&str, &str)], group: &[&str]| EventSelector {
            event_type: "tok".into(),
            value: value.map(str::to_string),
            filter: filter
                .iter()
                .map(|(k, v)| (k.to_string(), [v.to_string()].into()))
                .collect(),
            group_by: group.iter().map(|g| g.to_string()).collect(),
            recurring: false,
        };
        let m = |name: &str, aggregation, events| {
            Meter {
                events: Some(events),
                ..meter(aggregation, MeterField::Calls)
            }
            .tap_name(name)
        };
        let meters = vec![
            m(
                "sum",
                Aggregation::Sum,
                sel(Some("tokens"), &[], &["model"]),
            ),
            m("count", Aggregation::Count, sel(None, &[], &[])),
            m("max", Aggregation::Max, sel(Some("tokens"), &[], &[])),
            m(
                "models",
                Aggregation::UniqueCount,
                sel(Some("model"), &[], &[]),
            ),
            m(
                "us",
                Aggregation::Sum,
                sel(Some("tokens"), &[("region", "us")], &[]),
            ),
            meter(Aggregation::Count, MeterField::Calls),
        ];
        let span = Span::new(
            now - chrono::Duration::hours(1),
            now + chrono::Duration::hours(1),
        );
        let u = evaluate_usage_events(&meters, &events, span);
        let q = |i: usize| u[i].quantity.to_string();
        assert_eq!(
            (q(0), q(1), q(2), q(3), q(4), q(5)),
            (
                "5.3".into(),
                "4".into(),
                "5".into(),
                "2".into(),
                "5".into(),
                "0".into()
            )
        );
        let groups: Vec<(String, String)> = u[0]
            .groups
            .iter()
            .map(|g| (g.dimensions["model"].clone(), g.quantity.to_string()))
            .collect();
        assert_eq!(
            groups,
            [("a".into(), "5.1".into()), ("b".into(), "0.2".into())]
        );
        // 0.1 + 0.2 is exactly 0.3.
        assert_eq!(
            evaluate_usage_events(&meters, &events[..2], span)[0]
                .quantity
                .to_string(),
            "0.3"
        );
        // Call events never count towards a meter of usage events.
        let call = sample_event();
        assert!(!meters[0].matches(&call));
    }

    trait TapName {
        fn tap_name(self, name: &str) -> Self;
    }

    impl TapName for Meter {
        fn tap_name(mut self, name: &str) -> Self {
            self.name = name.to_string();
            self
        }
    }
}
