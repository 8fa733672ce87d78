//! TLS for Conclave's listeners and peer connections: rustls (ring provider) over glommio
//! streams through futures-rustls, with no tokio runtime.
//!
//! - [`load`]: PEM certificate chains, private keys and CA bundles read from files (errors
//!   name the file and the problem), and the [`ServerTlsSettings`] / [`ClientTlsSettings`]
//!   that build rustls configurations (client-certificate verification off, optional or
//!   required; ALPN).
//! - [`reload`]: [`Reloadable`] configurations that follow their files (a cheap stat per new
//!   connection, a forced re-read on SIGHUP via [`reload_on_sighup`]); a failed reload keeps
//!   the configuration in use and logs why.
//! - [`explain`]: which problem a failed handshake had (unknown CA, expired, wrong identity,
//!   plaintext), for one clear log line.
//!
//! Typical use on a glommio listener:
//!
//! ```no_run
//! use conclave_wire::tls::{ClientAuth, ReloadableServerConfig, ServerTlsSettings};
//! # async fn serve(stream: glommio::net::TcpStream) -> std::io::Result<()> {
//! let settings = ServerTlsSettings {
//!     cert: "node.crt".into(),
//!     key: "node.key".into(),
//!     trusted_ca: Some("ca.crt".into()),
//!     client_auth: ClientAuth::Required,
//!     alpn: vec![b"h2".to_vec()],
//! };
//! let tls = ReloadableServerConfig::server("client listener", settings).expect("usable certificates");
//! // Per connection: the current configuration (re-read if the files changed).
//! let acceptor = futures_rustls::TlsAcceptor::from(tls.current());
//! match acceptor.accept(stream).await {
//!     Ok(_stream) => { /* serve it */ }
//!     Err(e) => tracing::warn!("refusing a connection: {}", conclave_wire::tls::explain(&e).1),
//! }
//! # Ok(())
//! # }
//! ```

pub mod explain;
pub mod load;
pub mod reload;
#[cfg(any(test, feature = "test-certs"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use explain::{classify, explain, first_byte_is_tls, rustls_error, TlsFailure, TLS_HANDSHAKE_RECORD};
pub use load::{load_ca_bundle, load_cert_chain, load_private_key, provider, ClientAuth, ClientTlsSettings, ServerTlsSettings, TlsError};
pub use reload::{reload_on_sighup, Reload, Reloadable, ReloadableClientConfig, ReloadableServerConfig};

/// The rustls and futures-rustls this crate builds on, so users name the same versions.
pub use {futures_rustls, rustls};
