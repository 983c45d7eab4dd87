//! Usage events from the company's own services (tokens, storage, seats…): CloudEvents 1.0
//! JSON through `POST /v1/events`, checked here one by one, and `UsageEvent` v1, the form the
//! event log and the usage stores carry (`schemas/events/usage_event.v1.json`).
//!
//! Meters read an event's `data` as flat properties: nested objects give dotted paths
//! (`usage.input_tokens`), numbers are exact decimals read from the JSON text (never through a
//! float, so `0.1` plus `0.2` is `0.3`), strings and booleans are text. See docs/events.md.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::event::{truncate_to_micros, MAX_UNITS, UNITS_SCALE};

/// The CloudEvents `type` of the gateway's call events: meters without an `event_type` read
/// them, and no other source may send events of this type.
pub const CALL_EVENT_TYPE: &str = "peage.call.v1";

/// The type of the record that cancels a usage event (`POST /v1/events/cancellations`): raw
/// events stay append-only, and meters leave out every event a cancellation names.
pub const CANCELLATION_TYPE: &str = "peage.cancellation.v1";

/// Types under this prefix are Péage's own: no source may send them, no meter reads them but
/// the call meters.
pub const RESERVED_TYPE_PREFIX: &str = "peage.";

/// The `source` of cancellation records.
const CANCELLATION_SOURCE: &str = "peage";

/// The most characters of `id`, `type` and `subject`.
const MAX_NAME: usize = 256;
/// The most characters of `source` (a URI reference).
const MAX_SOURCE: usize = 1024;
/// The most properties one event's data may give meters, and how deep they may nest.
pub const MAX_PROPERTIES: usize = 256;
const MAX_DEPTH: usize = 8;

/// Why an event is refused, by cause; the message is the reason `POST /v1/events` lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("an event must be a JSON object")]
    NotAnObject,
    /// The JSON text is not a CloudEvent's shape (serde's words).
    #[error("not a CloudEvent in JSON: {0}")]
    NotCloudEvent(String),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{attribute} must be a string")]
    NotAString { attribute: &'static str },
    #[error("{attribute} must not be empty")]
    Empty { attribute: &'static str },
    #[error("{attribute} is longer than {max} characters")]
    TooLong { attribute: &'static str, max: usize },
    #[error("{attribute} is required")]
    Missing { attribute: &'static str },
    #[error("subject is required: the partner's id or external_id")]
    MissingSubject,
    #[error("specversion {0:?} is not supported, only \"1.0\"")]
    UnsupportedSpecVersion(String),
    #[error("type {0:?} is reserved: types starting with {prefix:?} are Péage's own", prefix = RESERVED_TYPE_PREFIX)]
    ReservedType(String),
    #[error("time {time:?} is not RFC 3339: {why}")]
    BadTime { time: String, why: String },
    #[error("data and data_base64 are exclusive")]
    DataAndDataBase64,
    #[error(transparent)]
    OutsideWindow(#[from] TimeRefusal),
    #[error(transparent)]
    Data(#[from] DataError),
    /// A stored record whose key is not the one of its partner, source and id.
    #[error("key does not match partner_id, source and id")]
    KeyMismatch,
}

/// Why an event's `data` gives no properties meters can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("data is not JSON: {0}")]
    NotJson(String),
    #[error("data nests deeper than {} objects at {at:?}", MAX_DEPTH)]
    TooDeep { at: String },
    /// An object that does not parse as one (serde's words); `at` is the dotted path.
    #[error("data{}: {why}", dotted(.at))]
    BadObject { at: String, why: String },
    #[error("data property {name:?}{} must be non-empty and without dots (dots join nested names)", in_data(.at))]
    BadName { name: String, at: String },
    #[error("data.{path}: {why}")]
    BadString { path: String, why: String },
    #[error("data.{path}: {why}")]
    BadNumber { path: String, why: NumberError },
    #[error("data has more than {} properties", MAX_PROPERTIES)]
    TooManyProperties,
}

/// Why a JSON number cannot be a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("number {0} cannot be held exactly")]
    Inexact(String),
    #[error("number {0} is above 10^15 in size")]
    TooLarge(String),
    #[error("number {0} has more than {scale} decimal places; send it as a string if no meter sums it", scale = UNITS_SCALE)]
    TooPrecise(String),
}

/// Why an event's time is outside the window around its receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeRefusal {
    #[error("time {} is older than the backfill window of {} days", rfc3339(.time), .backfill.num_days())]
    TooOld {
        time: DateTime<Utc>,
        backfill: TimeDelta,
    },
    #[error("time {} is more than {} minutes ahead of the server's clock", rfc3339(.time), .ahead.num_minutes())]
    TooFarAhead {
        time: DateTime<Utc>,
        ahead: TimeDelta,
    },
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// When an event may have happened, relative to when it is received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// How far back a backfill may go (default 35 days).
    pub backfill: TimeDelta,
    /// How far ahead of the receiver's clock an event may be (5 minutes: clock skew).
    pub ahead: TimeDelta,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            backfill: TimeDelta::days(35),
            ahead: TimeDelta::minutes(5),
        }
    }
}

