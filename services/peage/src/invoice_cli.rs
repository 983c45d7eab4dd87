//! `peage invoice run` and `peage invoice export`: finance's batch work, on an embedded data
//! directory (`--data-dir`) or a distributed setup (`--config`), through the same engine the
//! control API uses.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use peage_billing::service::invoicing::{Invoicing, RunSummary};
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

/// Where a [`Target`] points, checked.
enum Place {
    Distributed(Box<crate::config::PeageConfig>),
    Embedded(PathBuf),
}

impl Target {
    fn place(&self) -> anyhow::Result<Place> {
        if let Some(config) = &self.config {
            return Ok(Place::Distributed(Box::new(crate::config::load(
                config,
                std::env::vars(),
            )?)));
        }
        let Some(dir) = &self.data_dir else {
            bail!(
                "say where the data is: --data-dir DIR (embedded) or --config FILE (distributed)"
            );
        };
        if !dir.join("billing.db").exists() {
            bail!(
                "{} has no billing.db: is it a `peage up` data directory?",
                dir.display()
            );
        }
        Ok(Place::Embedded(dir.clone()))
    }

    /// Where the dashboard and control API of this target answer, when it can be known: a
    /// distributed setup's `control.listen`, or the address `peage up --demo` recorded in the
    /// data directory (`demo.json`).
    pub(crate) fn control_url(&self) -> Option<String> {
        match self.place().ok()? {
            Place::Distributed(config) => {
                let listen = config.control.listen;
                let host = if listen.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    listen.ip().to_string()
                };
                Some(format!("http://{host}:{}", listen.port()))
            }
            Place::Embedded(dir) => {
                let text = std::fs::read_to_string(dir.join("demo.json")).ok()?;
                let demo: crate::up::DemoInfo = serde_json::from_str(&text).ok()?;
                Some(demo.control_url)
            }
        }
    }

    /// The billing store alone (PostgreSQL, or the data directory's SQLite).
    pub(crate) async fn billing_store(&self) -> anyhow::Result<Arc<dyn BillingStore>> {
        billing_store(&self.place()?).await
    }

    /// The usage store alone (ClickHouse, or the data directory's SQLite).
    pub(crate) async fn usage_store(
        &self,
    ) -> anyhow::Result<Arc<dyn peage_usage_store::UsageStore>> {
        Ok(match self.place()? {
            Place::Distributed(config) => Arc::new(crate::roles::clickhouse(&config).await?),
            Place::Embedded(dir) => Arc::new(
                SqliteUsageStore::open(&dir.join("usage.db"))
                    .await
                    .context("opening usage.db")?,
            ),
        })
    }
}

async fn billing_store(place: &Place) -> anyhow::Result<Arc<dyn BillingStore>> {
    Ok(match place {
        Place::Distributed(config) => Arc::new(crate::roles::postgres(config).await?),
        Place::Embedded(dir) => Arc::new(
            SqliteBillingStore::open(&dir.join("billing.db"))
                .await
                .context("opening billing.db")?,
        ),
    })
}

pub(crate) async fn invoicing(target: &Target) -> anyhow::Result<Invoicing> {
    let place = target.place()?;
    let store = billing_store(&place).await?;
    match place {
        Place::Distributed(config) => Ok(Invoicing {
            catalog: Arc::new(load_catalog(&config.catalog_path(), None)?),
            store,
            usage: Arc::new(crate::roles::clickhouse(&config).await?),
            issuer: config.billing.issuer()?,
        }),
        Place::Embedded(dir) => {
            let catalog_path = target
                .catalog
                .clone()
                .unwrap_or_else(|| dir.join("catalog.toml"));
            // Upstream URLs do not matter to billing; the demo's placeholder gets a harmless value.
            let catalog = Arc::new(load_catalog(&catalog_path, Some("http://127.0.0.1:9"))?);
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
    }
}

fn label(period: &str) -> anyhow::Result<PeriodLabel> {
    period
        .parse()
        .map_err(|e: peage_core::period::BadPeriodLabel| anyhow::anyhow!(e))
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
                    ended_after: None,
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
                let pdf = peage_billing::service::pdf::render(r, &name, &engine.issuer);
                let file = format!("{}.pdf", r.number.clone().unwrap_or_else(|| r.id.clone()));
                write_one(file, &pdf)?;
            }
            eprintln!("{} invoice(s) exported", records.len());
            Ok(())
        }
        other => bail!("--format must be csv, json or pdf, not {other:?}"),
    }
}
