//! The command-line client of the `conclave` binary: election commands on the client API
//! (`elect`, `leader`, `watch`, `anoint`, `promote`, `demote`, `evict`, `withdraw`) and node
//! commands on the admin API (`node status|bootstrap|join|leave|events`). It runs a tonic
//! client on a single-threaded tokio runtime of its own; `conclave serve` never starts one.
//!
//! Output is one line per result or change, `key=value` text by default or JSON with
//! `--json`; a failure is one line on stderr with the gRPC code and message, and a non-zero
//! exit status (1 for a failed call, 2 for unusable arguments).
mod election;
mod endpoints;
mod error;
mod node;
mod output;
mod rpc;
mod signals;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use election::Operation;
pub use endpoints::{Endpoints, TlsFiles};
pub use error::CliError;
pub use output::Printer;

use crate::config::{DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN};
use signals::StopSignals;

/// The client subcommands of `conclave`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Campaign: enter CANDIDATE in election NAME (creating it if needed), print each change
    /// of leader and term, and hold the candidacy until Ctrl-C or SIGTERM; then withdraw.
    Elect(CandidateArgs),
    /// Print the election's term, leader and candidates (leader first).
    Leader(ElectionArgs),
    /// Print the election's state, then every change, until Ctrl-C or SIGTERM.
    Watch(ElectionArgs),
    /// Make CANDIDATE (already a candidate) the leader now.
    Anoint(CandidateArgs),
    /// Move CANDIDATE up one place (from second place it becomes the leader).
    Promote(CandidateArgs),
    /// Move CANDIDATE down one place (a leader with a successor hands over).
    Demote(CandidateArgs),
    /// Remove CANDIDATE, whichever session entered it.
    Evict(CandidateArgs),
    /// Withdraw CANDIDATE (a candidate of this connection's session).
    Withdraw(CandidateArgs),
    /// Operate a node through its admin API (the Node service and health).
    #[command(subcommand)]
    Node(NodeCommand),
}

/// The node subcommands (`conclave node ...`).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Print the node's health and every group it hosts with the term and leader it knows.
    Status(Connection),
    /// Start this node's replica of a new group whose initial voters are MEMBERS (run it on
    /// every initial member).
    Bootstrap(GroupArgs),
    /// Start a replica that joins an existing group, with the role given in MEMBERS.
    Join(GroupArgs),
    /// Remove this node's replica from GROUP (membership change first, then its data).
    Leave(LeaveArgs),
    /// Print the node's current state, then every event, until Ctrl-C or SIGTERM.
    Events(Connection),
}

/// Where and how a command talks.
#[derive(Debug, Args)]
pub struct Connection {
    /// Servers to try, in order, until one answers [default: 127.0.0.1:5678 for election
    /// commands, the admin API 127.0.0.1:5679 for node commands].
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub endpoints: Vec<String>,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Deadline of each call, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// PEM CA certificate that the servers' certificates must chain to; the endpoints are
    /// then spoken to over TLS (as `https://` endpoints are).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate presented to servers that require one (`--client-cert-auth`,
    /// and the admin API once the server has `--trusted-ca-file`).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ElectionArgs {
    /// The election's name.
    pub name: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct CandidateArgs {
    /// The election's name.
    pub name: String,
    /// The candidate's name.
    pub candidate: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct GroupArgs {
    /// The group id (client partitions are 1..=--partitions; new groups above).
    pub group: u32,
    /// Members as ID=HOST:PORT[/ROLE], HOST:PORT being the node's peer address and ROLE one
    /// of member (default), observer, witness.
    #[arg(required = true, value_name = "MEMBER")]
    pub members: Vec<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The group id.
    pub group: u32,
    #[command(flatten)]
    pub connection: Connection,
}

impl Connection {
    fn endpoints(&self, default: &str) -> Result<Endpoints, CliError> {
        let tls = TlsFiles { cacert: self.cacert.clone(), cert: self.cert.clone(), key: self.key.clone() };
        Endpoints::parse(&self.endpoints, default, Duration::from_millis(self.timeout_ms.max(1)))?.with_tls(&tls)
    }

    fn printer(&self) -> Printer {
        Printer { json: self.json }
    }
}

/// Runs a client command to completion; returns the process exit status.
pub fn run(command: ClientCommand) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("conclave: INTERNAL: cannot start the client runtime: {error}");
            return error::EXIT_FAILED;
        }
    };
    match runtime.block_on(execute(command)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("conclave: {error}");
            error.exit_status()
        }
    }
}

async fn execute(command: ClientCommand) -> Result<(), CliError> {
    let mut signals = StopSignals::install()?;
    match command {
        ClientCommand::Elect(args) => {
            let endpoints = args.connection.endpoints(DEFAULT_LISTEN)?;
            election::elect(&endpoints, &args.name, &args.candidate, args.connection.printer(), &mut signals).await
        }
        ClientCommand::Leader(args) => {
            election::leader(&args.connection.endpoints(DEFAULT_LISTEN)?, &args.name, args.connection.printer()).await
        }
        ClientCommand::Watch(args) => {
            election::watch(&args.connection.endpoints(DEFAULT_LISTEN)?, &args.name, args.connection.printer(), &mut signals).await
        }
        ClientCommand::Anoint(args) => operate(Operation::Anoint, args).await,
        ClientCommand::Promote(args) => operate(Operation::Promote, args).await,
        ClientCommand::Demote(args) => operate(Operation::Demote, args).await,
        ClientCommand::Evict(args) => operate(Operation::Evict, args).await,
        ClientCommand::Withdraw(args) => operate(Operation::Withdraw, args).await,
        ClientCommand::Node(command) => execute_node(command, &mut signals).await,
    }
}

async fn operate(operation: Operation, args: CandidateArgs) -> Result<(), CliError> {
    let endpoints = args.connection.endpoints(DEFAULT_LISTEN)?;
    election::operate(&endpoints, operation, &args.name, &args.candidate, args.connection.printer()).await
}

async fn execute_node(command: NodeCommand, signals: &mut StopSignals) -> Result<(), CliError> {
    match command {
        NodeCommand::Status(connection) => node::status(&connection.endpoints(DEFAULT_ADMIN_LISTEN)?, connection.printer()).await,
        NodeCommand::Events(connection) => node::events(&connection.endpoints(DEFAULT_ADMIN_LISTEN)?, connection.printer(), signals).await,
        NodeCommand::Bootstrap(args) => {
            let group = node::group_config(args.group, &args.members)?;
            node::change(&args.connection.endpoints(DEFAULT_ADMIN_LISTEN)?, node::Change::Bootstrap(group), args.connection.printer()).await
        }
        NodeCommand::Join(args) => {
            let group = node::group_config(args.group, &args.members)?;
            node::change(&args.connection.endpoints(DEFAULT_ADMIN_LISTEN)?, node::Change::Join(group), args.connection.printer()).await
        }
        NodeCommand::Leave(args) => {
            node::change(&args.connection.endpoints(DEFAULT_ADMIN_LISTEN)?, node::Change::Leave(args.group), args.connection.printer())
                .await
        }
    }
}
