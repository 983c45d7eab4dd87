//! `peage catalog validate FILE` and `peage catalog diff OLD NEW`: the catalog checked as
//! start-up checks it, and what a change to it changes, before it ships.

use std::path::{Path, PathBuf};

use anyhow::Context;
use peage_core::catalog::{diff, CatalogError, CatalogIssue, Difference, ItemChange, Section};
use peage_core::Catalog;
use serde::Serialize;

use crate::invoice_cli::Target;

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Check a catalog as start-up does (every key, reference and number, and the OpenAPI
    /// documents it names): exit 0 when it loads, 1 with every problem as file:line:column.
    Validate {
        file: PathBuf,
        /// `NAME=VALUE` for a `${NAME}` of the catalog, as the environment would give it at
        /// start-up (repeatable; the environment is read too).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// `text` (default) or `json` (for CI: `{"valid", "version", "issues": [...]}`).
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
    /// What changes from OLD to NEW: APIs, meters and plans added, removed or changed, down to
    /// the field. With --data-dir or --config, the partners each changed plan touches.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// `NAME=VALUE` for a `${NAME}` of the catalogs (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
        /// An embedded data directory whose partners to list per changed plan.
        #[arg(long, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// A distributed setup's configuration, likewise (its PostgreSQL).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What `validate --format json` prints.
#[derive(Serialize)]
struct Validation {
    valid: bool,
    file: String,
    /// The catalog's version (a hash of the file) when it loads.
    version: Option<String>,
    apis: usize,
    meters: usize,
    plans: usize,
    issues: Vec<Issue>,
}

#[derive(Serialize)]
struct Issue {
    file: String,
    line: usize,
    column: usize,
    field: String,
    message: String,
}

impl From<CatalogIssue> for Issue {
    fn from(i: CatalogIssue) -> Issue {
        Issue {
            file: i.file,
            line: i.line,
            column: i.column,
            field: i.field,
            message: i.message,
        }
    }
}

/// The catalog at `path` as start-up loads it (the environment resolves `${NAME}`), with the
/// OpenAPI documents it names: the catalog, or every problem found.
fn check(path: &Path, given: &[String]) -> anyhow::Result<Result<Catalog, Vec<Issue>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the catalog {}", path.display()))?;
    let file = path.display().to_string();
    let mut set = std::collections::HashMap::new();
    for v in given {
        let (name, value) = v
            .split_once('=')
            .with_context(|| format!("--var {v:?}: write NAME=VALUE"))?;
        set.insert(name.to_string(), value.to_string());
    }
    let vars = |name: &str| set.get(name).cloned().or_else(|| std::env::var(name).ok());
    match Catalog::parse(&file, &text, &vars) {
        Err(CatalogError { issues }) => Ok(Err(issues.into_iter().map(Issue::from).collect())),
        Ok(catalog) => match crate::up::api_docs(&catalog, path) {
            Ok(_) => Ok(Ok(catalog)),
            // A document the catalog names that cannot be read: start-up stops with it too.
            Err(e) => Ok(Err(vec![Issue {
                file,
                line: 0,
                column: 0,
                field: "openapi".into(),
                message: format!("{e:#}"),
            }])),
        },
    }
}

/// What `diff --format json` prints.
#[derive(Serialize)]
struct DiffReport {
    old_version: String,
    new_version: String,
    changes: Vec<Difference>,
    /// Partners on a plan that changed or was removed, by plan (with --data-dir or --config).
    partners: Option<Vec<Touched>>,
}

#[derive(Serialize)]
struct Touched {
    plan: String,
    partners: Vec<TouchedPartner>,
}

#[derive(Serialize)]
struct TouchedPartner {
    id: String,
    name: String,
}

pub async fn run(command: CatalogCommand) -> anyhow::Result<bool> {
    match command {
        CatalogCommand::Validate { file, vars, format } => {
            let result = check(&file, &vars)?;
            let valid = result.is_ok();
            if format == "json" {
                let (version, apis, meters, plans, issues) = match result {
                    Ok(c) => (
                        Some(c.version),
                        c.apis.len(),
                        c.meters.len(),
                        c.plans.len(),
                        vec![],
                    ),
                    Err(issues) => (None, 0, 0, 0, issues),
                };
                let report = Validation {
                    valid,
                    file: file.display().to_string(),
                    version,
                    apis,
                    meters,
                    plans,
                    issues,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                match result {
                    Ok(c) => println!(
                        "{}: valid, version {} ({} APIs, {} meters, {} plans)",
                        file.display(),
                        c.version,
                        c.apis.len(),
                        c.meters.len(),
                        c.plans.len()
                    ),
                    Err(issues) => {
                        eprintln!("{}: invalid catalog", file.display());
                        for i in issues {
                            eprintln!(
                                "  {}:{}:{}: {}: {}",
                                i.file, i.line, i.column, i.field, i.message
                            );
                        }
                    }
                }
            }
            Ok(valid)
        }
        CatalogCommand::Diff {
            old,
            new,
            vars,
            format,
            data_dir,
            config,
        } => {
            let load = |path: &Path| -> anyhow::Result<Catalog> {
                check(path, &vars)?.map_err(|issues| {
                    let lines: Vec<String> = issues
                        .iter()
                        .map(|i| {
                            format!(
                                "  {}:{}:{}: {}: {}",
                                i.file, i.line, i.column, i.field, i.message
                            )
                        })
                        .collect();
                    anyhow::anyhow!(
                        "{} is not a valid catalog:\n{}",
                        path.display(),
                        lines.join("\n")
                    )
                })
            };
            let (before, after) = (load(&old)?, load(&new)?);
            let changes = diff(&before, &after);
            let touched = if data_dir.is_some() || config.is_some() {
                let target = Target {
                    data_dir,
                    config,
                    catalog: None,
                };
                Some(touched(&target, &changes).await?)
            } else {
                None
            };
            if format == "json" {
                let report = DiffReport {
                    old_version: before.version,
                    new_version: after.version,
                    changes,
                    partners: touched,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("catalog {} → {}", before.version, after.version);
                if changes.is_empty() {
                    println!("no change to APIs, meters or plans");
                }
                for c in &changes {
                    println!("{c}");
                }
                for t in touched.iter().flatten() {
                    println!(
                        "partners on plan {} ({}): {}",
                        t.plan,
                        t.partners.len(),
                        t.partners
                            .iter()
                            .map(|p| format!("{} ({})", p.name, p.id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Ok(true)
        }
    }
}

/// The partners whose current plan is one that changed or was removed.
async fn touched(target: &Target, changes: &[Difference]) -> anyhow::Result<Vec<Touched>> {
    let store = target.billing_store().await?;
    let all = store.partners().await?;
    Ok(changes
        .iter()
        .filter(|c| c.section == Section::Plan && c.change != ItemChange::Added)
        .map(|c| Touched {
            plan: c.name.clone(),
            partners: all
                .iter()
                .filter(|p| p.subscription.plan_id == c.name)
                .map(|p| TouchedPartner {
                    id: p.id.to_string(),
                    name: p.name.clone(),
                })
                .collect(),
        })
        .collect())
}