impl TimeWindow {
    /// Why `time` is outside the window around `now`, if it is.
    pub fn refuse(&self, time: DateTime<Utc>, now: DateTime<Utc>) -> Option<TimeRefusal> {
        if time < now - self.backfill {
            Some(TimeRefusal::TooOld {
                time,
                backfill: self.backfill,
            })
        } else if time > now + self.ahead {
            Some(TimeRefusal::TooFarAhead {
                time,
                ahead: self.ahead,
            })
        } else {
            None
        }
    }
}

/// A CloudEvent that passed the format checks, before its subject is resolved to a partner.
#[derive(Debug, Clone)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub subject: String,
    pub time: Option<DateTime<Utc>>,
    /// The event's JSON as it was sent.
    pub raw: Box<RawValue>,
    /// What the event says ([`UsageEvent::digest`]), computed while the event is parsed.
    digest: String,
}

/// The context attributes this module reads; `data`, `data_base64` and extensions stay in the
/// raw text.
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Attributes<'a> {
    #[serde(borrow)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    subject: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    datacontenttype: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    data_base64: Option<&'a RawValue>,
}

fn string_attr(
    attribute: &'static str,
    v: Option<&RawValue>,
    max: usize,
) -> Result<Option<String>, EventError> {
    let Some(v) = v else { return Ok(None) };
    if v.get() == "null" {
        return Ok(None);
    }
    let text = v.get();
    let s: String = match text.as_bytes() {
        // Without an escape the text between the quotes is the string (the parser that cut
        // this slice out has checked it).
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => text[1..text.len() - 1].to_string(),
        _ => serde_json::from_str(text).map_err(|_| EventError::NotAString { attribute })?,
    };
    if s.is_empty() {
        return Err(EventError::Empty { attribute });
    }
    // A character takes at least a byte.
    if s.len() > max && s.chars().count() > max {
        return Err(EventError::TooLong { attribute, max });
    }
    Ok(Some(s))
}

fn required(
    attribute: &'static str,
    v: Option<&RawValue>,
    max: usize,
) -> Result<String, EventError> {
    string_attr(attribute, v, max)?.ok_or(EventError::Missing { attribute })
}

/// Checks one CloudEvent in the JSON format (CloudEvents 1.0): `specversion` "1.0"; `id`,
/// `source`, `type` and `subject` non-empty strings; `time` RFC 3339 if present; `data` any JSON
/// value and `data_base64` a string, not both; extension attributes are kept as sent. The
/// reason names the attribute at fault.
pub fn parse_cloud_event(raw: &RawValue) -> Result<CloudEvent, EventError> {
    if !raw.get().trim_start().starts_with('{') {
        return Err(EventError::NotAnObject);
    }
    let a: Attributes<'_> =
        serde_json::from_str(raw.get()).map_err(|e| EventError::NotCloudEvent(e.to_string()))?;
    match string_attr("specversion", a.specversion, 16)? {
        Some(v) if v == "1.0" => {}
        Some(other) => return Err(EventError::UnsupportedSpecVersion(other)),
        None => {
            return Err(EventError::Missing {
                attribute: "specversion",
            })
        }
    }
    let id = required("id", a.id, MAX_NAME)?;
    let source = required("source", a.source, MAX_SOURCE)?;
    let event_type = required("type", a.event_type, MAX_NAME)?;
    if event_type.starts_with(RESERVED_TYPE_PREFIX) {
        return Err(EventError::ReservedType(event_type));
    }
    let subject = string_attr("subject", a.subject, MAX_NAME)?.ok_or(EventError::MissingSubject)?;
    let time = match string_attr("time", a.time, 64)? {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(&t)
                .map(|t| truncate_to_micros(t.with_timezone(&Utc)))
                .map_err(|e| EventError::BadTime {
                    time: t.clone(),
                    why: e.to_string(),
                })?,
        ),
    };
    string_attr("datacontenttype", a.datacontenttype, MAX_NAME)?;
    let has_data = a.data.is_some_and(|d| d.get() != "null");
    if has_data && a.data_base64.is_some() {
        return Err(EventError::DataAndDataBase64);
    }
    string_attr("data_base64", a.data_base64, usize::MAX)?;
    // The data must give properties meters can read exactly. The event is parsed once: the
    // properties and the digest come from the attributes' own slices.
    Properties::check_data_value(a.data)?;
    let digest = digest_of(&event_type, time, a.data, a.data_base64);
    // A copy as it is (no second validation), unless whitespace around it must go.
    let text = raw.get();
    let raw = if text.trim().len() == text.len() {
        raw.to_owned()
    } else {
        RawValue::from_string(text.trim().to_string())
            .map_err(|e| EventError::NotJson(e.to_string()))?
    };
    Ok(CloudEvent {
        id,
        source,
        event_type,
        subject,
        time,
        raw,
        digest,
    })
}

