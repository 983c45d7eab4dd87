//! The catalog (`catalog.toml`): APIs, meters and plans, "pricing as code".
//!
//! Loading is strict: unknown keys, wrong types, dangling references, floats where money is
//! expected and unordered tiers are all refused, with an error naming the file, line, column and
//! field, so a bad deploy fails at start-up instead of mis-billing. docs/catalog.md lists every key.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::meter::{Aggregation, Dimension, Meter, MeterField};
use crate::money::{Currency, MAX_AMOUNT};
use crate::period::PeriodRule;
use crate::pricing::{Charge, ChargeModel, Plan, Quota, QuotaKind, RateLimit, TaxRate, Tier};

// ---- the validated model ------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Catalog {
    /// Content hash of the source: every change to the catalog gets a new version.
    pub version: String,
    pub apis: Vec<Api>,
    pub meters: Vec<Meter>,
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Api {
    pub name: String,
    pub description: Option<String>,
    pub versions: Vec<ApiVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    Active,
    Deprecated,
    Retired,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiVersion {
    pub id: String,
    pub status: VersionStatus,
    /// When the version was deprecated (sent as the `Deprecation` header, RFC 9745).
    pub deprecated: Option<NaiveDate>,
    /// When the version stops answering (sent as the `Sunset` header, RFC 8594).
    pub sunset: Option<NaiveDate>,
    pub successor: Option<String>,
    pub live: String,
    pub sandbox: Option<String>,
    /// How calls to this version are read for metering.
    pub protocol: Protocol,
    /// gRPC only: the fully qualified services (`greet.v1.Greeter`) this version serves. Calls
    /// to `/{service}/{Method}` are routed here, since gRPC clients cannot prefix paths.
    pub grpc_services: Vec<String>,
    pub operations: Vec<Operation>,
    /// The version's OpenAPI document (JSON or YAML), a path relative to the catalog file;
    /// partners read it rendered in the dashboard.
    pub openapi: Option<String>,
}

/// What the gateway reads from a call to name its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// REST/JSON or any HTTP: the operation is the matching route template.
    #[default]
    Http,
    /// The operation is the GraphQL operation name, read from the request document.
    Graphql,
    /// The operation is the gRPC method, `/pkg.Service/Method`.
    Grpc,
}

/// A route template such as `GET /forecast/{city}` (HTTP), an operation name (GraphQL) or a
/// method path `/pkg.Service/Method` (gRPC), and its weight in billable units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    pub name: String,
    pub method: String,
    #[serde(skip)]
    segments: Vec<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub units: Decimal,
}

