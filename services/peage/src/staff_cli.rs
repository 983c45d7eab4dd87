//! `peage staff`: the company's named people who sign in to the dashboard (viewer, finance,
//! admin), managed on the billing store alone, like sign-in links and service tokens.

use peage_billing::service::staff::StaffUpdate;
use peage_billing_store::StaffMember;

use crate::invoice_cli::Target;

#[derive(Debug, clap::Subcommand)]
pub enum StaffCommand {
    /// Add a staff member; then `peage sign-in-link --staff <email>` signs them in.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// viewer (reads), finance (works invoices, credits, partners) or admin (everything).
        #[arg(long)]
        role: String,
        #[command(flatten)]
        target: Target,
    },
    /// List staff members, disabled ones included.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Change a member's name or role, or disable them (their sessions end at once).
    Set {
        /// Email or `stf_…` id.
        member: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        #[command(flatten)]
        target: Target,
    },
}

fn line(m: &StaffMember) -> String {
    let state = m
        .disabled_at
        .map_or("active".to_string(), |at| format!("disabled {at}"));
    format!(
        "{}\t{}\t{}\t{}\t{state}",
        m.id,
        m.email,
        m.role.as_str(),
        m.name
    )
}

pub async fn run(c: StaffCommand) -> anyhow::Result<()> {
    let fail = |e: peage_billing::ServiceError| anyhow::anyhow!("{e}");
    match c {
        StaffCommand::Add {
            email,
            name,
            role,
            target,
        } => {
            let store = target.billing_store().await?;
            let m = peage_billing::service::staff::create(store.as_ref(), &email, &name, &role)
                .await
                .map_err(fail)?;
            println!("{}", line(&m));
        }
        StaffCommand::List { target } => {
            let store = target.billing_store().await?;
            for m in store.staff().await? {
                println!("{}", line(&m));
            }
        }
        StaffCommand::Set {
            member,
            name,
            role,
            disable,
            enable,
            target,
        } => {
            let store = target.billing_store().await?;
            let change = StaffUpdate {
                name,
                role,
                disabled: (disable || enable).then_some(disable),
            };
            let (_, after) =
                peage_billing::service::staff::update(store.as_ref(), &member, &change)
                    .await
                    .map_err(fail)?;
            println!("{}", line(&after));
        }
    }
    Ok(())
}
