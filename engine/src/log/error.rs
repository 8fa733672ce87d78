//! Errors of the log and snapshot store.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in the log or the snapshot store.
#[derive(Debug)]
pub enum LogError {
    /// An I/O call failed; `context` says what was being done.
    Io { context: String, source: std::io::Error },
    /// Recovery found a damaged record followed by data that was durable: acknowledged
    /// records are missing. Reported, never silently skipped (see `repair_corruption`).
    Corrupt { file: PathBuf, offset: u64, reason: String },
    /// A snapshot file failed its checksum or framing.
    CorruptSnapshot { file: PathBuf, reason: String },
    /// An earlier flush failed; nothing written after it can be trusted, so the log
    /// refuses further work until reopened (recovery then decides what survived).
    Poisoned(String),
    /// The caller broke the log's contract (non-contiguous append, oversized record, ...).
    Invalid(String),
    /// The requested entries are no longer in the log (compacted) or not there yet.
    Unavailable { group: u32, index: u64 },
}

impl LogError {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        LogError::Io { context: context.into(), source: source.into() }
    }

    pub(crate) fn glommio(context: impl Into<String>, source: glommio::GlommioError<()>) -> Self {
        LogError::Io { context: context.into(), source: source.into() }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io { context, source } => write!(f, "{context}: {source}"),
            LogError::Corrupt { file, offset, reason } => {
                write!(f, "log corrupt in {} at offset {offset}: {reason}", file.display())
            }
            LogError::CorruptSnapshot { file, reason } => {
                write!(f, "snapshot {} is corrupt: {reason}", file.display())
            }
            LogError::Poisoned(why) => write!(f, "log unusable after a failed flush: {why}"),
            LogError::Invalid(why) => write!(f, "invalid log request: {why}"),
            LogError::Unavailable { group, index } => {
                write!(f, "entry {index} of group {group} is not in the log")
            }
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
