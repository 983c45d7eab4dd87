use std::io::IsTerminal;
use std::net::SocketAddr;

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
    Up(peage::up::UpOptions),
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
        Command::Up(options) => peage::up::run(options, peage::shutdown_signal()).await,
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
