//! `conclave`: the Conclave storage server binary. `conclave serve` with no flags runs a
//! single-node cluster on embedded defaults (see `conclave serve --help`).

use clap::Parser;
use conclave_server::config::{Cli, CliCommand, Config};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONCLAVE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let CliCommand::Serve(args) = cli.command;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let config = match Config::resolve(args, cores) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("conclave: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = conclave_server::node::run(config) {
        eprintln!("conclave: {e}");
        std::process::exit(1);
    }
}
