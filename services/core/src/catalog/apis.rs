//! `[[api]]`: names, versions, lifecycle dates, upstreams, operations and gRPC services.

use std::collections::{BTreeSet, HashSet};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::source::{parse_enum, Source};

pub(super) fn validate_apis(
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
                        src.issue(op.span(), opath.clone(), why.to_string());
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
                cors: v
                    .cors
                    .as_ref()
                    .and_then(|c| super::cors::validate_cors(src, c, &vpath)),
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

/// Why an operation's name does not fit its protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum OperationNameError {
    #[error("operation must read \"METHOD /path/{{param}}\"")]
    Http,
    #[error("a graphql operation is an operation name such as GetForecast")]
    Graphql,
    #[error("a grpc operation reads \"/pkg.Service/Method\"")]
    Grpc,
    #[error("{0:?} is not in this version's grpc_services")]
    UnknownGrpcService(String),
}

/// An operation's key by protocol: `METHOD /route/{param}` (HTTP), an operation name
/// (GraphQL), `/pkg.Service/Method` of one of the version's services (gRPC).
fn operation_key(
    name: &str,
    protocol: Protocol,
    grpc_services: &[String],
) -> Result<(String, Vec<String>), OperationNameError> {
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
                .ok_or(OperationNameError::Http)?;
            let segments = route
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Ok((method.to_ascii_uppercase(), segments))
        }
        Protocol::Graphql if graphql_name(name) => Ok(("POST".into(), Vec::new())),
        Protocol::Graphql => Err(OperationNameError::Graphql),
        Protocol::Grpc => {
            let service = name
                .strip_prefix('/')
                .and_then(|p| p.rsplit_once('/'))
                .filter(|(_, m)| graphql_name(m))
                .map(|(s, _)| s)
                .ok_or(OperationNameError::Grpc)?;
            if !grpc_services.iter().any(|s| s == service) {
                return Err(OperationNameError::UnknownGrpcService(service.to_string()));
            }
            Ok(("POST".into(), Vec::new()))
        }
    }
}
