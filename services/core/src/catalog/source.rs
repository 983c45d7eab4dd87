//! Source spans to issues (file, line, column, field), and the checks every section shares.

use std::fmt;
use std::ops::Range;

use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;

use crate::money::MAX_AMOUNT;

use super::raw::{RawNumber, SNum};

// ---- errors -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogIssue {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Path of the offending key, e.g. `plan[growth].charges[0].meter`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for CatalogIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Every problem found in a catalog, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CatalogError {
    pub issues: Vec<CatalogIssue>,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid catalog")?;
        for i in &self.issues {
            write!(f, "\n  {i}")?;
        }
        Ok(())
    }
}

pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) issues: Vec<CatalogIssue>,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    pub(super) fn issue_count(&self) -> usize {
        self.issues.len()
    }

    pub(super) fn issue(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.issues.push(CatalogIssue {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// The key a TOML parse error points at: the key at the span, or the nearest `key =` before
    /// it on the same line (toml's own errors carry a position but not the key path).
    pub(super) fn key_near(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let rel = offset - line_start;
        let is_key = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        // The span starts on a key (unknown or duplicate key errors).
        let after: String = line[rel..].chars().take_while(|c| is_key(*c)).collect();
        if !after.is_empty() && line[rel + after.len()..].trim_start().starts_with('=') {
            return after;
        }
        // Otherwise the span is a value: take the last `key =` before it.
        let head = &line[..rel];
        if let Some(eq) = head.rfind('=') {
            let key: String = head[..eq]
                .trim_end()
                .chars()
                .rev()
                .take_while(|c| is_key(*c) || *c == '"')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let key = key.trim_matches('"');
            if !key.is_empty() {
                return key.to_string();
            }
        }
        let table = line.trim();
        if table.starts_with('[') {
            return table.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        "(document)".to_string()
    }
}

impl Source<'_> {
    /// A decimal between 0 and [`MAX_AMOUNT`] (10^15: every price, allowance, tier bound, weight
    /// and scale), or `None` after recording why not.
    pub(super) fn decimal(&mut self, n: &SNum, field: &str) -> Option<Decimal> {
        let parsed = match n.get_ref() {
            RawNumber::Int(i) => Ok(Decimal::from(*i)),
            RawNumber::Str(s) => crate::money::exact_decimal(s).map_err(|e| e.to_string()),
            RawNumber::Float(f) => Err(format!(
                "{f} is a TOML float; write it as a string (\"{f}\") so it stays exact"
            )),
        };
        match parsed {
            Ok(d) if d.is_sign_negative() => {
                self.issue(n.span(), field, "must not be negative");
                None
            }
            Ok(d) if d > MAX_AMOUNT => {
                self.issue(n.span(), field, "must be at most 1000000000000000 (10^15)");
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.issue(n.span(), field, msg);
                None
            }
        }
    }

    pub(super) fn name(&mut self, s: &Spanned<String>, field: &str) -> bool {
        let v = s.get_ref();
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
            });
        if !ok {
            self.issue(
                s.span(),
                field,
                format!("{v:?} must be 1–64 characters of a–z, 0–9, '-', '_' or '.'"),
            );
        }
        ok
    }

    pub(super) fn upstream(
        &mut self,
        s: &Spanned<String>,
        field: &str,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let url = match interpolate(s.get_ref(), vars) {
            Ok(u) => u,
            Err(msg) => {
                self.issue(s.span(), field, msg.to_string());
                return None;
            }
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(['?', '#', ' ']) => {
                Some(url.trim_end_matches('/').to_string())
            }
            _ => {
                self.issue(
                    s.span(),
                    field,
                    format!(
                        "{url:?} is not an http:// or https:// base URL (no query or fragment)"
                    ),
                );
                None
            }
        }
    }
}

/// Why `${...}` in an upstream URL cannot be replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum InterpolationError {
    #[error("unterminated ${{ in {0:?}")]
    Unterminated(String),
    #[error("environment variable {0} is not set")]
    Unset(String),
}

/// Replaces `${NAME}` with `vars(NAME)`, or `${NAME:-default}` with the default when NAME is
/// unset; an unset variable without a default is an error, never an empty string.
pub(super) fn interpolate(
    s: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| InterpolationError::Unterminated(s.to_string()))?;
        let (name, default) = match after[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&after[..end], None),
        };
        let value = vars(name)
            .or_else(|| default.map(str::to_string))
            .ok_or_else(|| InterpolationError::Unset(name.to_string()))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn parse_enum<T: for<'de> Deserialize<'de>>(s: &str) -> Option<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s)).ok()
}
