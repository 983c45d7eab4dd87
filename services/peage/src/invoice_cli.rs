//! `peage invoice run` and `peage invoice export`: finance's batch work, on an embedded data
//! directory (`--data-dir`) or a distributed setup (`--config`), through the same engine the
//! control API uses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use peage_billing::invoicing::{Invoicing, RunSummary};
use peage_billing_store::{BillingStore, InvoiceFilter, SqliteBillingStore};
use peage_core::{InvoiceRecord, InvoiceStatus, PeriodLabel};
use peage_usage_store::SqliteUsageStore;

use crate::up::load_catalog;

/// Where the billing state and usage are.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// An embedded data directory (what `peage up` uses).
    #[arg(long, env = "PEAGE_DATA_DIR", conflicts_with = "config")]
    pub data_dir: Option<PathBuf>,
    /// A distributed setup's configuration (PostgreSQL + ClickHouse).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The catalog, for an embedded data directory. Default: `<data-dir>/catalog.toml`.
    #[arg(long, env = "PEAGE_CATALOG")]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum InvoiceCommand {
    /// Compute (or recompute) the drafts of every partner whose billing period starts in the
    /// month, idempotently; finalized invoices are left as they are.
    Run {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
        #[command(flatten)]
        target: Target,
    },
    /// Write the month's invoices as CSV or JSON (to stdout or --out), or PDF (one file per
    /// invoice under --out).
    Export {
        #[arg(long)]
        period: String,
        #[arg(long, value_parser = ["csv", "json", "pdf"])]
        format: String,
        /// Only invoices in this state (draft, finalized, void).
        #[arg(long)]
        status: Option<String>,
        /// A directory: one file per invoice for PDF, `invoices-<period>.<ext>` otherwise.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) async fn invoicing(target: &Target) -> anyhow::Result<Invoicing> {
    if let Some(config) = &target.config {
        let config = crate::config::load(config, std::env::vars())?;
        let catalog = Arc::new(load_catalog(&config.catalog.path, None)?);
        let store: Arc<dyn BillingStore> = Arc::new(crate::roles::postgres(&config).await?);
        let usage = Arc::new(crate::roles::clickhouse(&config).await?);
        return Ok(Invoicing {
            catalog,
            store,
            usage,
            issuer: config.billing.issuer()?,
        });
    }
    let Some(dir) = &target.data_dir else {
        bail!("say where the data is: --data-dir DIR (embedded) or --config FILE (distributed)");
    };
    if !dir.join("billing.db").exists() {
        bail!(
            "{} has no billing.db: is it a `peage up` data directory?",
            dir.display()
        );
    }
    let catalog_path = target
        .catalog
        .clone()
        .unwrap_or_else(|| dir.join("catalog.toml"));
    // Upstream URLs do not matter to billing; the demo's placeholder gets a harmless value.
    let catalog = Arc::new(load_catalog(&catalog_path, Some("http://127.0.0.1:9"))?);
    let store: Arc<dyn BillingStore> = Arc::new(
        SqliteBillingStore::open(&dir.join("billing.db"))
            .await
            .context("opening billing.db")?,
    );
    let usage = Arc::new(
        SqliteUsageStore::open(&dir.join("usage.db"))
            .await
            .context("opening usage.db")?,
    );
    Ok(Invoicing {
        catalog,
        store,
        usage,
        issuer: crate::config::BillingSection::from_env(std::env::vars())?.issuer()?,
    })
}

fn label(period: &str) -> anyhow::Result<PeriodLabel> {
    period.parse().map_err(|e: String| anyhow::anyhow!(e))
}

fn print_summary(s: &RunSummary) {
    println!("Invoice run for {}:", s.period);
    println!(
        "  partners {} · not due {} · created {} · updated {} · unchanged {} · already finalized {}",
        s.partners, s.not_due, s.created, s.updated, s.unchanged, s.already_finalized
    );
    for (currency, total) in &s.totals {
        println!("  amount due {total} {currency}");
    }
    for e in &s.errors {
        println!("  FAILED {}: {}", e.partner_id, e.error);
    }
}

