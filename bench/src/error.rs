//! The ways a bench run fails, each with what a person needs to act on it.
use std::fmt;

#[derive(Debug, Clone)]
pub enum BenchError {
    /// The configuration cannot be run.
    Config(String),
    /// No connection could be opened to an endpoint.
    Connect { endpoint: String, message: String },
    /// A request failed with a gRPC status.
    Rpc { op: &'static str, code: String, message: String },
    /// A response did not have the shape the API promises.
    Protocol { op: &'static str, message: String },
    /// The preparation of a workload (creating elections, first watch states) failed.
    Setup(String),
    /// A local I/O failure (report files, the floor measurement).
    Io(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Config(message) => write!(f, "invalid configuration: {message}"),
            BenchError::Connect { endpoint, message } => {
                write!(f, "cannot connect to {endpoint}: {message}")
            }
            BenchError::Rpc { op, code, message } => write!(f, "{op} failed: {code}: {message}"),
            BenchError::Protocol { op, message } => {
                write!(f, "{op}: unexpected response: {message}")
            }
            BenchError::Setup(message) => write!(f, "setup failed: {message}"),
            BenchError::Io(message) => write!(f, "I/O error: {message}"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> BenchError {
        BenchError::Io(e.to_string())
    }
}
