//! Mutual TLS between peers: every connection is TLS, both sides present certificates
//! chaining to the peer CA, and each side checks that the other is who it should be.
//!
//! - The dialer verifies that the acceptor's certificate names the host it dialed (SAN IP
//!   or DNS name), as any TLS client does.
//! - The acceptor verifies the dialer's certificate chain during the TLS handshake, then,
//!   once the wire handshake says which node the dialer claims to be, that its certificate
//!   names the host this node has for that node id (from `--peers` or a membership change).
//!   A certificate of the right CA naming another node is refused: a node cannot speak for
//!   another.
//!
//! Refusals say which check failed (unknown CA, expired, wrong identity, plaintext peer);
//! the TLS and wire handshakes together must finish within the handshake timeout. No
//! session resumption: every connection verifies certificates afresh, so a rotated
//! certificate (see [`crate::tls::Reloadable`]) applies to every new connection.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use conclave_proto::conclave::wire::v1::Handshake;
use futures_rustls::{client, server, TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::codec::ReadError;
use crate::handshake::{self, HandshakeError, LocalIdentity, RemotePeer};
use crate::tls::{
    explain, first_byte_is_tls, rustls_error, ClientAuth, ClientTlsSettings, Reload, ReloadableClientConfig, ReloadableServerConfig,
    ServerTlsSettings, TlsError,
};

/// The ALPN protocol of peer connections, so a peer port is never mistaken for another service.
pub const PEER_ALPN: &[u8] = b"conclave-peer/1";

/// A node's peer TLS material: the acceptor's and the dialer's configurations, built from
/// the same certificate, key and CA files and reloaded together.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// Used by the peer listeners (client certificates required).
    pub acceptor: ReloadableServerConfig,
    /// Used by outbound peer connections (presents the node's certificate).
    pub dialer: ReloadableClientConfig,
}

impl PeerTls {
    /// Loads the node's certificate chain and key and the peer CA bundle.
    pub fn load(cert: &Path, key: &Path, trusted_ca: &Path) -> Result<PeerTls, TlsError> {
        let alpn = vec![PEER_ALPN.to_vec()];
        let acceptor = ReloadableServerConfig::server(
            "peer listener",
            ServerTlsSettings {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                trusted_ca: Some(trusted_ca.to_path_buf()),
                client_auth: ClientAuth::Required,
                alpn: alpn.clone(),
            },
        )?;
        let dialer = ReloadableClientConfig::client(
            "peer dialer",
            ClientTlsSettings { trusted_ca: trusted_ca.to_path_buf(), identity: Some((cert.to_path_buf(), key.to_path_buf())), alpn },
        )?;
        Ok(PeerTls { acceptor, dialer })
    }

    /// Both holders, for [`crate::tls::reload_on_sighup`].
    pub fn holders(&self) -> Vec<Arc<dyn Reload>> {
        vec![Arc::new(self.acceptor.clone()), Arc::new(self.dialer.clone())]
    }

    /// Whether the node's own certificate names `host`; other nodes refuse it otherwise.
    pub fn check_own_certificate(cert: &Path, host: &str) -> Result<(), String> {
        let chain = crate::tls::load_cert_chain(cert).map_err(|e| e.to_string())?;
        check_names(chain.first(), host).map_err(|why| format!("{}: {why}", cert.display()))
    }
}

/// The host (IP address or DNS name) that node `node_id`'s certificate must name, or
/// `None` for a node this node does not know.
pub type ExpectedHost = Rc<dyn Fn(u64) -> Option<String>>;

/// The TLS side of a peer listener.
#[derive(Clone)]
pub struct ListenerTls {
    /// The acceptor configuration (reloaded as its files change).
    pub config: ReloadableServerConfig,
    /// Where each node is known to be; its certificate must name that host.
    pub expected_host: ExpectedHost,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The host of `host:port` or `[v6]:port`.
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("`{host}` is neither an IP address nor a DNS name: {e}"))
}

/// Whether `cert` (an end-entity certificate) names `host` in its subject alternative names.
fn check_names(cert: Option<&CertificateDer<'_>>, host: &str) -> Result<(), String> {
    let cert = cert.ok_or("no certificate presented")?;
    let parsed = rustls::server::ParsedCertificate::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    rustls::client::verify_server_name(&parsed, &server_name(host)?).map_err(|_| format!("the certificate does not name {host}"))
}

