//! Path safety: the part of a path forwarded below a version's upstream base is normalized, and
//! can never climb out of it.
//!
//! - Dot segments are removed as RFC 3986 §5.2.4 says. A segment is a dot segment when it reads
//!   `.` or `..` once percent-encoded dots (`%2e`, `%2E`) are decoded (RFC 3986 §6.2.2.2: they
//!   are the same characters), and also when a `;parameter` follows (`..;x`), because servlet
//!   containers resolve those as `..`.
//! - A `..` with nothing left to remove would leave the base: the call is refused, never
//!   forwarded.
//! - Encoded slashes and backslashes (`%2F`, `%5C`) are refused by default, since many upstream
//!   frameworks decode them into separators after the gateway has checked the path;
//!   [`EncodedSlashes::Forward`] passes them on unchanged for APIs whose ids contain them.
//! - `%00` is refused always.
//!
//! Anything else is forwarded byte for byte, percent-encoding included.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400: an upstream that decodes them could be led outside the version's base.
    #[default]
    Reject,
    /// Forward unchanged (the API's ids contain slashes and its upstream keeps them encoded).
    Forward,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `..` segment would climb above the version's base.
    Escapes,
    EncodedSlash,
    EncodedNul,
}

impl PathError {
    pub fn detail(self) -> &'static str {
        match self {
            PathError::Escapes => {
                "the path climbs out of the API version with `..` segments; call /{api}/{version}/… with a path inside it"
            }
            PathError::EncodedSlash => {
                "encoded slashes and backslashes (%2F, %5C) are not accepted in paths"
            }
            PathError::EncodedNul => "%00 is not accepted in paths",
        }
    }
}

/// Whether `segment` is `.` or `..` once encoded dots are decoded and a `;param` is cut.
fn dot_segment(segment: &str) -> Option<DotSegment> {
    let name = segment.split(';').next().unwrap_or(segment);
    let mut dots = 0;
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && (rest[2] | 0x20) == b'e'
        {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
    }
    match dots {
        1 => Some(DotSegment::Current),
        2 => Some(DotSegment::Parent),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotSegment {
    Current,
    Parent,
}

/// Whether `segment` (of the route: an api or a version) is a dot segment in any spelling.
pub fn is_dot_segment(segment: &str) -> bool {
    dot_segment(segment).is_some()
}

/// Checks for encoded characters that are refused anywhere in a path.
fn check_encoded(path: &str, slashes: EncodedSlashes) -> Result<(), PathError> {
    let b = path.as_bytes();
    let mut i = 0;
    while let Some(at) = b[i..].iter().position(|c| *c == b'%') {
        let p = i + at;
        let (hi, lo) = (b.get(p + 1).copied(), b.get(p + 2).copied());
        match (hi, lo.map(|c| c | 0x20)) {
            (Some(b'0'), Some(b'0')) => return Err(PathError::EncodedNul),
            (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c'))
                if slashes == EncodedSlashes::Reject =>
            {
                return Err(PathError::EncodedSlash)
            }
            _ => {}
        }
        i = p + 1;
    }
    Ok(())
}

/// Normalizes `rest`, the path below `/{api}/{version}` (it starts with `/`), so that it stays
/// below that base. Borrowed when nothing changes, which is nearly always.
pub fn normalize(rest: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    let has_percent = rest.contains('%');
    if has_percent {
        check_encoded(rest, slashes)?;
    }
    if !rest.contains('.') && !has_percent {
        return Ok(Cow::Borrowed(rest));
    }
    let body = rest.strip_prefix('/').unwrap_or(rest);
    let segments: Vec<&str> = body.split('/').collect();
    if segments.iter().all(|s| dot_segment(s).is_none()) {
        return Ok(Cow::Borrowed(rest));
    }
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match dot_segment(seg) {
            Some(DotSegment::Current) => {
                // `/a/.` means `/a/`: the trailing slash stays.
                if i == last {
                    out.push("");
                }
            }
            Some(DotSegment::Parent) => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
                if i == last {
                    out.push("");
                }
            }
            None => out.push(seg),
        }
    }
    let mut path = String::with_capacity(rest.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, EncodedSlashes::Reject).map(|c| c.into_owned())
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/hello",
            "/users/42/orders",
            "/a//b",
            "/file.json",
            "/v%C3%A9lo",
        ] {
            let n = normalize(p, EncodedSlashes::Reject).unwrap();
            assert!(matches!(n, Cow::Borrowed(_)), "{p}");
            assert_eq!(n, p);
        }
    }

    #[test]
    fn dot_segments_inside_the_base_are_removed() {
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(norm("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(norm("/a/..;jsessionid=1/b").unwrap(), "/b");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        // Not dot segments: names that merely contain dots.
        assert_eq!(norm("/a/.../b").unwrap(), "/a/.../b");
        assert_eq!(norm("/a/..b/c").unwrap(), "/a/..b/c");
        assert_eq!(norm("/a/file%2ejson").unwrap(), "/a/file%2ejson");
    }

    #[test]
    fn climbing_above_the_base_is_refused_in_every_spelling() {
        for p in [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/%2e./admin",
            "/..;/admin",
            "/a/./../../b",
        ] {
            assert_eq!(norm(p), Err(PathError::Escapes), "{p}");
        }
    }

    #[test]
    fn encoded_slashes_backslashes_and_nul_are_refused_by_default() {
        assert_eq!(norm("/..%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/..%5cadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(
            normalize("/group%2Fproject", EncodedSlashes::Forward).unwrap(),
            "/group%2Fproject"
        );
        // Forwarded slashes still cannot hide a climb.
        assert_eq!(
            normalize("/../x%2Fy", EncodedSlashes::Forward),
            Err(PathError::Escapes)
        );
        assert_eq!(
            normalize("/a%00", EncodedSlashes::Forward),
            Err(PathError::EncodedNul)
        );
    }

    #[test]
    fn route_segments_are_recognised_as_dot_segments() {
        assert!(is_dot_segment(".."));
        assert!(is_dot_segment("%2e"));
        assert!(is_dot_segment("..;x"));
        assert!(!is_dot_segment("v1"));
        assert!(!is_dot_segment(""));
    }
}
