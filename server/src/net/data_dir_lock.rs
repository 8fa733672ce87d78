//! An advisory `flock` on `DIR/LOCK` that keeps two processes from using one data
//! directory. The holder writes its pid into the file so the refusal can name it. The
//! lock dies with the process (even on `kill -9`), so a stale file never blocks a restart.
//! The pid an earlier holder left behind tells a restart that this directory was in use
//! until recently, so its listening ports may still be held for a moment (see
//! [`super::bind_exclusive_after`]).
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Holds the data directory's lock until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
    previous_holder: Option<u32>,
}

/// Why the data directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock.
    InUse { dir: PathBuf, holder_pid: Option<u32> },
    /// The lock file could not be opened, locked or written.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::InUse { dir, holder_pid: Some(pid) } => write!(
                f,
                "data directory {} is in use by another process (pid {pid}); stop it or \
                 choose another data directory",
                dir.display()
            ),
            LockError::InUse { dir, holder_pid: None } => write!(
                f,
                "data directory {} is in use by another process; stop it or choose another \
                 data directory",
                dir.display()
            ),
            LockError::Io { path, source } => {
                write!(f, "cannot lock {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::InUse { .. } => None,
            LockError::Io { source, .. } => Some(source),
        }
    }
}

impl DataDirLock {
    /// Locks `dir` (which must exist) for this process, recording our pid in `dir/LOCK`.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE_NAME);
        let io_error = |source| LockError::Io { path: path.clone(), source };
        // Not truncated on open: the current holder's pid must stay readable.
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                let mut contents = String::new();
                let holder_pid = file.read_to_string(&mut contents).ok().and_then(|_| contents.trim().parse::<u32>().ok());
                return Err(LockError::InUse { dir: dir.to_path_buf(), holder_pid });
            }
            return Err(io_error(error));
        }
        // Ours now, so whoever wrote the pid in it is no longer alive.
        let mut contents = String::new();
        let previous_holder = file.read_to_string(&mut contents).ok().and_then(|_| contents.trim().parse::<u32>().ok());
        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        file.sync_data().map_err(io_error)?;
        Ok(DataDirLock { file, path, previous_holder })
    }

    /// The pid of the process that held this directory before us (it has exited: we hold
    /// the lock), or None for a directory never locked before.
    pub fn previous_holder(&self) -> Option<u32> {
        self.previous_holder
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file (kept open for as long as the lock is held).
    pub fn file(&self) -> &File {
        &self.file
    }
}
