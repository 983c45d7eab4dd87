//! W3C Trace Context (`traceparent`): a call keeps the trace its caller started, or starts one,
//! and the upstream is told the gateway's own span as its parent. The trace id is written in
//! the access log, so a call can be followed from the partner to the upstream's logs.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One call's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's span for this call: the parent the upstream is told.
    pub span_id: [u8; 8],
    /// The caller's span, when the caller sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the caller's trace from a valid version-00 `traceparent`, else starts a new
    /// one (an invalid header is ignored, as the specification asks).
    pub fn of(headers: &HeaderMap) -> TraceContext {
        let span_id = random_span();
        if let Some((trace_id, parent, flags)) =
            headers.get(&TRACEPARENT).and_then(|v| parse(v.as_bytes()))
        {
            return TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            };
        }
        let mut trace_id = rand::random::<[u8; 16]>();
        trace_id[0] |= 1; // never all zeros
        TraceContext {
            trace_id,
            span_id,
            parent_id: None,
            flags: 0,
        }
    }

    /// `traceparent` for the upstream: the same trace, the gateway's span as the parent.
    pub fn upstream_header(&self) -> HeaderValue {
        let mut text = [b'-'; 55];
        text[0] = b'0';
        text[1] = b'0';
        hex_into(&self.trace_id, &mut text[3..35]);
        hex_into(&self.span_id, &mut text[36..52]);
        hex_into(&[self.flags], &mut text[53..55]);
        HeaderValue::from_bytes(&text).expect("hex digits and dashes")
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn random_span() -> [u8; 8] {
    let mut span = rand::random::<[u8; 8]>();
    if span == [0; 8] {
        span[7] = 1;
    }
    span
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits")
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None, // lower case only, as the specification says
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, neither id all zeros. Later versions may append fields
/// after the flags; their first four fields are read the same way.
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = unhex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_callers_trace_is_continued_with_the_gateways_span_as_parent() {
        // The specification's example.
        let t = TraceContext::of(&with(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(t.flags, 1);
        let up = t.upstream_header();
        let up = up.to_str().unwrap();
        assert!(
            up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{up}"
        );
        assert!(up.ends_with("-01"), "{up}");
        assert_ne!(&up[36..52], "00f067aa0ba902b7", "the gateway's own span");
        assert_eq!(&up[36..52], t.span_id_hex());
        // What the gateway sends parses as what it means.
        let again = TraceContext::of(&with(up));
        assert_eq!(again.trace_id, t.trace_id);
        assert_eq!(again.parent_id, Some(t.span_id));
    }

    #[test]
    fn invalid_headers_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = TraceContext::of(&with(bad));
            assert_eq!(t.parent_id, None, "{bad}");
            assert_ne!(t.trace_id, [0; 16]);
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
        }
        // A later version's extra fields are allowed.
        let t = TraceContext::of(&with(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next",
        ));
        assert!(t.parent_id.is_some());
        let fresh = TraceContext::of(&HeaderMap::new());
        let other = TraceContext::of(&HeaderMap::new());
        assert_ne!(fresh.trace_id, other.trace_id);
        assert_eq!(fresh.flags, 0);
    }
}