impl Operation {
    fn matches(&self, method: &str, path: &str) -> bool {
        if !self.method.eq_ignore_ascii_case(method) && self.method != "*" {
            return false;
        }
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segments {
            match parts.next() {
                Some(p) if seg.starts_with('{') || seg == p => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

impl Catalog {
    pub fn api_version(&self, api: &str, version: &str) -> Option<&ApiVersion> {
        self.apis
            .iter()
            .find(|a| a.name == api)?
            .versions
            .iter()
            .find(|v| v.id == version)
    }

    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    pub fn meter(&self, name: &str) -> Option<&Meter> {
        self.meters.iter().find(|m| m.name == name)
    }

    /// The API and version serving a gRPC service (`greet.v1.Greeter`).
    pub fn grpc_service(&self, service: &str) -> Option<(&Api, &ApiVersion)> {
        self.apis.iter().find_map(|a| {
            a.versions
                .iter()
                .find(|v| v.grpc_services.iter().any(|s| s == service))
                .map(|v| (a, v))
        })
    }
}

impl ApiVersion {
    /// The operation template a request matches, if the catalog declares one.
    pub fn operation_for(&self, method: &str, path: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.matches(method, path))
    }

    /// The GraphQL or gRPC operation of that exact name, if the catalog declares one.
    pub fn operation_named(&self, name: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.name == name)
    }
}

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

struct Source<'a> {
    file: &'a str,
    text: &'a str,
    issues: Vec<CatalogIssue>,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn issue(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
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
    fn key_near(&self, offset: usize) -> String {
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

// ---- the raw TOML shape -------------------------------------------------------------------

/// A number written as a TOML integer or a decimal string. Floats are refused: `0.1` in TOML
/// is a binary float, and money must not pass through one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Int(i64),
    Str(String),
    Float(f64),
}

type SNum = Spanned<RawNumber>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    api: Vec<RawApi>,
    #[serde(default)]
    meter: Vec<RawMeter>,
    #[serde(default)]
    plan: Vec<RawPlan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    name: Spanned<String>,
    description: Option<String>,
    #[serde(default)]
    versions: Vec<RawVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    id: Spanned<String>,
    status: Option<Spanned<String>>,
    deprecated: Option<Spanned<toml::value::Datetime>>,
    sunset: Option<Spanned<toml::value::Datetime>>,
    successor: Option<Spanned<String>>,
    live: Spanned<String>,
    sandbox: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    grpc_services: Vec<Spanned<String>>,
    #[serde(default)]
    operations: BTreeMap<String, Spanned<RawOperation>>,
    openapi: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    units: Option<SNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeter {
    name: Spanned<String>,
    aggregation: Spanned<String>,
    field: Option<Spanned<String>>,
    scale: Option<SNum>,
    #[serde(default)]
    filter: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    group_by: Vec<Spanned<String>>,
    refusals: Option<Spanned<String>>,
    event_type: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    id: Spanned<String>,
    name: Option<String>,
    currency: Spanned<String>,
    period: Option<Spanned<RawPeriod>>,
    base_fee: Option<SNum>,
    tax: Option<RawTax>,
    minimum_commitment: Option<SNum>,
    #[serde(default)]
    charges: Vec<Spanned<RawCharge>>,
    #[serde(default)]
    quotas: Vec<RawQuota>,
    rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeriod {
    every: Spanned<String>,
    anchor_day: Option<Spanned<u32>>,
    anchor_month: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTax {
    rate: SNum,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCharge {
    meter: Spanned<String>,
    model: Spanned<String>,
    free: Option<SNum>,
    unit_price: Option<SNum>,
    amount: Option<SNum>,
    tiers: Option<Vec<RawTier>>,
    size: Option<SNum>,
    price: Option<SNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    up_to: SNum,
    unit_price: SNum,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    meter: Spanned<String>,
    limit: SNum,
    kind: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    burst: u32,
}

// ---- validation ---------------------------------------------------------------------------

impl Source<'_> {
    /// A decimal between 0 and [`MAX_AMOUNT`] (10^15: every price, allowance, tier bound, weight
    /// and scale), or `None` after recording why not.
    fn decimal(&mut self, n: &SNum, field: &str) -> Option<Decimal> {
        let parsed = match n.get_ref() {
            RawNumber::Int(i) => Ok(Decimal::from(*i)),
            RawNumber::Str(s) => Decimal::from_str(s)
                .or_else(|_| Decimal::from_scientific(s))
                .map_err(|_| format!("{s:?} is not a decimal number")),
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

    fn name(&mut self, s: &Spanned<String>, field: &str) -> bool {
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

    fn upstream(
        &mut self,
        s: &Spanned<String>,
        field: &str,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let url = match interpolate(s.get_ref(), vars) {
            Ok(u) => u,
            Err(msg) => {
                self.issue(s.span(), field, msg);
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

/// Replaces `${NAME}` with `vars(NAME)`, or `${NAME:-default}` with the default when NAME is
/// unset; an unset variable without a default is an error, never an empty string.
fn interpolate(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let (name, default) = match after[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&after[..end], None),
        };
        let value = vars(name)
            .or_else(|| default.map(str::to_string))
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

impl Catalog {
    /// Parses and validates one catalog file. `vars` resolves `${NAME}` in upstream URLs
    /// (the caller passes the process environment; core reads none itself).
    pub fn parse(
        file: &str,
        text: &str,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Catalog, CatalogError> {
        let mut src = Source {
            file,
            text,
            issues: Vec::new(),
        };
        let raw: RawCatalog = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let field = src.key_near(span.start);
                src.issue(span, field, e.message().trim().to_string());
                return Err(CatalogError { issues: src.issues });
            }
        };
        let apis = validate_apis(&mut src, &raw.api, vars);
        let meters = validate_meters(&mut src, &raw.meter);
        let plans = validate_plans(&mut src, &raw.plan, &meters);
        if !src.issues.is_empty() {
            src.issues.sort_by_key(|i| (i.line, i.column));
            return Err(CatalogError { issues: src.issues });
        }
        Ok(Catalog {
            version: short_hash(text.as_bytes()),
            apis,
            meters,
            plans,
        })
    }
}

fn validate_apis(
    src: &mut Source,
    raw: &[RawApi],
    vars: &dyn Fn(&str) -> Option<String>,
) -> Vec<Api> {
    let mut apis = Vec::new();
    let mut seen = HashSet::new();
    let mut seen_services = HashSet::new();
    for a in raw {
        let path = format!("api[{}]", a.name.get_ref());
        src.name(&a.name, &format!("{path}.name"));
        if !seen.insert(a.name.get_ref().clone()) {
            src.issue(a.name.span(), format!("{path}.name"), "duplicate api name");
        }
        let ids: BTreeSet<&str> = a.versions.iter().map(|v| v.id.get_ref().as_str()).collect();
        let mut versions = Vec::new();
        let mut seen_versions = HashSet::new();
        for v in &a.versions {
            let vpath = format!("{path}.versions[{}]", v.id.get_ref());
            src.name(&v.id, &format!("{vpath}.id"));
            if !seen_versions.insert(v.id.get_ref().clone()) {
                src.issue(v.id.span(), format!("{vpath}.id"), "duplicate version id");
            }
            let status = match v.status.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                None | Some(("active", _)) => VersionStatus::Active,
                Some(("deprecated", _)) => VersionStatus::Deprecated,
                Some(("retired", _)) => VersionStatus::Retired,
                Some((other, span)) => {
                    src.issue(
                        span,
                        format!("{vpath}.status"),
                        format!("{other:?} is not one of active, deprecated, retired"),
                    );
                    VersionStatus::Active
                }
            };
            let mut date = |field: &str, value: &Option<Spanned<toml::value::Datetime>>| {
                value.as_ref().and_then(|s| {
                    let parsed = s.get_ref().date.and_then(|d| {
                        NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
                    });
                    if parsed.is_none() {
                        src.issue(
                            s.span(),
                            format!("{vpath}.{field}"),
                            "must be a date such as 2027-03-31",
                        );
                    }
                    parsed
                })
            };
            let sunset = date("sunset", &v.sunset);
            let deprecated = date("deprecated", &v.deprecated);
            if let (Some(d), Some(s)) = (deprecated, sunset) {
                if d > s {
                    src.issue(
                        v.deprecated.as_ref().map_or(v.id.span(), |d| d.span()),
                        format!("{vpath}.deprecated"),
                        "a version cannot be deprecated after its sunset",
                    );
                }
            }
            if status == VersionStatus::Deprecated && sunset.is_none() {
                let span = v.status.as_ref().map_or(v.id.span(), |s| s.span());
                src.issue(
                    span,
                    format!("{vpath}.sunset"),
                    "a deprecated version needs a sunset date",
                );
            }
            if status == VersionStatus::Deprecated && deprecated.is_none() {
                let span = v.status.as_ref().map_or(v.id.span(), |s| s.span());
                src.issue(
                    span,
                    format!("{vpath}.deprecated"),
                    "a deprecated version needs the date it was deprecated, e.g. deprecated = 2026-10-01",
                );
            }
            if let Some(s) = &v.successor {
                if !ids.contains(s.get_ref().as_str()) {
                    src.issue(
                        s.span(),
                        format!("{vpath}.successor"),
                        format!("no version {:?} in this api", s.get_ref()),
                    );
                }
            }
            let live = src.upstream(&v.live, &format!("{vpath}.live"), vars);
            let sandbox = v
                .sandbox
                .as_ref()
                .and_then(|s| src.upstream(s, &format!("{vpath}.sandbox"), vars));
            // An unknown protocol is reported once; its operations are not checked against a guess.
            let (protocol, known) = match &v.protocol {
                None => (Protocol::Http, true),
                Some(p) => match parse_enum::<Protocol>(p.get_ref()) {
                    Some(p) => (p, true),
                    None => {
                        src.issue(
                            p.span(),
                            format!("{vpath}.protocol"),
                            format!("{:?} is not one of http, graphql, grpc", p.get_ref()),
                        );
                        (Protocol::Http, false)
                    }
                },
            };
            let grpc_services = grpc_services(src, v, protocol, &vpath, &mut seen_services);
            let mut operations = Vec::new();
            for (name, op) in v.operations.iter().filter(|_| known) {
                let opath = format!("{vpath}.operations[{name:?}]");
                let Some((method, segments)) = operation_key(name, protocol, &grpc_services)
                    .map_err(|why| {
                        src.issue(op.span(), opath.clone(), why);
                    })
                    .ok()
                else {
                    continue;
                };
                let units = match &op.get_ref().units {
                    Some(u) => src
                        .decimal(u, &format!("{opath}.units"))
                        .unwrap_or(Decimal::ONE),
                    None => Decimal::ONE,
                };
                operations.push(Operation {
                    name: name.clone(),
                    method,
                    segments,
                    units,
                });
            }
            versions.push(ApiVersion {
                id: v.id.get_ref().clone(),
                status,
                deprecated,
                sunset,
                successor: v.successor.as_ref().map(|s| s.get_ref().clone()),
                live: live.unwrap_or_default(),
                sandbox,
                protocol,
                grpc_services,
                operations,
                openapi: v.openapi.as_ref().map(|s| s.get_ref().clone()),
            });
        }
        if a.versions.is_empty() {
            src.issue(
                a.name.span(),
                format!("{path}.versions"),
                "an api needs at least one version",
            );
        }
        apis.push(Api {
            name: a.name.get_ref().clone(),
            description: a.description.clone(),
            versions,
        });
    }
    apis
}

/// The gRPC services of a version: required for `grpc`, refused otherwise, unique catalog-wide.
fn grpc_services(
    src: &mut Source,
    v: &RawVersion,
    protocol: Protocol,
    vpath: &str,
    seen: &mut HashSet<String>,
) -> Vec<String> {
    let field = format!("{vpath}.grpc_services");
    if protocol != Protocol::Grpc {
        if let Some(s) = v.grpc_services.first() {
            src.issue(s.span(), field, "grpc_services needs protocol = \"grpc\"");
        }
        return Vec::new();
    }
    if v.grpc_services.is_empty() {
        let span = v.protocol.as_ref().map_or(v.id.span(), |p| p.span());
        src.issue(
            span,
            field.clone(),
            "a grpc version names the services it serves, e.g. grpc_services = [\"greet.v1.Greeter\"]",
        );
    }
    let mut out = Vec::new();
    for s in &v.grpc_services {
        let name = s.get_ref();
        let valid = !name.is_empty()
            && name.split('.').all(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if !valid {
            src.issue(
                s.span(),
                field.clone(),
                format!(
                    "{name:?} is not a fully qualified gRPC service name such as greet.v1.Greeter"
                ),
            );
        } else if !seen.insert(name.clone()) {
            src.issue(
                s.span(),
                field.clone(),
                format!("{name:?} is already served by another version; a gRPC service routes to one version"),
            );
        }
        out.push(name.clone());
    }
    out
}

/// An operation's key by protocol: `METHOD /route/{param}` (HTTP), an operation name
/// (GraphQL), `/pkg.Service/Method` of one of the version's services (gRPC).
fn operation_key(
    name: &str,
    protocol: Protocol,
    grpc_services: &[String],
) -> Result<(String, Vec<String>), String> {
    let graphql_name = |s: &str| {
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match protocol {
        Protocol::Http => {
            let (method, route) = name
                .split_once(' ')
                .filter(|(_, r)| r.starts_with('/'))
                .ok_or("operation must read \"METHOD /path/{param}\"")?;
            let segments = route
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Ok((method.to_ascii_uppercase(), segments))
        }
        Protocol::Graphql if graphql_name(name) => Ok(("POST".into(), Vec::new())),
        Protocol::Graphql => {
            Err("a graphql operation is an operation name such as GetForecast".into())
        }
        Protocol::Grpc => {
            let service = name
                .strip_prefix('/')
                .and_then(|p| p.rsplit_once('/'))
                .filter(|(_, m)| graphql_name(m))
                .map(|(s, _)| s)
                .ok_or("a grpc operation reads \"/pkg.Service/Method\"")?;
            if !grpc_services.iter().any(|s| s == service) {
                return Err(format!(
                    "{service:?} is not in this version's grpc_services"
                ));
            }
            Ok(("POST".into(), Vec::new()))
        }
    }
}

fn parse_enum<T: for<'de> Deserialize<'de>>(s: &str) -> Option<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s)).ok()
}

fn validate_meters(src: &mut Source, raw: &[RawMeter]) -> Vec<Meter> {
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
                    "{:?} is not one of count, sum, max, unique_count, latest",
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
        }),
    })
}

fn validate_plans(src: &mut Source, raw: &[RawPlan], meters: &[Meter]) -> Vec<Plan> {
    let meter_names: HashSet<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    let mut plans = Vec::new();
    let mut seen = HashSet::new();
    for p in raw {
        let path = format!("plan[{}]", p.id.get_ref());
        src.name(&p.id, &format!("{path}.id"));
        if !seen.insert(p.id.get_ref().clone()) {
            src.issue(p.id.span(), format!("{path}.id"), "duplicate plan id");
        }
        let currency = Currency::parse(p.currency.get_ref());
        if currency.is_none() {
            src.issue(
                p.currency.span(),
                format!("{path}.currency"),
                format!(
                    "{:?} is not an ISO 4217 code Péage knows",
                    p.currency.get_ref()
                ),
            );
        }
        let period = match &p.period {
            None => Some(PeriodRule::Month { anchor_day: 1 }),
            Some(sp) => validate_period(src, sp, &path),
        };
        let base_fee = p.base_fee.as_ref().map_or(Some(Decimal::ZERO), |b| {
            src.decimal(b, &format!("{path}.base_fee"))
        });
        let tax = p.tax.as_ref().and_then(|t| {
            let rate = src.decimal(&t.rate, &format!("{path}.tax.rate"))?;
            if rate > Decimal::ONE {
                src.issue(
                    t.rate.span(),
                    format!("{path}.tax.rate"),
                    "a rate is a fraction: 0.20 for 20 %",
                );
                return None;
            }
            Some(TaxRate {
                rate,
                label: t.label.clone(),
            })
        });
        let minimum_commitment = p
            .minimum_commitment
            .as_ref()
            .and_then(|c| src.decimal(c, &format!("{path}.minimum_commitment")));
        let mut charges = Vec::new();
        for (i, c) in p.charges.iter().enumerate() {
            let cpath = format!("{path}.charges[{i}]");
            let c_ref = c.get_ref();
            if !meter_names.contains(c_ref.meter.get_ref().as_str()) {
                src.issue(
                    c_ref.meter.span(),
                    format!("{cpath}.meter"),
                    format!("no meter named {:?}", c_ref.meter.get_ref()),
                );
            }
            if let Some(model) = validate_model(src, c, &cpath) {
                let free = c_ref.free.as_ref().map_or(Some(Decimal::ZERO), |f| {
                    src.decimal(f, &format!("{cpath}.free"))
                });
                charges.push(Charge {
                    meter: c_ref.meter.get_ref().clone(),
                    free: free.unwrap_or_default(),
                    model,
                });
            }
        }
        let mut quotas = Vec::new();
        for (i, q) in p.quotas.iter().enumerate() {
            let qpath = format!("{path}.quotas[{i}]");
            match meters.iter().find(|m| &m.name == q.meter.get_ref()) {
                None => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!("no meter named {:?}", q.meter.get_ref()),
                ),
                Some(m) if m.events.is_some() => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!(
                        "meter {:?} reads usage events, so it cannot carry a quota: gateways enforce quotas on calls",
                        m.name
                    ),
                ),
                // A gateway spends a quota call by call, so it must be additive.
                Some(m) if !m.quotable() => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!(
                        "meter {:?} cannot carry a quota: only count and sum meters can (it is {:?} of {:?})",
                        m.name, m.aggregation, m.field
                    ),
                ),
                // Refused calls give back what they took: a quota counts served calls.
                Some(m) if m.refusals != crate::meter::Refusals::Exclude => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!(
                        "meter {:?} counts refused calls, so it cannot carry a quota",
                        m.name
                    ),
                ),
                Some(_) => {}
            }
            if p.quotas[..i]
                .iter()
                .any(|o| o.meter.get_ref() == q.meter.get_ref())
            {
                src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    "a plan has at most one quota per meter",
                );
            }
            let kind = match q.kind.get_ref().as_str() {
                "hard" => QuotaKind::Hard,
                "soft" => QuotaKind::Soft,
                other => {
                    src.issue(
                        q.kind.span(),
                        format!("{qpath}.kind"),
                        format!("{other:?} is not one of hard, soft"),
                    );
                    continue;
                }
            };
            let limit = src.decimal(&q.limit, &format!("{qpath}.limit"));
            if limit.is_some_and(|l| l.is_zero()) {
                src.issue(
                    q.limit.span(),
                    format!("{qpath}.limit"),
                    "a quota limit must be above 0",
                );
                continue;
            }
            if let Some(limit) = limit {
                quotas.push(Quota {
                    meter: q.meter.get_ref().clone(),
                    limit,
                    kind,
                });
            }
        }
        let rate_limit = p.rate_limit.as_ref().and_then(|r| {
            let raw = r.get_ref();
            if raw.per_second == 0 || raw.burst == 0 {
                src.issue(
                    r.span(),
                    format!("{path}.rate_limit"),
                    "per_second and burst must both be at least 1",
                );
                return None;
            }
            Some(RateLimit {
                per_second: raw.per_second,
                burst: raw.burst,
            })
        });
        let (Some(currency), Some(period), Some(base_fee)) = (currency, period, base_fee) else {
            continue;
        };
        let mut plan = Plan {
            id: p.id.get_ref().clone(),
            name: p.name.clone().unwrap_or_else(|| p.id.get_ref().clone()),
            version: String::new(),
            currency,
            period,
            base_fee,
            tax,
            minimum_commitment,
            charges,
            quotas,
            rate_limit,
        };
        plan.version = short_hash(serde_json::to_string(&plan).unwrap_or_default().as_bytes());
        plans.push(plan);
    }
    plans
}