impl CloudEvent {
    /// The stored event of `partner_id`, received at `now`: its time defaults to `now` and
    /// must fall inside `window`.
    pub fn into_usage_event(
        self,
        partner_id: &str,
        now: DateTime<Utc>,
        window: &TimeWindow,
    ) -> Result<UsageEvent, EventError> {
        let time = self.time.unwrap_or_else(|| truncate_to_micros(now));
        if let Some(refusal) = window.refuse(time, now) {
            return Err(refusal.into());
        }
        // The digest holds the time as sent: a retry of an event without one is the same event.
        let digest = self.digest;
        Ok(UsageEvent {
            key: UsageEvent::key_of(partner_id, &self.source, &self.id),
            partner_id: partner_id.to_string(),
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            subject: self.subject,
            time,
            digest,
            cloudevent: self.raw,
        })
    }
}

/// A usage event as the log and the stores carry it (UsageEvent v1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    /// The deduplication key: derived from the partner, `source` and `id`
    /// ([`UsageEvent::key_of`]), so a retried event is stored once, as call events are by id.
    pub key: Uuid,
    pub partner_id: String,
    /// The CloudEvent's `id`, unique per `source` as CloudEvents requires.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    /// The event's `time`, or when it was received; microseconds, UTC.
    #[serde(
        serialize_with = "crate::event::ser_time",
        deserialize_with = "crate::event::de_time"
    )]
    pub time: DateTime<Utc>,
    /// SHA-256 of what the event says (type, time as sent, data): the same key with another digest is
    /// a conflicting re-use of an id, reported and never stored over the first.
    pub digest: String,
    /// The CloudEvent as it was sent.
    pub cloudevent: Box<RawValue>,
}

impl PartialEq for UsageEvent {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.partner_id == other.partner_id
            && self.id == other.id
            && self.source == other.source
            && self.event_type == other.event_type
            && self.subject == other.subject
            && self.time == other.time
            && self.digest == other.digest
            && self.cloudevent.get() == other.cloudevent.get()
    }
}

impl UsageEvent {
    /// The key of event `id` from `source` for `partner_id`: a UUID (version 8) made of the
    /// first 16 bytes of SHA-256 over the three, so every store keeps the dedup rule of call
    /// events, `(partner_id, id)`.
    pub fn key_of(partner_id: &str, source: &str, id: &str) -> Uuid {
        let mut h = Sha256::new();
        for part in ["peage.usage-event.v1", partner_id, source, id] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let hash = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// The record that cancels `target`, made at `now`: a usage event of
    /// [`CANCELLATION_TYPE`] whose data names the cancelled key, id and source. Cancelling the
    /// same event again makes the same record (a duplicate).
    pub fn cancellation_of(target: &UsageEvent, now: DateTime<Utc>) -> UsageEvent {
        let id = format!("cancel/{}", target.key);
        let data = serde_json::json!({
            "cancels": target.key.to_string(),
            "id": target.id,
            "source": target.source,
        });
        let time = truncate_to_micros(now);
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": CANCELLATION_SOURCE,
            "type": CANCELLATION_TYPE,
            "subject": target.subject,
            "time": time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "data": data,
        });
        let raw = RawValue::from_string(event.to_string())
            .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("{} is JSON"));
        UsageEvent {
            key: UsageEvent::key_of(&target.partner_id, CANCELLATION_SOURCE, &id),
            partner_id: target.partner_id.clone(),
            // Over its data only, not when it was made.
            digest: body_digest(CANCELLATION_TYPE, None, &raw),
            id,
            source: CANCELLATION_SOURCE.into(),
            event_type: CANCELLATION_TYPE.into(),
            subject: target.subject.clone(),
            time,
            cloudevent: raw,
        }
    }

    /// The key a cancellation record cancels (`None` for any other event).
    pub fn cancels(&self) -> Option<Uuid> {
        if self.event_type != CANCELLATION_TYPE {
            return None;
        }
        self.properties()
            .ok()?
            .text("cancels")
            .and_then(|k| Uuid::parse_str(k).ok())
    }

    /// Microseconds since the Unix epoch.
    pub fn time_us(&self) -> i64 {
        self.time.timestamp_micros()
    }

    /// The properties of the event's data, as meters read them.
    pub fn properties(&self) -> Result<Properties, EventError> {
        Properties::of_raw_event(&self.cloudevent)
    }

    /// What a store can hold: the properties are readable and the key is the one of the
    /// partner, source and id (a record that was altered on the way is dead-lettered).
    pub fn check(&self) -> Result<(), EventError> {
        if self.key != UsageEvent::key_of(&self.partner_id, &self.source, &self.id) {
            return Err(EventError::KeyMismatch);
        }
        Properties::check_raw_event(&self.cloudevent)
    }
}

