//! The validated catalog: what the gateway routes by and billing prices with.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::Meter;
use crate::pricing::Plan;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Which browser origins may call the version; none: preflights are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<super::cors::CorsPolicy>,
}

/// What the gateway reads from a call to name its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
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
    pub(super) segments: Vec<String>,
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