fn validate_period(src: &mut Source, sp: &Spanned<RawPeriod>, path: &str) -> Option<PeriodRule> {
    let raw = sp.get_ref();
    let day = raw.anchor_day.as_ref().map_or(1, |d| *d.get_ref());
    if !(1..=31).contains(&day) {
        src.issue(
            raw.anchor_day.as_ref().map_or(sp.span(), |d| d.span()),
            format!("{path}.period.anchor_day"),
            "must be 1–31 (29–31 fall back to the month's last day)",
        );
        return None;
    }
    match raw.every.get_ref().as_str() {
        "month" => {
            if let Some(m) = &raw.anchor_month {
                src.issue(
                    m.span(),
                    format!("{path}.period.anchor_month"),
                    "only yearly periods take an anchor month",
                );
                return None;
            }
            Some(PeriodRule::Month { anchor_day: day })
        }
        "year" => {
            let month = raw.anchor_month.as_ref().map_or(1, |m| *m.get_ref());
            if !(1..=12).contains(&month) {
                src.issue(
                    raw.anchor_month.as_ref().map_or(sp.span(), |m| m.span()),
                    format!("{path}.period.anchor_month"),
                    "must be 1–12",
                );
                return None;
            }
            Some(PeriodRule::Year {
                anchor_month: month,
                anchor_day: day,
            })
        }
        other => {
            src.issue(
                raw.every.span(),
                format!("{path}.period.every"),
                format!("{other:?} is not one of month, year"),
            );
            None
        }
    }
}

