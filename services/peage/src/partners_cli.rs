//! `peage partners erase ID`: removes a partner's personal data on request, keeps its invoices
//! as the law requires, and writes an audit record (docs/operations.md, "Erasure").

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use peage_core::ids::PartnerId;

use crate::invoice_cli::Target;

#[derive(Debug, clap::Subcommand)]
pub enum PartnersCommand {
    /// Erase a partner's personal data: name, external id, billing details, key names,
    /// identity providers, sessions and raw events. Keys are revoked and the subscription
    /// ends; invoices, credit notes, payments and the audit log are kept. Refused while the
    /// partner has draft invoices (finalize or void them first).
    Erase {
        /// The partner's id (`prt_…`).
        id: String,
        /// Who asks, for the audit log (an email, a ticket).
        #[arg(long, default_value = "cli")]
        by: String,
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(c: PartnersCommand) -> anyhow::Result<()> {
    match c {
        PartnersCommand::Erase {
            id,
            by,
            yes,
            target,
        } => {
            let partner: PartnerId = id
                .parse()
                .map_err(|e| anyhow::anyhow!("{id:?} is not a partner id: {e}"))?;
            let store = target.billing_store().await?;
            let Some(found) = store.partner(&partner).await? else {
                bail!("no partner {partner}");
            };
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!("erasing cannot be undone: pass --yes to confirm");
                }
                print!(
                    "Erase the personal data of {} ({partner})? Invoices are kept. Type the partner id to confirm: ",
                    found.name
                );
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if answer.trim() != partner.as_str() {
                    bail!("not confirmed; nothing was erased");
                }
            }
            let usage = target.usage_store().await?;
            let erased = peage_billing::service::erasure::erase_partner(
                store.as_ref(),
                usage.as_ref(),
                &partner,
                &format!("cli:{by}"),
                chrono::Utc::now(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("erasing")?;
            println!(
                "partner {} erased: {} key(s) revoked, {} identity provider(s) and {} session(s) removed, {} plan change(s) cancelled, {} invoice(s) kept; recorded in the audit log",
                erased.partner_id,
                erased.keys_revoked,
                erased.issuers_removed,
                erased.sessions_ended,
                erased.plan_changes_cancelled,
                erased.invoices_kept
            );
            Ok(())
        }
    }
}