/// Whether the dialer claiming to be `hello.node_id` presented a certificate naming that node's host.
fn check_identity(cert: Option<&CertificateDer<'_>>, hello: &Handshake, expected_host: &ExpectedHost) -> Result<(), String> {
    let node = hello.node_id;
    let Some(host) = expected_host(node) else {
        return Err(format!("wrong identity: node {node} is not a peer this node knows, so its certificate cannot be checked"));
    };
    check_names(cert, &host).map_err(|why| format!("wrong identity: node {node} is at {host}, but {why}"))
}

/// A TLS failure inside a read or write of the wire handshake (e.g. the other side's alert
/// refusing our certificate) is reported as the TLS failure it is.
fn tls_aware(e: HandshakeError) -> HandshakeError {
    match e {
        HandshakeError::Read(ReadError::Io(io)) if rustls_error(&io).is_some() => HandshakeError::Tls(explain(&io).1),
        other => other,
    }
}

/// The acceptor's half over TLS: the TLS handshake (client certificate required), then the
/// wire handshake with the identity check. Bounded in time by the caller.
pub(crate) async fn accept(
    stream: TcpStream,
    tls: &ListenerTls,
    local: &LocalIdentity,
    address: SocketAddr,
) -> Result<(RemotePeer, server::TlsStream<TcpStream>), HandshakeError> {
    if !first_byte_is_tls(&stream).await? {
        return Err(HandshakeError::Tls(
            "plaintext connection on a TLS port: the peer did not start a TLS handshake (is peer TLS configured on it?)".into(),
        ));
    }
    let mut stream = TlsAcceptor::from(tls.config.current()).accept(stream).await.map_err(|e| HandshakeError::Tls(explain(&e).1))?;
    let cert = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).cloned();
    let verify = |hello: &Handshake| check_identity(cert.as_ref(), hello, &tls.expected_host);
    let from = handshake::accept(&mut stream, local, address, &verify).await.map_err(tls_aware)?;
    Ok((from, stream))
}

/// The dialer's half over TLS: the TLS handshake (verifying that the acceptor's certificate
/// names the host of `address`), then the wire handshake. Bounded in time by the caller.
pub(crate) async fn dial(
    stream: TcpStream,
    config: &ReloadableClientConfig,
    address: &str,
    local: &LocalIdentity,
    expected_node_id: u64,
    snapshot: bool,
) -> Result<client::TlsStream<TcpStream>, HandshakeError> {
    let name = server_name(host_of(address)).map_err(HandshakeError::Tls)?;
    let mut stream = TlsConnector::from(config.current()).connect(name, stream).await.map_err(|e| HandshakeError::Tls(explain(&e).1))?;
    handshake::dial(&mut stream, local, expected_node_id, snapshot).await.map_err(tls_aware)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::TestCa;

    #[test]
    fn hosts_are_cut_out_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7100"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7100"), "::1");
        assert_eq!(host_of("node-1.example:7100"), "node-1.example");
    }

    #[test]
    fn the_identity_check_wants_the_claimed_nodes_host_in_the_certificate() {
        let ca = TestCa::new("peer CA");
        let pem = ca.issue(&["127.0.0.1", "node-1.example"]).cert_pem;
        let cert = crate::tls::testing::cert_der(&pem);
        let hosts: ExpectedHost = Rc::new(|node| match node {
            1 => Some("127.0.0.1".into()),
            2 => Some("127.0.0.2".into()),
            3 => Some("node-1.example".into()),
            _ => None,
        });
        let hello = |node_id| Handshake { node_id, ..Handshake::default() };
        assert_eq!(check_identity(Some(&cert), &hello(1), &hosts), Ok(()));
        assert_eq!(check_identity(Some(&cert), &hello(3), &hosts), Ok(()));
        let other = check_identity(Some(&cert), &hello(2), &hosts).unwrap_err();
        assert!(other.contains("wrong identity") && other.contains("does not name 127.0.0.2"), "{other}");
        let unknown = check_identity(Some(&cert), &hello(9), &hosts).unwrap_err();
        assert!(unknown.contains("not a peer this node knows"), "{unknown}");
        assert!(check_identity(None, &hello(1), &hosts).unwrap_err().contains("no certificate"));
    }
}
