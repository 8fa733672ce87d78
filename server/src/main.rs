//! `conclave`: the Conclave storage server binary. `conclave serve` with no flags runs a
//! single-node cluster on embedded defaults (see `conclave serve --help`); the other
//! subcommands are the command-line client (`conclave elect`, `conclave node status`, ...).

use clap::Parser;
use conclave_server::config::{Cli, CliCommand, Config};
use conclave_server::logging::{self, LogFormat};

/// jemalloc, not glibc's malloc: less CPU per request on the shard threads (tuning.md,
/// "The allocator: jemalloc").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        CliCommand::Serve(args) => serve(args, cli.log_format),
        CliCommand::Client(command) => std::process::exit(conclave_server::cli::run(command)),
    }
}

fn serve(args: conclave_server::config::ServeArgs, log_format: LogFormat) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let config = match Config::resolve(args, cores) {
        Ok(config) => config,
        Err(e) => {
            logging::fatal(log_format, &e.to_string());
            std::process::exit(2);
        }
    };
    if let Err(e) = conclave_server::node::run(config) {
        logging::fatal(log_format, &e.to_string());
        std::process::exit(1);
    }
}
