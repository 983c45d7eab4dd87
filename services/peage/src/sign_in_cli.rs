//! `peage sign-in-link`: a one-time dashboard sign-in link for a partner or for a named staff
//! member, minted on the billing store alone (an embedded data directory or a distributed
//! setup's PostgreSQL).

use peage_billing_store::DashboardRole;

use crate::invoice_cli::Target;

#[derive(Debug, clap::Args)]
#[group(id = "who", required = true, multiple = false, args = ["partner", "staff"])]
pub struct SignInLinkCommand {
    /// The partner the link signs in as.
    #[arg(long)]
    pub partner: Option<String>,
    /// The staff member (email or `stf_…` id) the link signs in as (`peage staff add` first).
    #[arg(long)]
    pub staff: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(c: SignInLinkCommand) -> anyhow::Result<()> {
    let store = c.target.billing_store().await?;
    let fail = |e: peage_billing::ServiceError| anyhow::anyhow!("{e}");
    let role = match (c.partner, c.staff) {
        (Some(partner_id), _) => DashboardRole::Partner {
            partner_id: partner_id
                .parse()
                .map_err(|e| anyhow::anyhow!("--partner: {e}"))?,
        },
        (None, Some(staff)) => DashboardRole::Staff {
            staff_id: peage_billing::service::sessions::live_staff(store.as_ref(), &staff)
                .await
                .map_err(fail)?
                .id,
        },
        (None, None) => anyhow::bail!("give --partner <id> or --staff <email>"),
    };
    let link = peage_billing::service::sessions::sign_in_link(store.as_ref(), role)
        .await
        .map_err(fail)?;
    println!("{}", link.path);
    match c.target.control_url() {
        Some(url) => eprintln!(
            "Open {}{} (it works once, within 15 minutes).",
            url.trim_end_matches('/'),
            link.path
        ),
        None => eprintln!(
            "Open it on the address the control API listens on (`peage up` prints it: \
             \"control API listening on …\"); it works once, within 15 minutes."
        ),
    }
    Ok(())
}
