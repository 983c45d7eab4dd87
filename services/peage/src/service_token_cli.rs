//! `peage service-token`: scoped credentials for roles and scripts (docs/security.md,
//! "Service tokens"), made on the billing store alone, like sign-in links.

use crate::invoice_cli::Target;

#[derive(Debug, clap::Subcommand)]
pub enum ServiceTokenCommand {
    /// Create a token and print it (shown this once; only its hash is stored).
    Create {
        /// What uses it, for people: `gateway-eu-1`.
        #[arg(long)]
        name: String,
        /// gateway, events:write, finance, read-only or admin.
        #[arg(long)]
        scope: String,
        #[command(flatten)]
        target: Target,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by id (`svc_…`): it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(c: ServiceTokenCommand) -> anyhow::Result<()> {
    let fail = |e: peage_billing::ServiceError| anyhow::anyhow!("{e}");
    match c {
        ServiceTokenCommand::Create {
            name,
            scope,
            target,
        } => {
            let store = target.billing_store().await?;
            let t = peage_billing::service::service_tokens::create(store.as_ref(), &name, &scope)
                .await
                .map_err(fail)?;
            println!("{}", t.token);
            eprintln!(
                "{} ({} token {:?}): shown this once; give it to the role as gateway.billing_token or a Bearer token",
                t.id, t.scope, t.name
            );
        }
        ServiceTokenCommand::List { target } => {
            let store = target.billing_store().await?;
            for t in store.service_tokens().await? {
                let state = t
                    .revoked_at
                    .map_or("active".to_string(), |at| format!("revoked {at}"));
                println!(
                    "{}\t{}\t{}\t{}\t{state}",
                    t.id, t.scope, t.name, t.created_at
                );
            }
        }
        ServiceTokenCommand::Revoke { id, target } => {
            let store = target.billing_store().await?;
            let id: peage_core::ids::ServiceTokenId = id.parse().map_err(|e| {
                anyhow::anyhow!("{e} (service token ids read svc_ and 20 hex digits)")
            })?;
            let t = store.revoke_service_token(&id, chrono::Utc::now()).await?;
            println!("{} revoked", t.id);
        }
    }
    Ok(())
}