pub async fn run(command: InvoiceCommand) -> anyhow::Result<()> {
    match command {
        InvoiceCommand::Run { period, target } => {
            let label = label(&period)?;
            let engine = invoicing(&target).await?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {bar:40} {pos}/{len} partners · {per_sec} · eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let progress = {
                let bar = bar.clone();
                move |done: usize, total: usize| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            };
            let summary = engine
                .run(label, Utc::now(), &progress)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            bar.finish_and_clear();
            print_summary(&summary);
            if !summary.errors.is_empty() {
                bail!("{} partner(s) could not be invoiced", summary.errors.len());
            }
            Ok(())
        }
        InvoiceCommand::Export {
            period,
            format,
            status,
            out,
            target,
        } => {
            let label = label(&period)?;
            let status = status
                .map(|s| {
                    InvoiceStatus::parse(&s).ok_or_else(|| {
                        anyhow::anyhow!("--status must be draft, finalized or void, not {s:?}")
                    })
                })
                .transpose()?;
            let engine = invoicing(&target).await?;
            let records = engine
                .store
                .invoices(&InvoiceFilter {
                    period_label: Some(label.to_string()),
                    status,
                    partner_id: None,
                })
                .await?;
            export(&engine, &records, &format, out.as_deref(), label).await
        }
    }
}

async fn export(
    engine: &Invoicing,
    records: &[InvoiceRecord],
    format: &str,
    out: Option<&Path>,
    label: PeriodLabel,
) -> anyhow::Result<()> {
    let write_one = |name: String, bytes: &[u8]| -> anyhow::Result<()> {
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(name);
                std::fs::write(&path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
                Ok(())
            }
            None => Ok(std::io::stdout().write_all(bytes)?),
        }
    };
    match format {
        "csv" => write_one(
            format!("invoices-{label}.csv"),
            InvoiceRecord::to_csv(records).as_bytes(),
        ),
        "json" => {
            let mut json = serde_json::to_vec_pretty(&serde_json::json!({ "invoices": records }))?;
            json.push(b'\n');
            write_one(format!("invoices-{label}.json"), &json)
        }
        "pdf" => {
            let Some(_) = out else {
                bail!("PDF export writes one file per invoice: add --out DIR");
            };
            let partners = engine.store.partners().await?;
            for r in records {
                let name = partners
                    .iter()
                    .find(|p| p.id == r.partner_id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let pdf = peage_billing::pdf::render(r, &name, &engine.issuer);
                let file = format!("{}.pdf", r.number.clone().unwrap_or_else(|| r.id.clone()));
                write_one(file, &pdf)?;
            }
            eprintln!("{} invoice(s) exported", records.len());
            Ok(())
        }
        other => bail!("--format must be csv, json or pdf, not {other:?}"),
    }
}

/// `peage sign-in-link`: a one-time dashboard sign-in link, for a partner or for finance.
#[derive(Debug, clap::Args)]
pub struct SignInLinkCommand {
    /// The partner the link signs in as.
    #[arg(long, conflicts_with = "finance", required_unless_present = "finance")]
    pub partner: Option<String>,
    /// A finance session (every partner, invoices to review and finalize).
    #[arg(long)]
    pub finance: bool,
    #[command(flatten)]
    pub target: Target,
}

pub async fn sign_in_link(c: SignInLinkCommand) -> anyhow::Result<()> {
    let store = invoicing(&c.target).await?.store;
    let role = match c.partner {
        Some(partner_id) => peage_billing_store::DashboardRole::Partner { partner_id },
        None => peage_billing_store::DashboardRole::Finance,
    };
    let path = peage_billing::auth::sign_in_link(store.as_ref(), role)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{path}");
    eprintln!("Open it on the control API's address (http://127.0.0.1:8090{path} by default): it works once, within 15 minutes.");
    Ok(())
}