fn validate_model(src: &mut Source, c: &Spanned<RawCharge>, cpath: &str) -> Option<ChargeModel> {
    let r = c.get_ref();
    let need = |src: &mut Source, v: &Option<SNum>, key: &str| -> Option<Decimal> {
        match v {
            Some(n) => src.decimal(n, &format!("{cpath}.{key}")),
            None => {
                src.issue(
                    r.model.span(),
                    format!("{cpath}.{key}"),
                    format!("model {:?} needs {key}", r.model.get_ref()),
                );
                None
            }
        }
    };
    let model = r.model.get_ref().as_str();
    // Keys that belong to another model are mistakes, not silently ignored.
    let allowed: &[&str] = match model {
        "flat" => &["amount"],
        "per_unit" => &["unit_price"],
        "graduated" | "volume" => &["tiers"],
        "package" => &["size", "price"],
        other => {
            src.issue(
                r.model.span(),
                format!("{cpath}.model"),
                format!("{other:?} is not one of flat, per_unit, graduated, volume, package"),
            );
            return None;
        }
    };
    for (key, present) in [
        ("amount", r.amount.is_some()),
        ("unit_price", r.unit_price.is_some()),
        ("tiers", r.tiers.is_some()),
        ("size", r.size.is_some()),
        ("price", r.price.is_some()),
    ] {
        if present && !allowed.contains(&key) {
            src.issue(
                c.span(),
                format!("{cpath}.{key}"),
                format!("model {model:?} does not take {key}"),
            );
        }
    }
    match model {
        "flat" => Some(ChargeModel::Flat {
            amount: need(src, &r.amount, "amount")?,
        }),
        "per_unit" => Some(ChargeModel::PerUnit {
            unit_price: need(src, &r.unit_price, "unit_price")?,
        }),
        "package" => {
            let size = need(src, &r.size, "size")?;
            let price = need(src, &r.price, "price")?;
            if size.is_zero() {
                src.issue(
                    r.size.as_ref().map_or(c.span(), |s| s.span()),
                    format!("{cpath}.size"),
                    "must be above zero",
                );
                return None;
            }
            Some(ChargeModel::Package { size, price })
        }
        _ => {
            let Some(raw_tiers) = &r.tiers else {
                src.issue(
                    r.model.span(),
                    format!("{cpath}.tiers"),
                    format!("model {model:?} needs tiers"),
                );
                return None;
            };
            let tiers = validate_tiers(src, raw_tiers, cpath, c.span())?;
            Some(if model == "graduated" {
                ChargeModel::Graduated { tiers }
            } else {
                ChargeModel::Volume { tiers }
            })
        }
    }
}

