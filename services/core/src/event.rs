//! `CallEvent` v1: one per call through the gateway, the unit of metering.
//! The wire form (JSON) is fixed by `schemas/events/call_event.v1.json`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Which upstream a call went to: partners' live traffic, or the sandbox (test keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    Live,
    Sandbox,
}

impl Env {
    pub fn as_str(self) -> &'static str {
        match self {
            Env::Live => "live",
            Env::Sandbox => "sandbox",
        }
    }

    pub fn parse(s: &str) -> Option<Env> {
        match s {
            "live" => Some(Env::Live),
            "sandbox" => Some(Env::Sandbox),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallEvent {
    /// UUIDv7: sortable by time, and the deduplication key (with the partner id).
    pub id: Uuid,
    /// When the call arrived, microsecond precision, always UTC on the wire.
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub time: DateTime<Utc>,
    pub partner_id: String,
    pub key_id: String,
    pub env: Env,
    pub api: String,
    pub version: String,
    /// Route template, GraphQL operation name or gRPC `/pkg.Service/Method`.
    pub operation: String,
    pub method: String,
    pub status: u16,
    pub latency_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Billable units of the call: the upstream's `Peage-Units` header, the operation's weight,
    /// or 1. A decimal string on the wire so no precision is ever lost to floats.
    #[serde(with = "rust_decimal::serde::str")]
    pub units: Decimal,
    pub gateway_id: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Decimal places of `units` the stores keep exactly (ClickHouse `Decimal(38, 9)`).
pub const UNITS_SCALE: u32 = 9;

impl CallEvent {
    /// `2xx`, `4xx`…, the status class meters filter on.
    pub fn status_class(&self) -> &'static str {
        status_class(self.status)
    }

    /// What every usage store can hold exactly: units non-negative with at most
    /// [`UNITS_SCALE`] decimal places. A failing event is dead-lettered, in every mode alike.
    pub fn check(&self) -> Result<(), String> {
        if self.units.is_sign_negative() && !self.units.is_zero() {
            return Err(format!("units {} are negative", self.units));
        }
        if self.units.normalize().scale() > UNITS_SCALE {
            return Err(format!(
                "units {} have more than {UNITS_SCALE} decimal places",
                self.units
            ));
        }
        Ok(())
    }

    /// Microseconds since the Unix epoch, the exact integer form stores keep.
    pub fn time_us(&self) -> i64 {
        self.time.timestamp_micros()
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Truncates a time to the microsecond precision the wire format and the stores keep.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| truncate_to_micros(t.with_timezone(&Utc)))
        .map_err(|e| serde::de::Error::custom(format!("time {s:?} is not RFC 3339: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::str::FromStr;

    pub fn sample_event() -> CallEvent {
        CallEvent {
            id: Uuid::now_v7(),
            time: truncate_to_micros(Utc::now()),
            partner_id: "prt_0123456789abcdef".into(),
            key_id: "key_0123456789abcdef".into(),
            env: Env::Live,
            api: "weather".into(),
            version: "v2".into(),
            operation: "GET /forecast/{city}".into(),
            method: "GET".into(),
            status: 200,
            latency_us: 1234,
            request_bytes: 0,
            response_bytes: 512,
            units: Decimal::from_str("1.5").unwrap(),
            gateway_id: "gw-1".into(),
            attributes: BTreeMap::from([("graphql.root_field".into(), "forecast".into())]),
        }
    }

    #[test]
    fn round_trips_through_json_exactly() {
        let e = sample_event();
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"units\":\"1.5\""), "{json}");
        let back: CallEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn time_is_rfc3339_with_microseconds_in_utc() {
        let mut e = sample_event();
        e.time = DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456+01:00")
            .unwrap()
            .with_timezone(&Utc);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["time"], "2026-11-25T09:00:00.123456Z");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(sample_event()).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<CallEvent>(v).is_err());
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(504), "5xx");
    }
}