/// SHA-256 (hex) over the type, the time (if sent) and the data as sent, without the whitespace
/// between JSON tokens, so a re-sent event with the same content has the same digest however it
/// was formatted.
fn body_digest(event_type: &str, time: Option<DateTime<Utc>>, raw: &RawValue) -> String {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        #[serde(borrow)]
        data_base64: Option<&'a RawValue>,
    }
    let body: Body<'_> = serde_json::from_str(raw.get()).unwrap_or(Body {
        data: None,
        data_base64: None,
    });
    digest_of(event_type, time, body.data, body.data_base64)
}

/// SHA-256 of the type, the time as sent and the data, minified (see [`UsageEvent::digest`]).
fn digest_of(
    event_type: &str,
    time: Option<DateTime<Utc>>,
    data: Option<&RawValue>,
    data_base64: Option<&RawValue>,
) -> String {
    let mut h = Sha256::new();
    h.update(event_type.as_bytes());
    h.update([0]);
    if let Some(t) = time {
        h.update(t.timestamp_micros().to_le_bytes());
    }
    for part in [data, data_base64] {
        h.update([0]);
        if let Some(p) = part {
            hash_minified(&mut h, p.get().as_bytes());
        }
    }
    // The digest's own lowercase hex (`hex::encode`'s per-char iterator was a seventh of the
    // check of an event, benches/usage_events.rs).
    format!("{:x}", h.finalize())
}

/// Hashes JSON text without its whitespace outside strings, a run of bytes at a time (no
/// copy). Bytes suffice: in UTF-8 no byte of a multi-byte character is ASCII, so whitespace,
/// quotes and backslashes are never part of one.
fn hash_minified(h: &mut Sha256, json: &[u8]) {
    let (mut in_string, mut escaped) = (false, false);
    let mut run = 0;
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b.is_ascii_whitespace() {
            if run < i {
                h.update(&json[run..i]);
            }
            run = i + 1;
        } else if b == b'"' {
            in_string = true;
        }
    }
    if run < json.len() {
        h.update(&json[run..]);
    }
}

/// A CloudEvent's `data`, as sent.
fn data_of(raw: &RawValue) -> Result<Option<&RawValue>, EventError> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let d: Data<'_> =
        serde_json::from_str(raw.get()).map_err(|e| EventError::NotJson(e.to_string()))?;
    Ok(d.data)
}

/// The flat properties of an event's `data` (an object; other data gives none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Numbers, exact, at most 9 decimal places and at most 10^15 in size.
    pub numbers: BTreeMap<String, Decimal>,
    /// Every property's text: strings as they are, numbers in their exact decimal form,
    /// booleans as `true`/`false`. What filters and `group_by` compare.
    pub texts: BTreeMap<String, String>,
}

impl Properties {
    fn of_raw_event(raw: &RawValue) -> Result<Properties, EventError> {
        Ok(Properties::of_data_value(data_of(raw)?)?)
    }

    /// Whether a stored CloudEvent's `data` gives readable properties (the quick check).
    fn check_raw_event(raw: &RawValue) -> Result<(), EventError> {
        Ok(Properties::check_data_value(data_of(raw)?)?)
    }

    /// Properties of an event's `data` (none unless it is an object).
    fn of_data_value(data: Option<&RawValue>) -> Result<Properties, DataError> {
        let mut props = Properties::default();
        if let Some(data) = data {
            if data.get().trim_start().starts_with('{') {
                props.flatten("", data, 0)?;
            }
        }
        Ok(props)
    }

