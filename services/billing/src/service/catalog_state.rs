//! What billing keeps about catalog reloads: where the catalog is read from, who else is told
//! of a new one, and what the last reload did (see `reload`).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::catalog::CatalogIssue;
use peage_core::Catalog;
use serde::Serialize;
use utoipa::ToSchema;

/// OpenAPI documents of API versions, keyed by (api, version).
pub type ApiDocs = std::collections::HashMap<(String, String), serde_json::Value>;

/// A catalog read and validated whole, with the OpenAPI documents it names and its text (what
/// the other roles parse).
pub struct Sourced {
    pub catalog: Catalog,
    pub docs: ApiDocs,
    pub text: String,
}

/// Where the catalog of record is read from (the file, in embedded mode and on billing).
#[async_trait]
pub trait CatalogSource: Send + Sync + 'static {
    /// The file's catalog, validated whole; or every problem.
    async fn read(&self) -> Result<Sourced, Vec<CatalogIssue>>;
    /// A catalog text another billing instance accepted, validated here as the file would be
    /// (this process's variables and documents).
    async fn parse(&self, text: &str) -> Result<Sourced, Vec<CatalogIssue>>;
}

/// Told of each catalog put in force (the embedded gateway's routes and limits).
pub type CatalogListener = Arc<dyn Fn(Arc<Catalog>) + Send + Sync>;

/// One problem of a refused catalog: where it is and what is wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssueView {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The offending key's path: `plan[growth].charges[0].unit_price`.
    pub field: String,
    pub message: String,
}

impl From<&CatalogIssue> for IssueView {
    fn from(i: &CatalogIssue) -> IssueView {
        IssueView {
            file: i.file.clone(),
            line: i.line,
            column: i.column,
            field: i.field.clone(),
            message: i.message.clone(),
        }
    }
}

/// The last reload, as `GET /v1/catalog` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReloadRecord {
    pub at: DateTime<Utc>,
    /// What asked for it: `file changed`, `SIGHUP`, `POST /v1/catalog/reload`…
    pub trigger: String,
    /// `applied`, `unchanged` or `refused`.
    pub outcome: String,
    /// The version in force after it.
    pub version: String,
    /// Why a refused catalog was refused.
    pub issues: Vec<IssueView>,
}

/// The catalog in force and how it got there.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CatalogStatus {
    /// The catalog of record in the billing store (distributed mode: what every role follows).
    pub of_record: Option<String>,
    /// What each role instance last said it runs (`peage up` is one `billing` instance).
    pub roles: Vec<peage_billing_store::RoleCatalog>,
    pub version: String,
    /// When this version was put in force (the start, or its reload).
    pub since: DateTime<Utc>,
    pub apis: usize,
    pub meters: usize,
    pub plans: usize,
    pub last_reload: Option<ReloadRecord>,
}

/// Billing's reload machinery: the source, the listeners, the record.
#[derive(Default)]
pub(crate) struct Reloads {
    pub source: std::sync::OnceLock<Arc<dyn CatalogSource>>,
    pub listeners: Mutex<Vec<CatalogListener>>,
    /// When the version in force was put in force, and the last reload.
    pub record: Mutex<(Option<DateTime<Utc>>, Option<ReloadRecord>)>,
    /// One reload at a time: two triggers at once read and apply in turn.
    pub turn: tokio::sync::Mutex<()>,
    /// This instance, as it reports itself and signs what it accepts.
    pub instance: Mutex<String>,
}
