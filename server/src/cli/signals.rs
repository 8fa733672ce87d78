//! Ctrl-C (SIGINT) and SIGTERM, which end the long-running commands (`elect`, `watch`,
//! `node events`) cleanly: the handlers are installed before the first call, so a signal
//! is never lost to the default action once the command runs.
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::error::CliError;
use crate::grpc::Code;

/// The stop signals of the process.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Takes over SIGINT and SIGTERM (needs a running tokio runtime).
    pub fn install() -> Result<StopSignals, CliError> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|error| CliError::status(Code::Internal, format!("cannot install a signal handler: {error}")))
        };
        Ok(StopSignals { interrupt: install(SignalKind::interrupt())?, terminate: install(SignalKind::terminate())? })
    }

    /// Completes when SIGINT or SIGTERM arrives.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
