//! Reloadable TLS configurations: certificates and keys re-read without a restart.
//!
//! A [`Reloadable`] holds the configuration built from a set of files. Every new connection
//! asks it for the [`Reloadable::current`] configuration, which first stats the files (a
//! cheap `stat` per file, as etcd checks its certificates per connection) and rebuilds the
//! configuration when any changed. [`Reloadable::reload`] re-reads them unconditionally (the
//! server calls it on SIGHUP, see [`reload_on_sighup`]). A reload that fails (a file
//! missing, half written, or a key that does not match its certificate) keeps the
//! configuration in use and logs why, once per change of the files. Connections already
//! established keep the configuration they were made with.
//!
//! Holders are `Send + Sync` and cheap to clone: one is shared by every shard's thread.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::{ClientConfig, ServerConfig};

use super::load::{ClientTlsSettings, ServerTlsSettings, TlsError};

/// What identifies one version of a file: `None` when it cannot be stat'ed.
type Stamp = Option<(u64, u64, i64, i64, i64, i64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    // `metadata` follows symbolic links, so a swapped link target (as Kubernetes does with
    // mounted secrets) counts as a change.
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.size()))
}

type Build<C> = Box<dyn Fn() -> Result<C, TlsError> + Send + Sync>;

struct State<C> {
    config: Arc<C>,
    /// The files' stamps when `config` was read.
    loaded: Vec<Stamp>,
    /// The stamps of the last failed reload, so a broken file is reported once, not per connection.
    refused: Option<Vec<Stamp>>,
    /// Successful loads, the first included.
    generation: u64,
}

struct Inner<C> {
    what: String,
    files: Vec<PathBuf>,
    build: Build<C>,
    state: Mutex<State<C>>,
}

/// A TLS configuration (`ServerConfig` or `ClientConfig`) that follows its files.
pub struct Reloadable<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Reloadable<C> {
    fn clone(&self) -> Self {
        Reloadable { inner: Arc::clone(&self.inner) }
    }
}

impl<C> std::fmt::Debug for Reloadable<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable").field("what", &self.inner.what).field("files", &self.inner.files).finish()
    }
}

/// A reloadable server configuration.
pub type ReloadableServerConfig = Reloadable<ServerConfig>;
/// A reloadable client configuration.
pub type ReloadableClientConfig = Reloadable<ClientConfig>;

impl Reloadable<ServerConfig> {
    /// Loads a server configuration; `what` names it in log lines (e.g. "client listener").
    pub fn server(what: impl Into<String>, settings: ServerTlsSettings) -> Result<Self, TlsError> {
        let files = settings.files();
        Reloadable::new(what, files, move || settings.build())
    }
}

impl Reloadable<ClientConfig> {
    /// Loads a client configuration; `what` names it in log lines (e.g. "peer dialer").
    pub fn client(what: impl Into<String>, settings: ClientTlsSettings) -> Result<Self, TlsError> {
        let files = settings.files();
        Reloadable::new(what, files, move || settings.build())
    }
}

impl<C> Reloadable<C> {
    /// Builds the configuration from `files` with `build` (which reads them); the first
    /// load must succeed.
    pub fn new(
        what: impl Into<String>,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<C, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let loaded = files.iter().map(stamp).collect();
        let config = Arc::new(build()?);
        let state = Mutex::new(State { config, loaded, refused: None, generation: 1 });
        Ok(Reloadable { inner: Arc::new(Inner { what: what.into(), files, build: Box::new(build), state }) })
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // The state is replaced whole, never left half updated: a poisoned lock is still sound.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The configuration for a new connection: rebuilt first if any file changed since it
    /// was read (a failed rebuild keeps the current one and logs why).
    pub fn current(&self) -> Arc<C> {
        let stamps: Vec<Stamp> = self.inner.files.iter().map(stamp).collect();
        let mut state = self.lock();
        if stamps != state.loaded && state.refused.as_ref() != Some(&stamps) {
            let _ = self.rebuild(&mut state, stamps);
        }
        Arc::clone(&state.config)
    }

    /// Re-reads the files now, changed or not. On failure the configuration in use stays
    /// and the error (also logged) is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = self.inner.files.iter().map(stamp).collect();
        let mut state = self.lock();
        self.rebuild(&mut state, stamps)
    }

    fn rebuild(&self, state: &mut State<C>, stamps: Vec<Stamp>) -> Result<(), TlsError> {
        match (self.inner.build)() {
            Ok(config) => {
                state.config = Arc::new(config);
                state.loaded = stamps;
                state.refused = None;
                state.generation += 1;
                tracing::info!(tls = %self.inner.what, generation = state.generation, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(tls = %self.inner.what, error = %e, "TLS reload failed; keeping the certificates in use");
                state.refused = Some(stamps);
                Err(e)
            }
        }
    }

    /// How many times the files were loaded successfully (1 after creation).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// What this configuration is for, as named in log lines.
    pub fn what(&self) -> &str {
        &self.inner.what
    }

    /// The files it follows.
    pub fn files(&self) -> &[PathBuf] {
        &self.inner.files
    }
}

/// Anything [`reload_on_sighup`] can reload.
pub trait Reload: Send + Sync {
    /// Re-reads the files now; logs and returns a failure, keeping what is in use.
    fn reload(&self) -> Result<(), TlsError>;
    /// What it is, for log lines.
    fn what(&self) -> &str;
}

impl<C: Send + Sync + 'static> Reload for Reloadable<C> {
    fn reload(&self) -> Result<(), TlsError> {
        Reloadable::reload(self)
    }

    fn what(&self) -> &str {
        Reloadable::what(self)
    }
}

/// Starts a thread that reloads every holder each time the process receives SIGHUP. Several
/// such threads may coexist (each gets every SIGHUP).
pub fn reload_on_sighup(holders: Vec<Arc<dyn Reload>>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new().name("conclave-tls-reload".into()).spawn(move || {
        for _ in signals.forever() {
            for holder in &holders {
                tracing::info!(tls = holder.what(), "SIGHUP: reloading TLS certificates");
                // A failure is logged by the holder, which keeps its configuration.
                let _ = holder.reload();
            }
        }
    })
}
