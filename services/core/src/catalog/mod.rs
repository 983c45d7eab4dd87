//! The catalog (`catalog.toml`): APIs, meters and plans, "pricing as code".
//!
//! Loading is strict: unknown keys, wrong types, dangling references, floats where money is
//! expected and unordered tiers are all refused, with an error naming the file, line, column and
//! field, so a bad deploy fails at start-up instead of mis-billing. docs/catalog.md lists every key.
//!
//! The module is laid out as the loading goes: [`raw`] is the TOML as written (serde forms that
//! keep source spans), [`source`] turns spans into issues (file, line, column, field) and holds
//! the checks every section shares, and one validator per section ([`apis`], [`meters`],
//! [`plans`]) turns raw forms into the model ([`model`]).

mod apis;
pub mod cors;
pub mod diff;
mod live;
mod meters;
mod model;
mod plans;
mod raw;
mod source;
#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256};

pub use diff::{diff, Difference, FieldChange, ItemChange, Section};
pub use live::LiveCatalog;
pub use model::*;
pub use source::{CatalogError, CatalogIssue};

use apis::validate_apis;
use meters::validate_meters;
use plans::validate_plans;
use raw::RawCatalog;
use source::Source;

pub(super) fn short_hash(bytes: &[u8]) -> String {
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
        let plans = validate_plans(&mut src, &raw.plan, &meters, &apis);
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
