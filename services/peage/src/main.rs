use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

// The gateway allocates and frees many small buffers per call on every serving thread;
// mimalloc's thread-local free lists make that several times cheaper than glibc's malloc
// (measured in load-tests/RESULTS.md, 2026-12-01).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Péage: meter, price and gate the APIs you sell to partners.
#[derive(Parser)]
#[command(name = "peage", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role (gateway, aggregator, billing + control API) in one process on a local
    /// data directory: no Kafka, no ClickHouse, no PostgreSQL.
    Up(peage::up::UpOptions),
    /// Create or upgrade the ClickHouse schema, the PostgreSQL schema and the Kafka topics
    /// (idempotent).
    Migrate(ConfigArg),
    /// The gateway role: authenticate, proxy and meter; events go to Kafka through a disk spool.
    Gateway(ConfigArg),
    /// The aggregator role: Kafka → ClickHouse, exactly once.
    Aggregator(ConfigArg),
    /// The billing role: the control API on PostgreSQL and ClickHouse.
    Billing(ConfigArg),
    /// Several distributed roles in one process (`--roles gateway,aggregator,billing`), with
    /// one operations listener for all of them.
    Run {
        #[arg(long, value_parser = clap::value_parser!(peage::node::Roles))]
        roles: peage::node::Roles,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Invoices: `run` computes a month's drafts, `export` writes them as CSV, JSON or PDF.
    #[command(subcommand)]
    Invoice(peage::invoice_cli::InvoiceCommand),
    /// The catalog: `validate` a file as start-up would, `diff` two versions before shipping.
    #[command(subcommand)]
    Catalog(peage::catalog_cli::CatalogCommand),
    /// Plans: `migrate` moves every partner on one plan to another, at the next period or a
    /// date, with a dry run listing who moves and what each would pay.
    #[command(subcommand)]
    Plans(peage::plans_cli::PlansCommand),
    /// Usage events: `import` a backfill (NDJSON or CSV of CloudEvents) through the events API.
    #[command(subcommand)]
    Events(peage::events_cli::EventsCommand),
    /// Partners: `erase` removes one's personal data on request (invoices are kept).
    #[command(subcommand)]
    Partners(peage::partners_cli::PartnersCommand),
    /// Copy an embedded data directory while `peage up` runs on it, consistently
    /// (docs/operations.md, "Backups").
    Backup(peage::backup_cli::BackupArgs),
    /// Restore a `peage backup` into a new data directory, after checking every file.
    Restore(peage::backup_cli::RestoreArgs),
    /// Check a configuration file as start-up would (every key, type and path), without
    /// starting anything; exit 1 naming what is wrong.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a one-time dashboard sign-in link (15 minutes) for a partner or a staff member.
    SignInLink(peage::sign_in_cli::SignInLinkCommand),
    /// The company's named dashboard users (viewer, finance, admin): `add`, `list`, `set`.
    #[command(subcommand)]
    Staff(peage::staff_cli::StaffCommand),
    /// Scoped credentials for roles and scripts: `create`, `list`, `revoke`.
    #[command(subcommand)]
    ServiceToken(peage::service_token_cli::ServiceTokenCommand),
    /// The key that encrypts stored signing keys and webhook secrets: `new-key`, `rotate`.
    #[command(subcommand)]
    Secrets(peage::secrets_cli::SecretsCommand),
    /// Serve the built-in demo API on its own (the upstream that `peage up --demo` uses).
    DemoUpstream {
        #[arg(
            long,
            env = "PEAGE_DEMO_UPSTREAM__LISTEN",
            default_value = "127.0.0.1:8081"
        )]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Reads the file and the `PEAGE_*` environment as every command does, and checks the
    /// settings that need no server (addresses, TLS pairs, limits, the catalog file).
    Check(ConfigArg),
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file; every key can be overridden by `PEAGE_<SECTION>__<KEY>`.
    #[arg(long, env = "PEAGE_CONFIG", default_value = "peage.toml")]
    config: PathBuf,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<peage::config::PeageConfig> {
        peage::config::load(&self.config, std::env::vars())
    }
}

async fn run_node(arg: &ConfigArg, roles: peage::node::Roles) -> anyhow::Result<()> {
    run_role(arg, async |cfg| {
        peage::node::run(&cfg, roles, peage::shutdown_signal()).await
    })
    .await
}

async fn run_role(
    arg: &ConfigArg,
    role: impl AsyncFnOnce(peage::config::PeageConfig) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    role(arg.load()?).await
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEAGE_LOG")
        .unwrap_or_else(|_| "info,sqlx=warn,hyper=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    // Every command's internal events count from here; roles serve them on /metrics.
    if let Err(e) = peage_telemetry::install() {
        tracing::warn!(error = %e, "metrics recorder not installed");
    }
    let result = match cli.command {
        Command::Up(options) => peage::up::run(options, peage::shutdown_signal()).await,
        Command::Migrate(c) => run_role(&c, async |cfg| peage::roles::migrate(&cfg).await).await,
        Command::Gateway(c) => run_node(&c, peage::node::Roles::GATEWAY).await,
        Command::Aggregator(c) => run_node(&c, peage::node::Roles::AGGREGATOR).await,
        Command::Billing(c) => run_node(&c, peage::node::Roles::BILLING).await,
        Command::Run { roles, config } => run_node(&config, roles).await,
        Command::Invoice(c) => peage::invoice_cli::run(c).await,
        // An invalid catalog is the command's answer, not a failure to run it: exit 1, with the
        // problems already printed.
        Command::Catalog(c) => match peage::catalog_cli::run(c).await {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        // Refused partners are the command's answer: exit 1, with each reason printed.
        Command::Plans(c) => match peage::plans_cli::run(c).await {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Events(c) => peage::events_cli::run(c).await,
        Command::Config(ConfigCommand::Check(c)) => c.load().and_then(|cfg| {
            peage::config::check(&cfg)?;
            println!("{}: valid", c.config.display());
            Ok(())
        }),
        Command::Partners(c) => peage::partners_cli::run(c).await,
        Command::Backup(a) => peage::backup_cli::backup(a).await,
        Command::Restore(a) => peage::backup_cli::restore(a).await,
        Command::SignInLink(c) => peage::sign_in_cli::run(c).await,
        Command::Staff(c) => peage::staff_cli::run(c).await,
        Command::Secrets(c) => peage::secrets_cli::run(c).await,
        Command::ServiceToken(c) => peage::service_token_cli::run(c).await,
        Command::DemoUpstream { listen } => {
            peage::demo::serve_standalone(listen, peage::shutdown_signal()).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peage: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
