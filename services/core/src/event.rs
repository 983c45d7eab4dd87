//! `CallEvent` v1: one per call through the gateway, the unit of metering.
//! The wire form (JSON) is fixed by `schemas/events/call_event.v1.json`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Which upstream a call went to: partners' live traffic, or the sandbox (test keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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

/// The attribute naming the problem type of a refused call.
pub const REFUSAL: &str = "refusal";

/// Decimal places of `units` the stores keep exactly (ClickHouse `Decimal(38, 9)`).
pub const UNITS_SCALE: u32 = 9;

/// The most units one event may carry: 10^15, the same bound as money
/// ([`crate::money::MAX_AMOUNT`]). Sums of a period's events then stay far inside `Decimal` and
/// ClickHouse's `Decimal(38, 9)`.
pub const MAX_UNITS: Decimal = crate::money::MAX_AMOUNT;

/// Why a call's units cannot be stored exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    #[error("units {0} are negative")]
    Negative(Decimal),
    #[error("units {0} are above the maximum of 10^15")]
    TooLarge(Decimal),
    #[error("units {0} have more than {scale} decimal places", scale = UNITS_SCALE)]
    TooPrecise(Decimal),
}

impl CallEvent {
    /// `2xx`, `4xx`…, the status class meters filter on.
    pub fn status_class(&self) -> &'static str {
        status_class(self.status)
    }

    /// What every usage store can hold exactly: units non-negative, at most [`MAX_UNITS`], with
    /// at most [`UNITS_SCALE`] decimal places. A failing event is dead-lettered, in every mode alike.
    pub fn check(&self) -> Result<(), UnitsError> {
        if self.units.is_sign_negative() && !self.units.is_zero() {
            return Err(UnitsError::Negative(self.units));
        }
        if self.units > MAX_UNITS {
            return Err(UnitsError::TooLarge(self.units));
        }
        if self.units.normalize().scale() > UNITS_SCALE {
            return Err(UnitsError::TooPrecise(self.units));
        }
        Ok(())
    }

    /// The problem type of a call the gateway refused before forwarding it
    /// (`attributes.refusal`, docs/gateway.md "Refusals"), `None` for a served call.
    pub fn refusal(&self) -> Option<&str> {
        self.attributes.get(REFUSAL).map(String::as_str)
    }

    /// Microseconds since the Unix epoch, the exact integer form stores keep.
    pub fn time_us(&self) -> i64 {
        self.time.timestamp_micros()
    }

    /// Appends the event's JSON wire form to `out`: byte for byte what `serde_json::to_vec`
    /// writes (a test holds the two together), without serde's per-field machinery or a
    /// temporary string per timestamp and decimal. Gateways write one per call.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(self.id.hyphenated().encode_lower(&mut id).as_bytes());
        out.extend_from_slice(b"\",\"time\":");
        write_time(out, &self.time);
        for (name, value) in [
            (&b",\"partner_id\":"[..], self.partner_id.as_str()),
            (b",\"key_id\":", &self.key_id),
            (b",\"env\":", self.env.as_str()),
            (b",\"api\":", &self.api),
            (b",\"version\":", &self.version),
            (b",\"operation\":", &self.operation),
            (b",\"method\":", &self.method),
        ] {
            out.extend_from_slice(name);
            write_json_str(out, value);
        }
        for (name, n) in [
            (&b",\"status\":"[..], u64::from(self.status)),
            (b",\"latency_us\":", self.latency_us),
            (b",\"request_bytes\":", self.request_bytes),
            (b",\"response_bytes\":", self.response_bytes),
        ] {
            out.extend_from_slice(name);
            write_u64(out, n);
        }
        out.extend_from_slice(b",\"units\":\"");
        if self.units.scale() == 0
            && self.units >= Decimal::ZERO
            && self.units <= Decimal::from(u64::MAX)
        {
            // Whole units (the usual 1), without the formatting machinery.
            write_u64(out, self.units.mantissa() as u64);
        } else {
            use std::io::Write as _;
            let _ = write!(out, "{}", self.units);
        }
        out.extend_from_slice(b"\",\"gateway_id\":");
        write_json_str(out, &self.gateway_id);
        out.extend_from_slice(b",\"attributes\":{");
        for (i, (k, v)) in self.attributes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, k);
            out.push(b':');
            write_json_str(out, v);
        }
        out.extend_from_slice(b"}}");
    }
}

