//! gRPC calls: messages are counted from the length-prefixed framing as bodies stream, the
//! status is read from the trailers (or the headers of a trailers-only answer), and the
//! gateway's own refusals are sent as gRPC statuses so gRPC clients can read them.

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// Counts gRPC messages in a byte stream: each is a 1-byte flag and a 4-byte big-endian length,
/// then that many bytes. Chunks may split a prefix or a message anywhere.
#[derive(Debug, Default, Clone)]
pub(crate) struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    pub messages: u64,
}

impl MessageCounter {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                self.messages += 1;
                self.prefix_len = 0;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
            }
        }
    }
}

/// The gRPC status code for an HTTP status the gateway answers with (the gRPC project's
/// "HTTP to gRPC status code mapping", extended with the gateway's own refusals).
pub(crate) fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 413 => 3,  // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 410 => 12, // UNIMPLEMENTED: no such service or method (any more)
        429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        504 => 4,        // DEADLINE_EXCEEDED
        _ => 2,          // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): printable ASCII but `%` as is.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes `headers` a trailers-only gRPC answer of the gateway's own refusal: `grpc-status` for
/// its HTTP `status`, and `grpc-message` with the detail.
pub(crate) fn set_status(headers: &mut HeaderMap, status: StatusCode, detail: &str) {
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(code_for(status))),
    );
    if let Ok(v) = HeaderValue::from_str(&percent_encode(detail)) {
        headers.insert("grpc-message", v);
    }
}

/// The `grpc-status` of a headers or trailers block.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(lens: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &n in lens {
            out.push(0);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend(std::iter::repeat_n(7u8, n as usize));
        }
        out
    }

    #[test]
    fn messages_are_counted_however_the_stream_is_chunked() {
        let bytes = framed(&[0, 3, 70_000, 1, 0]);
        for chunk in [1, 2, 4, 5, 6, 7, 1000, bytes.len()] {
            let mut c = MessageCounter::default();
            for piece in bytes.chunks(chunk) {
                c.feed(piece);
            }
            assert_eq!(c.messages, 5, "chunks of {chunk}");
        }
    }

    #[test]
    fn refusals_become_grpc_statuses() {
        let mut h = HeaderMap::new();
        set_status(&mut h, StatusCode::TOO_MANY_REQUESTS, "quota 100% used");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "quota 100%25 used");
        assert_eq!(code_for(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(code_for(StatusCode::GATEWAY_TIMEOUT), 4);
    }
}