fn validate_tiers(
    src: &mut Source,
    raw: &[RawTier],
    cpath: &str,
    span: Range<usize>,
) -> Option<Vec<Tier>> {
    if raw.is_empty() {
        src.issue(span, format!("{cpath}.tiers"), "needs at least one tier");
        return None;
    }
    let mut tiers = Vec::new();
    let mut previous = Decimal::ZERO;
    for (i, t) in raw.iter().enumerate() {
        let tpath = format!("{cpath}.tiers[{i}]");
        let last = i + 1 == raw.len();
        let up_to = match t.up_to.get_ref() {
            RawNumber::Str(s) if s == "inf" => {
                if !last {
                    src.issue(
                        t.up_to.span(),
                        format!("{tpath}.up_to"),
                        "only the last tier can be \"inf\"",
                    );
                    return None;
                }
                None
            }
            _ => {
                let b = src.decimal(&t.up_to, &format!("{tpath}.up_to"))?;
                if b <= previous {
                    src.issue(
                        t.up_to.span(),
                        format!("{tpath}.up_to"),
                        format!("must be above the previous tier's bound ({previous})"),
                    );
                    return None;
                }
                if last {
                    src.issue(
                        t.up_to.span(),
                        format!("{tpath}.up_to"),
                        "the last tier must be up_to = \"inf\", so every unit has a price",
                    );
                    return None;
                }
                previous = b;
                Some(b)
            }
        };
        let unit_price = src.decimal(&t.unit_price, &format!("{tpath}.unit_price"))?;
        tiers.push(Tier { up_to, unit_price });
    }
    Some(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[api]]
name = "weather"

[[api.versions]]
id = "v1"
status = "deprecated"
deprecated = 2026-10-01
sunset = 2027-03-31
successor = "v2"
live = "https://weather-v1.internal"
sandbox = "https://weather-sandbox.internal"

[[api.versions]]
id = "v2"
live = "${WEATHER_URL}/"
operations = { "GET /forecast/{city}" = { units = 1 }, "POST /bulk" = { units = 10 } }

[[meter]]
name = "calls"
aggregation = "count"
filter = { status_class = ["2xx", "4xx"] }

[[meter]]
name = "egress_gb"
aggregation = "sum"
field = "response_bytes"
scale = "1e-9"
group_by = ["api"]

[[plan]]
id = "growth-2026"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "49.00"
tax = { rate = "0.20", label = "VAT" }
minimum_commitment = "100.00"
charges = [
  { meter = "calls", model = "graduated", free = 10000, tiers = [
      { up_to = 100000, unit_price = "0.0010" }, { up_to = "inf", unit_price = "0.0006" } ] },
  { meter = "egress_gb", model = "per_unit", unit_price = "0.09" },
]
quotas = [{ meter = "calls", limit = 2000000, kind = "hard" }]
rate_limit = { per_second = 50, burst = 100 }
"#;

    fn vars(name: &str) -> Option<String> {
        (name == "WEATHER_URL").then(|| "http://127.0.0.1:9999".to_string())
    }

    fn parse(text: &str) -> Result<Catalog, CatalogError> {
        Catalog::parse("catalog.toml", text, &vars)
    }

    fn only_issue(text: &str) -> CatalogIssue {
        let err = parse(text).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        err.issues[0].clone()
    }

    const TOKENS: &str = r#"
[[meter]]
name = "llm_tokens"
event_type = "com.example.llm.completion"
aggregation = "sum"
value = "usage.tokens"
filter = { region = ["eu", "us"] }
group_by = ["model"]
"#;

    #[test]
    fn meters_over_usage_events_read_data_properties() {
        let c = parse(&format!("{GOOD}{TOKENS}")).unwrap();
        let m = c.meter("llm_tokens").unwrap();
        let sel = m.events.as_ref().unwrap();
        assert_eq!(sel.event_type, "com.example.llm.completion");
        assert_eq!(sel.value.as_deref(), Some("usage.tokens"));
        assert_eq!(sel.group_by, ["model"]);
        assert!(sel.filter["region"].contains("eu"));
        assert!(!m.quotable() && !m.rollup_compatible());
        // The call type names the meters of call events, as leaving it out does.
        let calls = GOOD.replace(
            "name = \"calls\"\naggregation",
            "name = \"calls\"\nevent_type = \"peage.call.v1\"\naggregation",
        );
        assert!(parse(&calls)
            .unwrap()
            .meter("calls")
            .unwrap()
            .events
            .is_none());
    }

    #[test]
    fn meters_over_usage_events_refuse_call_settings_a_missing_value_and_quotas() {
        let i = only_issue(&format!(
            "{GOOD}{}",
            TOKENS.replace(
                "value = \"usage.tokens\"",
                "value = \"usage.tokens\"\nfield = \"units\""
            )
        ));
        assert_eq!(i.field, "meter[llm_tokens].field");
        let i = only_issue(&format!(
            "{GOOD}{}",
            TOKENS.replace("value = \"usage.tokens\"\n", "")
        ));
        assert_eq!(i.field, "meter[llm_tokens].value");
        let i = only_issue(&format!(
            "{GOOD}{}",
            TOKENS.replace("usage.tokens", "usage..tokens")
        ));
        assert_eq!(i.field, "meter[llm_tokens].value");
        let quota = format!("{GOOD}{TOKENS}").replace(
            "quotas = [{ meter = \"calls\"",
            "quotas = [{ meter = \"llm_tokens\"",
        );
        let i = only_issue(&quota);
        assert!(i.message.contains("reads usage events"), "{}", i.message);
        let i = only_issue(&GOOD.replace(
            "filter = { status_class",
            "value = \"tokens\"\nfilter = { status_class",
        ));
        assert_eq!(i.field, "meter[calls].value");
    }

    #[test]
    fn the_product_brief_example_loads() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.apis[0].versions[1].live, "http://127.0.0.1:9999");
        assert_eq!(
            c.apis[0].versions[0].sunset,
            NaiveDate::from_ymd_opt(2027, 3, 31)
        );
        let op = c
            .api_version("weather", "v2")
            .unwrap()
            .operation_for("GET", "/forecast/paris")
            .unwrap();
        assert_eq!(op.name, "GET /forecast/{city}");
        assert!(c
            .api_version("weather", "v2")
            .unwrap()
            .operation_for("GET", "/forecast/paris/x")
            .is_none());
        let plan = c.plan("growth-2026").unwrap();
        assert_eq!(plan.charges.len(), 2);
        assert_eq!(plan.charges[0].free, Decimal::from(10000));
        assert_eq!(
            c.meter("egress_gb").unwrap().scale,
            Some(Decimal::from_scientific("1e-9").unwrap())
        );
    }

    #[test]
    fn any_change_gives_a_new_version() {
        let a = parse(GOOD).unwrap();
        let b = parse(&GOOD.replace("\"49.00\"", "\"59.00\"")).unwrap();
        assert_ne!(a.version, b.version);
        assert_ne!(a.plans[0].version, b.plans[0].version);
        assert_eq!(a.version, parse(GOOD).unwrap().version);
    }

    #[test]
    fn unknown_meter_in_a_charge_names_file_line_and_field() {
        let i = only_issue(&GOOD.replace("{ meter = \"egress_gb\"", "{ meter = \"egress_tb\""));
        assert_eq!(i.file, "catalog.toml");
        assert_eq!(i.line, 41);
        assert_eq!(i.field, "plan[growth-2026].charges[1].meter");
        assert!(i.message.contains("egress_tb"), "{i}");
        assert!(i.to_string().starts_with("catalog.toml:41:"), "{i}");
    }

    #[test]
    fn a_float_price_is_refused_with_its_field() {
        let i = only_issue(&GOOD.replace("unit_price = \"0.09\"", "unit_price = 0.09"));
        assert_eq!(i.line, 41);
        assert_eq!(i.field, "plan[growth-2026].charges[1].unit_price");
        assert!(i.message.contains("float"), "{i}");
    }

    #[test]
    fn a_price_above_the_maximum_amount_is_refused_with_its_field() {
        let i = only_issue(&GOOD.replace(
            "unit_price = \"0.09\"",
            "unit_price = \"79228162514264337593543950335\"",
        ));
        assert_eq!(i.field, "plan[growth-2026].charges[1].unit_price");
        assert!(i.message.contains("at most"), "{i}");
        assert!(
            only_issue(&GOOD.replace("base_fee = \"49.00\"", "base_fee = \"1e16\""))
                .message
                .contains("10^15")
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let i = only_issue(&GOOD.replace("base_fee = \"49.00\"", "base_fees = \"49.00\""));
        assert_eq!(i.line, 35);
        assert_eq!(i.field, "base_fees");
        assert!(i.message.contains("unknown field"), "{i}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let i = only_issue(&GOOD.replace("burst = 100", "burst = \"lots\""));
        assert_eq!(i.line, 44);
        assert_eq!(i.field, "burst");
    }

    #[test]
    fn quotas_need_an_additive_meter_and_a_positive_limit() {
        let max_meter = GOOD.replace(
            "aggregation = \"sum\"\nfield = \"response_bytes\"",
            "aggregation = \"max\"\nfield = \"response_bytes\"",
        );
        let i = only_issue(&max_meter.replace(
            "quotas = [{ meter = \"calls\"",
            "quotas = [{ meter = \"egress_gb\"",
        ));
        assert_eq!(i.field, "plan[growth-2026].quotas[0].meter");
        assert!(i.message.contains("only count and sum"), "{i}");
        let i = only_issue(&GOOD.replace("limit = 2000000", "limit = 0"));
        assert_eq!(i.field, "plan[growth-2026].quotas[0].limit");
        let twice = GOOD.replace(
            "kind = \"hard\" }]",
            "kind = \"hard\" }, { meter = \"calls\", limit = 5, kind = \"soft\" }]",
        );
        assert!(only_issue(&twice)
            .message
            .contains("at most one quota per meter"));
        let i = only_issue(&GOOD.replace("per_second = 50", "per_second = 0"));
        assert_eq!(
            (i.line, i.field.as_str()),
            (44, "plan[growth-2026].rate_limit")
        );
    }

    #[test]
    fn meters_may_count_refused_calls_but_quotas_may_not() {
        let only = GOOD.replace(
            "name = \"calls\"\naggregation = \"count\"",
            "name = \"calls\"\naggregation = \"count\"\nrefusals = \"only\"",
        );
        let i = only_issue(&only);
        assert_eq!(i.field, "plan[growth-2026].quotas[0].meter");
        assert!(i.message.contains("counts refused calls"), "{i}");
        let bad = GOOD.replace(
            "name = \"calls\"\naggregation = \"count\"",
            "name = \"calls\"\naggregation = \"count\"\nrefusals = \"sometimes\"",
        );
        let i = only_issue(&bad);
        assert_eq!(i.field, "meter[calls].refusals");
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.meter("calls").unwrap().refusals,
            crate::meter::Refusals::Exclude
        );
    }

    const PROTOCOLS: &str = r#"