/// A JSON string as serde_json writes it: `"`, `\\` and control characters escaped, nothing
/// else (not `/`, not non-ASCII).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if bytes
        .iter()
        .all(|b| *b >= 0x20 && *b != b'"' && *b != b'\\')
    {
        out.extend_from_slice(bytes);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..=0x1f => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]),
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `"YYYY-MM-DDTHH:MM:SS.ffffffZ"`, as [`ser_time`] writes it.
fn write_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside four-digit years chrono writes a sign: leave it to chrono.
        out.push(b'"');
        out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes());
        out.push(b'"');
        return;
    }
    let two = |out: &mut Vec<u8>, n: u32| {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
    };
    out.push(b'"');
    let y = year as u32;
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    out.push(b'.');
    // A leap second's nanoseconds run past 1e9; chrono prints them as they are.
    let micros = t.nanosecond() / 1_000;
    let mut digits = [b'0'; 7];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(if micros >= 1_000_000 {
        &digits
    } else {
        &digits[1..]
    });
    out.extend_from_slice(b"Z\"");
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

pub(crate) fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

pub(crate) fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
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
    fn units_are_checked_against_sign_scale_and_the_maximum() {
        let mut e = sample_event();
        assert_eq!(e.check(), Ok(()));
        e.units = MAX_UNITS;
        assert_eq!(e.check(), Ok(()));
        e.units = MAX_UNITS + Decimal::ONE;
        assert!(e.check().unwrap_err().to_string().contains("maximum"));
        e.units = Decimal::from_str("-1").unwrap();
        assert!(e.check().unwrap_err().to_string().contains("negative"));
        e.units = Decimal::from_str("0.0000000001").unwrap();
        assert!(e
            .check()
            .unwrap_err()
            .to_string()
            .contains("decimal places"));
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
    fn the_fast_writer_writes_what_serde_writes() {
        let mut cases = vec![sample_event()];
        let mut e = sample_event();
        e.operation = "GET /a\"b\\c\n\t\r\u{1}\u{1f}\u{7f}/é/∑/😀".into();
        e.attributes = BTreeMap::from([
            ("q\"uote".into(), "line\nbreak".into()),
            ("empty".into(), String::new()),
        ]);
        e.units = Decimal::from_str("0.000000001").unwrap();
        e.status = 0;
        e.latency_us = u64::MAX;
        e.env = Env::Sandbox;
        cases.push(e);
        let mut e = sample_event();
        e.attributes.clear();
        e.units = Decimal::from_str("123456789012345678901234.5").unwrap();
        e.time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        cases.push(e);
        let mut e = sample_event();
        e.time = DateTime::from_timestamp_micros(1).unwrap();
        e.units = Decimal::ZERO;
        cases.push(e);
        let mut e = sample_event();
        e.time = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999Z")
            .unwrap()
            .with_timezone(&Utc);
        cases.push(e);
        for e in cases {
            let mut fast = Vec::new();
            e.write_json(&mut fast);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&e).unwrap()
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_writer_agrees_with_serde_on_any_strings_and_numbers(
            operation in ".*",
            key in ".*",
            value in ".*",
            status: u16,
            latency: u64,
            micros in 0i64..253_402_300_799_999_999,
            mantissa: i64,
            scale in 0u32..=9,
        ) {
            let mut e = sample_event();
            e.operation = operation;
            e.attributes = BTreeMap::from([(key, value)]);
            e.status = status;
            e.latency_us = latency;
            e.time = DateTime::from_timestamp_micros(micros).unwrap();
            e.units = Decimal::new(mantissa, scale);
            let mut fast = Vec::new();
            e.write_json(&mut fast);
            proptest::prop_assert_eq!(fast, serde_json::to_vec(&e).unwrap());
        }
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