    /// Whether an event's `data` gives readable properties, without building them: the walk
    /// below answers the common case; anything it does not vouch for goes through
    /// [`Properties::of_data_value`], which gives the reason (or accepts a name sent twice
    /// whose last value is readable, as it always has).
    fn check_data_value(data: Option<&RawValue>) -> Result<(), DataError> {
        match data {
            Some(d) if d.get().starts_with('{') => {
                if clean_object(d.get(), 0, &mut 0) {
                    Ok(())
                } else {
                    Properties::of_data_value(data).map(|_| ())
                }
            }
            _ => Ok(()),
        }
    }

    /// Properties of a JSON object given as text (what `data` holds).
    pub fn of_data(data: &str) -> Result<Properties, DataError> {
        let raw: &RawValue =
            serde_json::from_str(data).map_err(|e| DataError::NotJson(e.to_string()))?;
        let mut props = Properties::default();
        if raw.get().trim_start().starts_with('{') {
            props.flatten("", raw, 0)?;
        }
        Ok(props)
    }

    fn flatten(&mut self, prefix: &str, object: &RawValue, depth: usize) -> Result<(), DataError> {
        if depth >= MAX_DEPTH {
            return Err(DataError::TooDeep { at: prefix.into() });
        }
        let fields: BTreeMap<String, &RawValue> =
            serde_json::from_str(object.get()).map_err(|e| DataError::BadObject {
                at: prefix.into(),
                why: e.to_string(),
            })?;
        for (name, value) in fields {
            if name.is_empty() || name.contains('.') {
                return Err(DataError::BadName {
                    name,
                    at: prefix.into(),
                });
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            let text = value.get().trim();
            match text.as_bytes().first() {
                Some(b'{') => self.flatten(&path, value, depth + 1)?,
                Some(b'"') => {
                    let s: String =
                        serde_json::from_str(text).map_err(|e| DataError::BadString {
                            path: path.clone(),
                            why: e.to_string(),
                        })?;
                    self.texts.insert(path, s);
                }
                Some(b't') | Some(b'f') => {
                    self.texts.insert(path, text.to_string());
                }
                Some(b'-' | b'0'..=b'9') => {
                    let n = exact_number(text).map_err(|why| DataError::BadNumber {
                        path: path.clone(),
                        why,
                    })?;
                    self.texts.insert(path.clone(), n.normalize().to_string());
                    self.numbers.insert(path, n);
                }
                // null and arrays: kept in the event, not properties.
                _ => {}
            }
            if self.texts.len() > MAX_PROPERTIES {
                return Err(DataError::TooManyProperties);
            }
        }
        Ok(())
    }

    /// The number at `path`, if there is one.
    pub fn number(&self, path: &str) -> Option<Decimal> {
        self.numbers.get(path).copied()
    }

    /// The text at `path`, if there is one.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.texts.get(path).map(String::as_str)
    }
}

/// Whether the object `json` (at nesting `depth`) surely gives readable properties, counting
/// them into `count`: each name non-empty and without a dot, strings valid, numbers exact,
/// nesting and count within bounds. Walks the text once and keeps nothing.
///
/// It mirrors the rules of [`Properties::flatten`]: a rule added there must be added here (or
/// this would vouch for data `flatten` refuses); `the_quick_data_check_agrees_with_the_full_reading`
/// holds the two together, a case for each rule.
fn clean_object(json: &str, depth: usize, count: &mut usize) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, Visitor};

    /// A name is clean when non-empty and without a dot.
    struct Name;
    impl<'de> Visitor<'de> for Name {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a property name")
        }
        fn visit_str<E: Error>(self, name: &str) -> Result<bool, E> {
            Ok(!name.is_empty() && !name.contains('.'))
        }
    }
    impl<'de> DeserializeSeed<'de> for Name {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }

    struct Object<'c> {
        depth: usize,
        count: &'c mut usize,
    }
    impl<'de> Visitor<'de> for Object<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(name_ok) = map.next_key_seed(Name)? {
                let value: &'de RawValue = map.next_value()?;
                if !name_ok || !clean_value(value.get(), self.depth, self.count) {
                    return Err(A::Error::custom("not clean"));
                }
            }
            Ok(())
        }
    }

    fn clean_value(text: &str, depth: usize, count: &mut usize) -> bool {
        let ok = match text.as_bytes().first() {
            Some(b'{') => return clean_object(text, depth + 1, count),
            // Without an escape, a string the parser accepted is valid as it is.
            Some(b'"') => !text.contains('\\') || serde_json::from_str::<String>(text).is_ok(),
            Some(b't' | b'f') => true,
            Some(b'-' | b'0'..=b'9') => exact_number(text).is_ok(),
            // null and arrays: not properties.
            _ => return true,
        };
        *count += 1;
        ok && *count <= MAX_PROPERTIES
    }

    if depth >= MAX_DEPTH {
        return false;
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(Object { depth, count }).is_ok() && de.end().is_ok()
}