[[api]]
name = "graph"
[[api.versions]]
id = "v1"
protocol = "graphql"
live = "http://127.0.0.1:1"
operations = { GetForecast = { units = 3 } }

[[api]]
name = "greet"
[[api.versions]]
id = "v1"
protocol = "grpc"
grpc_services = ["greet.v1.Greeter"]
live = "http://127.0.0.1:2"
operations = { "/greet.v1.Greeter/Chat" = { units = 2 } }
"#;

    #[test]
    fn graphql_and_grpc_versions_name_operations_their_own_way() {
        let c = parse(PROTOCOLS).unwrap();
        let g = c.api_version("graph", "v1").unwrap();
        assert_eq!(g.protocol, Protocol::Graphql);
        assert_eq!(
            g.operation_named("GetForecast").unwrap().units,
            Decimal::from(3)
        );
        let (api, v) = c.grpc_service("greet.v1.Greeter").unwrap();
        assert_eq!((api.name.as_str(), v.id.as_str()), ("greet", "v1"));
        assert_eq!(v.protocol, Protocol::Grpc);
        assert!(v.operation_named("/greet.v1.Greeter/Chat").is_some());
        assert!(c.grpc_service("greet.v1.Other").is_none());

        let i = only_issue(&PROTOCOLS.replace("GetForecast =", "\"GET /x\" ="));
        assert_eq!(i.field, "api[graph].versions[v1].operations[\"GET /x\"]");
        let i = only_issue(&PROTOCOLS.replace("\"/greet.v1.Greeter/Chat\"", "\"/other.Svc/Chat\""));
        assert!(
            i.message.contains("not in this version's grpc_services"),
            "{i}"
        );
        let i = only_issue(
            &PROTOCOLS
                .replace("grpc_services = [\"greet.v1.Greeter\"]\n", "")
                .replace(
                    "operations = { \"/greet.v1.Greeter/Chat\" = { units = 2 } }",
                    "",
                ),
        );
        assert_eq!(i.field, "api[greet].versions[v1].grpc_services");
        let i = only_issue(&PROTOCOLS.replace("protocol = \"graphql\"", "protocol = \"soap\""));
        assert!(i.message.contains("http, graphql, grpc"), "{i}");
        let twice = PROTOCOLS.replace(
            "[[api]]\nname = \"greet\"",
            "[[api]]\nname = \"greet\"\n[[api.versions]]\nid = \"v0\"\nprotocol = \"grpc\"\ngrpc_services = [\"greet.v1.Greeter\"]\nlive = \"http://127.0.0.1:3\"",
        );
        assert!(only_issue(&twice).message.contains("already served"));
    }

    #[test]
    fn broken_toml_syntax_gives_a_position() {
        let i = only_issue("[[api]]\nname = \"x\nversions = []\n");
        assert_eq!(i.line, 2);
    }

    #[test]
    fn tiers_must_increase_and_end_at_inf() {
        let i = only_issue(&GOOD.replace("up_to = \"inf\"", "up_to = 50000"));
        assert_eq!(i.field, "plan[growth-2026].charges[0].tiers[1].up_to");
        assert!(i.message.contains("previous"), "{i}");
    }

    #[test]
    fn unset_variable_in_an_upstream_is_an_error() {
        let i = Catalog::parse("c.toml", GOOD, &|_| None)
            .unwrap_err()
            .issues[0]
            .clone();
        assert_eq!(i.field, "api[weather].versions[v2].live");
        assert!(i.message.contains("WEATHER_URL"), "{i}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("currency = \"EUR\"", "currency = \"EUX\"")
            .replace("aggregation = \"count\"", "aggregation = \"total\"");
        let err = parse(&bad).unwrap_err();
        let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
        assert!(fields.contains(&"meter[calls].aggregation"), "{err}");
        assert!(fields.contains(&"plan[growth-2026].currency"), "{err}");
    }

    #[test]
    fn deprecated_needs_its_dates_in_order() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.apis[0].versions[0].deprecated,
            NaiveDate::from_ymd_opt(2026, 10, 1)
        );
        let err = parse(&GOOD.replace("deprecated = 2026-10-01\n", "")).unwrap_err();
        assert!(
            err.issues
                .iter()
                .any(|i| i.field == "api[weather].versions[v1].deprecated"),
            "{err}"
        );
        let err =
            parse(&GOOD.replace("deprecated = 2026-10-01", "deprecated = 2027-04-01")).unwrap_err();
        assert!(err.to_string().contains("after its sunset"), "{err}");
    }

    #[test]
    fn deprecated_needs_a_sunset_and_successor_must_exist() {
        let err = parse(
            &GOOD
                .replace("sunset = 2027-03-31\n", "")
                .replace("successor = \"v2\"", "successor = \"v3\""),
        )
        .unwrap_err();
        let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "api[weather].versions[v1].sunset",
                "api[weather].versions[v1].successor"
            ],
            "{err}"
        );
    }

    #[test]
    fn upstream_variables_may_carry_a_default() {
        let vars = |n: &str| (n == "SET").then(|| "http://set".to_string());
        assert_eq!(
            interpolate("${SET:-http://d}/x", &vars).unwrap(),
            "http://set/x"
        );
        assert_eq!(
            interpolate("${UNSET:-http://127.0.0.1:8081}", &vars).unwrap(),
            "http://127.0.0.1:8081"
        );
        assert!(interpolate("${UNSET}", &vars)
            .unwrap_err()
            .contains("UNSET is not set"));
    }
}
