use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    Up {
        /// Where the event log, usage and billing state live.
        #[arg(long, env = "PEAGE_DATA_DIR", default_value = "./peage-data")]
        data_dir: PathBuf,
        /// Partner-facing gateway address (port 0 picks a free port).
        #[arg(long, env = "PEAGE_GATEWAY__LISTEN", default_value = "127.0.0.1:8080")]
        gateway_listen: SocketAddr,
        /// Control API address (admin token required).
        #[arg(long, env = "PEAGE_CONTROL__LISTEN", default_value = "127.0.0.1:8090")]
        control_listen: SocketAddr,
        /// Catalog file (APIs, meters, plans). Default: `<data-dir>/catalog.toml`.
        #[arg(long, env = "PEAGE_CATALOG")]
        catalog: Option<PathBuf>,
        /// Admin token for the control API. Default: generated once, kept in `<data-dir>/admin-token`.
        #[arg(long, env = "PEAGE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Names this gateway in the events it emits.
        #[arg(long, env = "PEAGE_GATEWAY__ID", default_value = "gw-local")]
        gateway_id: String,
        /// Seed a demo API (served by a built-in upstream), a partner and a live key, and write
        /// `<data-dir>/demo.json`.
        #[arg(long)]
        demo: bool,
    },
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
    let result = match cli.command {
        Command::Up {
            data_dir,
            gateway_listen,
            control_listen,
            catalog,
            admin_token,
            gateway_id,
            demo,
        } => {
            let options = peage::up::UpOptions {
                data_dir,
                gateway_listen,
                control_listen,
                catalog,
                admin_token,
                gateway_id,
                demo,
            };
            peage::up::run(options, peage::shutdown_signal()).await
        }
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
