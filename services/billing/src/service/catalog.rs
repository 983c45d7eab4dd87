//! The catalog as loaded: its plans, and its APIs as the caller may see them (partners never
//! see the upstream addresses behind them), with each version's OpenAPI document.

use peage_core::pricing::Plan;
use serde::Serialize;

use super::billing::Billing;
use super::error::ServiceError;

/// The plans of the loaded catalog.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlansView {
    pub catalog_version: String,
    pub plans: Vec<Plan>,
}

/// The APIs of the loaded catalog.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApisView {
    pub catalog_version: String,
    /// The gateway's base URL: a version is called at `{gateway_url}/{api}/{version}/…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    pub apis: Vec<ApiView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiView {
    pub name: String,
    pub description: Option<String>,
    pub versions: Vec<ApiVersionView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiVersionView {
    pub id: String,
    pub status: peage_core::catalog::VersionStatus,
    pub deprecated: Option<chrono::NaiveDate>,
    pub sunset: Option<chrono::NaiveDate>,
    pub successor: Option<String>,
    pub protocol: peage_core::catalog::Protocol,
    /// The operations' names: `GET /forecast/{city}`, a GraphQL operation, a gRPC method.
    pub operations: Vec<String>,
    /// Whether `GET /v1/apis/{api}/versions/{version}/openapi` has a document.
    pub has_openapi: bool,
    /// For a partner: whether their plan grants the version (calls to it are refused with 403
    /// `not-entitled` otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub included: Option<bool>,
    /// For a partner whose plan grants only some operations of the version: those.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub included_operations: Option<Vec<String>>,
    /// The upstream base URL (staff only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// The sandbox upstream base URL, if any (staff only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Option<String>>,
}

impl Billing {
    pub fn plans(&self) -> PlansView {
        let catalog = self.catalog();
        PlansView {
            catalog_version: catalog.version.clone(),
            plans: catalog.plans.clone(),
        }
    }

    /// The catalog's APIs; `staff` adds where each version's upstreams are, and `plan` (a
    /// partner's) what it includes.
    pub fn apis(&self, staff: bool, plan: Option<&str>) -> Result<ApisView, ServiceError> {
        use peage_core::pricing::Granted;
        let catalog = self.catalog();
        let plan = plan.and_then(|p| catalog.plan(p));
        let docs = self
            .api_docs
            .read()
            .map_err(|_| ServiceError::Corrupt("api docs lock".into()))?;
        let apis = catalog
            .apis
            .iter()
            .map(|a| ApiView {
                name: a.name.clone(),
                description: a.description.clone(),
                versions: a
                    .versions
                    .iter()
                    .map(|v| {
                        let granted = plan.map(|p| p.granted(&a.name, &v.id));
                        ApiVersionView {
                            id: v.id.clone(),
                            status: v.status,
                            deprecated: v.deprecated,
                            sunset: v.sunset,
                            successor: v.successor.clone(),
                            protocol: v.protocol,
                            operations: v.operations.iter().map(|o| o.name.clone()).collect(),
                            has_openapi: docs.contains_key(&(a.name.clone(), v.id.clone())),
                            included: granted.map(|g| g != Granted::No),
                            included_operations: match granted {
                                Some(Granted::Operations(ops)) => Some(ops.to_vec()),
                                _ => None,
                            },
                            live: staff.then(|| v.live.clone()),
                            sandbox: staff.then(|| v.sandbox.clone()),
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(ApisView {
            catalog_version: catalog.version.clone(),
            gateway_url: self.gateway_url.get().cloned(),
            apis,
        })
    }

    /// The OpenAPI document of one API version, as JSON.
    pub fn api_document(
        &self,
        api: &str,
        version: &str,
    ) -> Result<serde_json::Value, ServiceError> {
        let docs = self
            .api_docs
            .read()
            .map_err(|_| ServiceError::Corrupt("api docs lock".into()))?;
        docs.get(&(api.to_string(), version.to_string()))
            .cloned()
            .ok_or_else(|| {
                ServiceError::NotFound(format!("no OpenAPI document for {api} {version}"))
            })
    }
}
