//! The TLS handshake of a connection to a TLS listener (futures-rustls on the glommio
//! stream, ALPN `h2`), with one clear log line for each way it can fail: a plaintext
//! client on the TLS port, a client certificate from an unknown CA, an expired one, none
//! where one is required, a client that refused the server's certificate. A failed
//! handshake closes the connection and keeps nothing.
//!
//! The configuration comes from a [`ReloadableServerConfig`] (see `conclave_wire::tls`):
//! each new connection takes the current one, so rotated certificate files take effect
//! for new connections while established ones keep theirs.
use std::net::SocketAddr;

use conclave_wire::tls::futures_rustls::server::TlsStream;
use conclave_wire::tls::futures_rustls::TlsAcceptor;
use conclave_wire::tls::{explain, first_byte_is_tls, ReloadableServerConfig, TlsFailure};
use glommio::net::TcpStream;

/// The TLS of one listener: its reloadable configuration and its name in log lines.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    /// The listener, as log lines name it ("client listener", "admin listener").
    pub listener: &'static str,
    pub config: ReloadableServerConfig,
}

/// Runs the server side of the TLS handshake on `stream`; `None` (after logging why) when
/// it fails. The caller bounds it in time.
pub(crate) async fn accept(
    tls: &ListenerTls,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    connection: u64,
) -> Option<TlsStream<TcpStream>> {
    let peer = peer.map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
    match first_byte_is_tls(&stream).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                listener = tls.listener,
                %peer,
                connection,
                "refusing a connection: {} (the client did not start a TLS handshake; it needs TLS, e.g. https:// and a CA certificate)",
                TlsFailure::Plaintext
            );
            return None;
        }
        Err(error) => {
            tracing::debug!(listener = tls.listener, %peer, connection, %error, "connection closed before its TLS handshake");
            return None;
        }
    }
    match TlsAcceptor::from(tls.config.current()).accept(stream).await {
        Ok(stream) => {
            let (_, session) = stream.get_ref();
            if session.alpn_protocol().is_some_and(|protocol| protocol != b"h2") {
                tracing::warn!(listener = tls.listener, %peer, connection, "refusing a connection: it negotiated a protocol other than h2");
                return None;
            }
            Some(stream)
        }
        Err(error) => {
            let (failure, text) = explain(&error);
            if failure == TlsFailure::Closed {
                tracing::debug!(listener = tls.listener, %peer, connection, "TLS handshake ended: {text}");
            } else {
                tracing::warn!(listener = tls.listener, %peer, connection, "refusing a connection: TLS handshake failed: {text}");
            }
            None
        }
    }
}
