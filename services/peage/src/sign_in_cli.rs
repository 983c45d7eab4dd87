//! `peage sign-in-link`: a one-time dashboard sign-in link for a partner or for finance, minted
//! on the billing store alone (an embedded data directory or a distributed setup's PostgreSQL).

use peage_billing_store::DashboardRole;

use crate::invoice_cli::Target;

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

pub async fn run(c: SignInLinkCommand) -> anyhow::Result<()> {
    let store = c.target.billing_store().await?;
    let role = match c.partner {
        Some(partner_id) => DashboardRole::Partner { partner_id },
        None => DashboardRole::Finance,
    };
    let link = peage_billing::auth::sign_in_link(store.as_ref(), role)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", link.path);
    eprintln!(
        "Open it on the control API's address (http://127.0.0.1:8090{} by default): it works once, within 15 minutes.",
        link.path
    );
    Ok(())
}