fn dotted(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(".{prefix}")
    }
}

fn in_data(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(" in data.{prefix}")
    }
}

/// A JSON number's exact value: at most [`UNITS_SCALE`] decimal places and at most 10^15 in
/// size, the bounds every usage store keeps exactly (as for a call's units).
fn exact_number(text: &str) -> Result<Decimal, NumberError> {
    let n = crate::money::exact_decimal(text).map_err(|_| NumberError::Inexact(text.into()))?;
    if n.abs() > MAX_UNITS {
        return Err(NumberError::TooLarge(text.into()));
    }
    if n.normalize().scale() > UNITS_SCALE {
        return Err(NumberError::TooPrecise(text.into()));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn event(extra: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"e-1","source":"/llm","type":"com.example.tokens","subject":"acme"{extra}}}"#
        )
    }

    #[test]
    fn a_minimal_event_is_accepted_and_time_defaults_to_receipt() {
        let e = parse_cloud_event(&raw(&event(""))).unwrap();
        assert_eq!((e.id.as_str(), e.source.as_str()), ("e-1", "/llm"));
        let now = Utc::now();
        let u = e
            .into_usage_event("p1", now, &TimeWindow::default())
            .unwrap();
        assert_eq!(u.time, truncate_to_micros(now));
        assert_eq!(u.key, UsageEvent::key_of("p1", "/llm", "e-1"));
        u.check().unwrap();
    }

    /// The digest taken while the event is parsed equals the digest of the whole event's text
    /// (what cancellations and earlier releases computed), for every shape of body.
    #[test]
    fn the_digest_of_a_parsed_event_is_the_digest_of_its_text() {
        let now = Utc::now();
        for extra in [
            "",
            r#","data":{"tokens":3,"model":"x"}"#,
            r#", "data" : { "usage" : { "input_tokens" : 0.10 } , "m": "a b" }"#,
            r#","data":null"#,
            r#","data":[1,2]"#,
            r#","data_base64":"AAEC""#,
            r#","time":"2026-12-01T10:00:00.5Z","data":{"t":1}"#,
        ] {
            let text = event(extra);
            let e = parse_cloud_event(&raw(&text)).unwrap();
            let (event_type, time) = (e.event_type.clone(), e.time);
            let window = TimeWindow {
                backfill: chrono::TimeDelta::days(3650),
                ahead: chrono::TimeDelta::minutes(5),
            };
            let u = e.into_usage_event("p1", now, &window).unwrap();
            assert_eq!(
                u.digest,
                body_digest(&event_type, time, &raw(&text)),
                "{text}"
            );
        }
    }

    /// Stored digests must not change between releases (a re-send would look like a conflict):
    /// the type, the time and the data without whitespace outside strings, pinned here, the
    /// data's strings (spaces, escapes, non-ASCII) kept as sent.
    #[test]
    fn digests_stay_what_stored_events_hold() {
        use chrono::TimeZone;
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let spaced = RawValue::from_string(
            " { \"m\" : \"a b\\\" \\\\ \" ,\n\t\"n\": [ 1 , \"é ü\" ] } ".into(),
        )
        .unwrap();
        let compact = RawValue::from_string(r#"{"m":"a b\" \\ ","n":[1,"é ü"]}"#.into()).unwrap();
        let mut h = Sha256::new();
        h.update(b"com.example.t\0");
        h.update(at.timestamp_micros().to_le_bytes());
        h.update(b"\0");
        h.update(compact.get().as_bytes());
        h.update(b"\0");
        let want = hex::encode(h.finalize());
        assert_eq!(
            digest_of("com.example.t", Some(at), Some(&spaced), None),
            want
        );
        assert_eq!(
            digest_of("com.example.t", Some(at), Some(&compact), None),
            want
        );
    }

    #[test]
    fn each_missing_or_wrong_attribute_is_named() {
        for (body, reason) in [
            (r#"[1]"#.to_string(), "must be a JSON object"),
            (r#"{"id":"x"}"#.into(), "specversion is required"),
            (
                event("").replace("\"1.0\"", "\"0.3\""),
                "specversion \"0.3\"",
            ),
            (event("").replace(r#""id":"e-1","#, ""), "id is required"),
            (
                event("").replace(r#""id":"e-1""#, r#""id":7"#),
                "id must be a string",
            ),
            (
                event("").replace(r#""/llm""#, r#""""#),
                "source must not be empty",
            ),
            (
                event("").replace(r#","subject":"acme""#, ""),
                "subject is required",
            ),
            (
                event("").replace("com.example.tokens", "peage.call.v1"),
                "reserved",
            ),
            (
                event(r#","time":"yesterday""#),
                "time \"yesterday\" is not RFC 3339",
            ),
            (event(r#","data":{},"data_base64":"AA==""#), "exclusive"),
            (
                event(r#","data":{"a":0.0000000001}"#),
                "more than 9 decimal places",
            ),
            (event(r#","data":{"a":1e16}"#), "above 10^15"),
            (event(r#","data":{"a.b":1}"#), "without dots"),
        ] {
            let err = parse_cloud_event(&raw(&body)).unwrap_err().to_string();
            assert!(err.contains(reason), "{body}: {err}");
        }
    }

    /// Attributes are read as JSON strings: escapes decoded, lengths in characters.
    #[test]
    fn string_attributes_decode_escapes_and_count_characters() {
        let e = parse_cloud_event(&raw(&event("").replace(r#""e-1""#, r#""e\"1\u00e9""#))).unwrap();
        assert_eq!(e.id, "e\"1é");
        let with_id = |id: String| event("").replace(r#""e-1""#, &format!("\"{id}\""));
        let e = parse_cloud_event(&raw(&with_id("é".repeat(MAX_NAME)))).unwrap();
        assert_eq!(e.id.chars().count(), MAX_NAME);
        let err = parse_cloud_event(&raw(&with_id("é".repeat(MAX_NAME + 1)))).unwrap_err();
        assert_eq!(
            err,
            EventError::TooLong {
                attribute: "id",
                max: MAX_NAME
            }
        );
    }

    /// The quick check of `data` at intake vouches for clean data on its own, and for anything
    /// else gives the full reading's answer (the same reason, or acceptance).
    #[test]
    fn the_quick_data_check_agrees_with_the_full_reading() {
        let deep = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        let many = |n: usize| {
            let fields: Vec<String> = (0..n).map(|i| format!(r#""p{i}":{i}"#)).collect();
            format!("{{{}}}", fields.join(","))
        };
        let clean = [
            r#"{}"#.to_string(),
            r#"{"tokens":12,"model":"gpt-x","region":"eu"}"#.into(),
            r#"{"u":{"in":0.000000001,"out":-3},"ok":true,"no":false,"x":null,"l":[1,{"a.b":1}]}"#
                .into(),
            r#"{"s":"tab\t \"quoted\" \u00e9 é"}"#.into(),
            r#"{"n":1e15,"m":-1E-9,"z":0}"#.into(),
            deep(8),
            many(super::MAX_PROPERTIES),
        ];
        for data in &clean {
            assert!(clean_object(data, 0, &mut 0), "{data}");
            let d = raw(data);
            assert_eq!(Properties::check_data_value(Some(&d)), Ok(()), "{data}");
            Properties::of_data_value(Some(&d)).unwrap();
        }
        let unclean = [
            r#"{"a.b":1}"#.to_string(),
            r#"{"":1}"#.into(),
            r#"{"x":{"":1}}"#.into(),
            r#"{"a":0.0000000001}"#.into(),
            r#"{"a":1e16}"#.into(),
            r#"{"a":{"b":1e16}}"#.into(),
            r#"{"s":"\ud800"}"#.into(),
            deep(9),
            many(super::MAX_PROPERTIES + 1),
            // The same name twice: the last value counts, as in the full reading.
            r#"{"a":1e16,"a":1}"#.into(),
            r#"{"a":1,"a":1e16}"#.into(),
        ];
        for data in &unclean {
            assert!(!clean_object(data, 0, &mut 0), "{data}");
            let d = raw(data);
            assert_eq!(
                Properties::check_data_value(Some(&d)),
                Properties::of_data_value(Some(&d)).map(|_| ()),
                "{data}"
            );
        }
        let d = raw(r#"{"a":1e16,"a":1}"#);
        assert_eq!(Properties::check_data_value(Some(&d)), Ok(()));
        for other in ["[1,2]", "null", "3", r#""text""#] {
            assert_eq!(Properties::check_data_value(Some(&raw(other))), Ok(()));
        }
    }

    #[test]
    fn data_gives_exact_flat_properties() {
        let e = parse_cloud_event(&raw(&event(
            r#","data":{"tokens":0.1,"model":"gpt-x","usage":{"input_tokens":3,"cached":true,"x":null,"list":[1]},"big":1.5e3}"#,
        )))
        .unwrap();
        let p = Properties::of_raw_event(&e.raw).unwrap();
        assert_eq!(p.number("tokens"), Some("0.1".parse().unwrap()));
        assert_eq!(p.number("usage.input_tokens"), Some(Decimal::from(3)));
        assert_eq!(p.number("big"), Some(Decimal::from(1500)));
        assert_eq!(p.text("model"), Some("gpt-x"));
        assert_eq!(p.text("usage.cached"), Some("true"));
        assert_eq!(p.text("tokens"), Some("0.1"));
        assert_eq!(p.text("usage.x"), None);
        assert_eq!(p.text("usage.list"), None);
        let sum = p.number("tokens").unwrap() + "0.2".parse::<Decimal>().unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn the_time_window_refuses_old_and_future_events_with_the_reason() {
        let now = Utc::now();
        let w = TimeWindow::default();
        let at = |t: DateTime<Utc>| {
            parse_cloud_event(&raw(&event(&format!(r#","time":"{}""#, t.to_rfc3339()))))
                .unwrap()
                .into_usage_event("p1", now, &w)
        };
        assert!(at(now - TimeDelta::days(34)).is_ok());
        assert!(at(now - TimeDelta::days(36))
            .unwrap_err()
            .to_string()
            .contains("backfill window of 35 days"));
        assert!(at(now + TimeDelta::minutes(4)).is_ok());
        assert!(at(now + TimeDelta::minutes(6))
            .unwrap_err()
            .to_string()
            .contains("5 minutes ahead"));
    }

    #[test]
    fn the_digest_ignores_formatting_but_not_content() {
        let now = Utc::now();
        let w = TimeWindow::default();
        let t = r#","time":"2026-12-01T10:00:00Z""#;
        let digest = |data: &str| {
            parse_cloud_event(&raw(&event(&format!("{t},\"data\":{data}"))))
                .unwrap()
                .into_usage_event("p1", "2026-12-02T00:00:00Z".parse().unwrap(), &w)
                .unwrap()
                .digest
        };
        assert_eq!(
            digest(r#"{"a": 1, "b": "x y"}"#),
            digest(r#"{"a":1,"b":"x y"}"#)
        );
        assert_ne!(digest(r#"{"a":1}"#), digest(r#"{"a":2}"#));
        // Without a time, a retry received later is still the same event.
        let untimed = |at: DateTime<Utc>| {
            parse_cloud_event(&raw(&event(r#","data":{"a":1}"#)))
                .unwrap()
                .into_usage_event("p1", at, &w)
                .unwrap()
                .digest
        };
        assert_eq!(untimed(now), untimed(now + TimeDelta::seconds(30)));
    }

    #[test]
    fn a_cancellation_names_its_event_and_is_the_same_record_when_repeated() {
        let e = parse_cloud_event(&raw(&event(r#","data":{"n":1}"#)))
            .unwrap()
            .into_usage_event("p1", Utc::now(), &TimeWindow::default())
            .unwrap();
        let c = UsageEvent::cancellation_of(&e, Utc::now());
        let again = UsageEvent::cancellation_of(&e, Utc::now() + TimeDelta::seconds(5));
        assert_eq!(c.cancels(), Some(e.key));
        assert_eq!((c.key, &c.digest), (again.key, &again.digest));
        assert_eq!(e.cancels(), None);
        c.check().unwrap();
        assert_eq!(c.partner_id, "p1");
    }

    #[test]
    fn round_trips_through_json_and_keeps_the_event_as_sent() {
        let e = parse_cloud_event(&raw(&event(r#","data":{"n":12.50},"comexampleext":5"#)))
            .unwrap()
            .into_usage_event("p1", Utc::now(), &TimeWindow::default())
            .unwrap();
        let json = serde_json::to_string(&e).unwrap();
        let back: UsageEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        assert!(back.cloudevent.get().contains("12.50"));
        assert!(back.cloudevent.get().contains("comexampleext"));
        let mut altered = back.clone();
        altered.partner_id = "p2".into();
        assert!(altered
            .check()
            .unwrap_err()
            .to_string()
            .contains("key does not match"));
        // A record whose data was altered on the way is refused for the reason the full
        // reading gives.
        let mut unreadable = back.clone();
        unreadable.cloudevent =
            RawValue::from_string(back.cloudevent.get().replace("12.50", "0.1234567891")).unwrap();
        let why = unreadable.properties().unwrap_err().to_string();
        assert_eq!(unreadable.check().unwrap_err().to_string(), why);
    }
}
