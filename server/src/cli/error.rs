//! How the command-line client fails: one line naming the gRPC status code (or `USAGE` for a
//! malformed argument) and a message, and a non-zero exit status.
use std::fmt;

use crate::grpc::Code;

/// Exit status of a command whose call failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status of a command given arguments it cannot use.
pub const EXIT_USAGE: i32 = 2;

/// A failed command.
#[derive(Debug)]
pub struct CliError {
    /// The gRPC status code, or `None` for a usage error found before any call.
    pub code: Option<Code>,
    pub message: String,
}

impl CliError {
    /// A malformed argument.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { code: None, message: message.into() }
    }

    /// A failure with a gRPC status code.
    pub fn status(code: Code, message: impl Into<String>) -> CliError {
        CliError { code: Some(code), message: message.into() }
    }

    /// A status a server (or tonic, for transport failures) answered to `what`.
    pub fn from_call(what: &str, status: &tonic::Status) -> CliError {
        let code = Code::from_wire(status.code() as u32).unwrap_or(Code::Unknown);
        let message = if status.message().is_empty() { format!("{what} failed") } else { format!("{what}: {}", status.message()) };
        CliError::status(code, message)
    }

    /// The process exit status for this error.
    pub fn exit_status(&self) -> i32 {
        if self.code.is_none() {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        }
    }

    /// Whether another endpoint might succeed where this one failed.
    pub fn is_unavailable(&self) -> bool {
        self.code == Some(Code::Unavailable)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map_or("USAGE", Code::name);
        // One line, whatever the server's message holds.
        write!(f, "{code}: {}", self.message.replace(['\n', '\r'], " "))
    }
}

impl std::error::Error for CliError {}
