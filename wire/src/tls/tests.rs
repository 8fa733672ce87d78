//! Tests of loading, reloading and handshakes with certificates made at test time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use rustls::pki_types::ServerName;

use super::testing::{TestCa, TestCert};
use super::*;

const ALPN: &[u8] = b"conclave-test";

struct Node {
    cert: PathBuf,
    key: PathBuf,
}

fn write(dir: &Path, stem: &str, cert: &TestCert) -> Node {
    let (cert, key) = cert.write(dir, stem);
    Node { cert, key }
}

fn server_settings(ca: &Path, node: &Node, client_auth: ClientAuth) -> ServerTlsSettings {
    ServerTlsSettings {
        cert: node.cert.clone(),
        key: node.key.clone(),
        trusted_ca: Some(ca.to_path_buf()),
        client_auth,
        alpn: vec![ALPN.to_vec()],
    }
}

fn client_settings(ca: &Path, node: Option<&Node>) -> ClientTlsSettings {
    ClientTlsSettings { trusted_ca: ca.to_path_buf(), identity: node.map(|n| (n.cert.clone(), n.key.clone())), alpn: vec![ALPN.to_vec()] }
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let node = write(dir.path(), "node", &ca.issue(&["127.0.0.1"]));
    let other = write(dir.path(), "other", &ca.issue(&["127.0.0.1"]));
    let missing = dir.path().join("missing.crt");
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n").unwrap();

    let cases: Vec<(TlsError, &Path, &str)> = vec![
        (load_cert_chain(&missing).unwrap_err(), &missing, "cannot read the certificate file"),
        (load_cert_chain(&empty).unwrap_err(), &empty, "no certificate found"),
        (load_cert_chain(&node.key).unwrap_err(), &node.key, "no certificate found"),
        (load_cert_chain(&garbage).unwrap_err(), &garbage, "not a valid PEM certificate"),
        (load_private_key(&node.cert).unwrap_err(), &node.cert, "no private key found"),
        (load_ca_bundle(&empty).unwrap_err(), &empty, "no certificate found"),
    ];
    for (error, path, needle) in cases {
        assert_eq!(error.path.as_deref(), Some(path), "{error}");
        assert!(error.message.contains(needle), "{error:?} lacks {needle:?}");
        assert!(error.to_string().starts_with(&path.display().to_string()), "{error}");
    }

    let ca_file = ca.write(dir.path(), "ca.crt");
    let mismatched = Node { cert: node.cert.clone(), key: other.key.clone() };
    let error = server_settings(&ca_file, &mismatched, ClientAuth::Required).build().unwrap_err();
    assert_eq!(error.path.as_deref(), Some(other.key.as_path()));
    assert!(error.message.contains("does not belong to the certificate"), "{error}");
    let error = client_settings(&ca_file, Some(&mismatched)).build().unwrap_err();
    assert!(error.message.contains("does not belong to the certificate"), "{error}");

    let no_ca = ServerTlsSettings { trusted_ca: None, ..server_settings(&ca_file, &node, ClientAuth::Required) };
    assert!(no_ca.build().unwrap_err().message.contains("needs a trusted CA file"));
    assert!(ServerTlsSettings { trusted_ca: None, ..server_settings(&ca_file, &node, ClientAuth::Off) }.build().is_ok());
    assert_eq!(server_settings(&ca_file, &node, ClientAuth::Optional).files(), vec![node.cert.clone(), node.key.clone(), ca_file.clone()]);
}

#[test]
fn a_reloadable_config_follows_its_files_and_keeps_the_old_one_when_they_break() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let node = write(dir.path(), "node", &ca.issue(&["127.0.0.1"]));
    let holder = ReloadableServerConfig::server("test listener", server_settings(&ca_file, &node, ClientAuth::Required)).unwrap();
    let first = holder.current();
    assert!(Arc::ptr_eq(&first, &holder.current()), "unchanged files are not re-read");
    assert_eq!(holder.generation(), 1);

    // Rotation: new certificate and key in place.
    write(dir.path(), "node", &ca.issue(&["127.0.0.1", "localhost"]));
    let second = holder.current();
    assert!(!Arc::ptr_eq(&first, &second), "changed files are re-read on the next connection");
    assert_eq!(holder.generation(), 2);

    // A broken key: the configuration in use stays, per connection and on a forced reload.
    std::fs::write(&node.key, "not a key").unwrap();
    assert!(Arc::ptr_eq(&second, &holder.current()));
    assert!(Arc::ptr_eq(&second, &holder.current()), "a refused change is not retried per connection");
    let error = holder.reload().unwrap_err();
    assert_eq!(error.path.as_deref(), Some(node.key.as_path()), "{error}");
    assert_eq!(holder.generation(), 2);

    // A file missing (mid-rotation) is refused the same way.
    std::fs::remove_file(&node.cert).unwrap();
    assert!(Arc::ptr_eq(&second, &holder.current()));

    // Fixed files are picked up again.
    write(dir.path(), "node", &ca.issue(&["127.0.0.1"]));
    assert!(!Arc::ptr_eq(&second, &holder.current()));
    assert_eq!(holder.generation(), 3);
    holder.reload().unwrap();
    assert_eq!(holder.generation(), 4, "a forced reload re-reads unchanged files");

    let client = ReloadableClientConfig::client("test dialer", client_settings(&ca_file, Some(&node))).unwrap();
    assert_eq!(client.files(), &[ca_file.clone(), node.cert.clone(), node.key.clone()]);
}

#[test]
fn sighup_reloads_every_holder() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let node = write(dir.path(), "node", &ca.issue(&["127.0.0.1"]));
    let holder = ReloadableClientConfig::client("test dialer", client_settings(&ca_file, Some(&node))).unwrap();
    let _thread = reload_on_sighup(vec![Arc::new(holder.clone())]).unwrap();
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    let start = std::time::Instant::now();
    while holder.generation() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the accepting side saw of one connection.
#[derive(Debug, PartialEq)]
enum Accepted {
    Tls { alpn: Option<Vec<u8>>, client_cert: bool },
    Refused { first_byte_tls: bool, failure: TlsFailure },
}

async fn accept_one(listener: &TcpListener, config: Arc<rustls::ServerConfig>) -> Accepted {
    let stream = listener.accept().await.unwrap();
    let first_byte_tls = first_byte_is_tls(&stream).await.unwrap();
    match TlsAcceptor::from(config).accept(stream).await {
        Ok(mut tls) => {
            let (_, state) = tls.get_ref();
            let accepted =
                Accepted::Tls { alpn: state.alpn_protocol().map(<[u8]>::to_vec), client_cert: state.peer_certificates().is_some() };
            let _ = tls.write_all(b"ok").await;
            let _ = tls.flush().await;
            accepted
        }
        Err(e) => Accepted::Refused { first_byte_tls, failure: explain(&e).0 },
    }
}

/// Dials with `client`, expecting the server at 127.0.0.1 to be `name`; returns whether
/// the exchange completed, or why not.
async fn dial(address: SocketAddr, client: Arc<rustls::ClientConfig>, name: &str) -> Result<(), TlsFailure> {
    let stream = TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = TlsConnector::from(client).connect(name, stream).await.map_err(|e| explain(&e).0)?;
    // With TLS 1.3 the server judges the client's certificate after the client finished:
    // a refusal arrives as an alert on the first read.
    let mut reply = [0u8; 2];
    tls.read_exact(&mut reply).await.map_err(|e| explain(&e).0)?;
    assert_eq!(&reply, b"ok");
    Ok(())
}

#[test]
fn mutual_tls_over_tcp_admits_the_right_certificates_and_names_each_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cluster CA");
    let stranger_ca = TestCa::new("another CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let server = write(dir.path(), "server", &ca.issue(&["127.0.0.1", "localhost"]));
    let good = write(dir.path(), "good", &ca.issue(&["127.0.0.2"]));
    let foreign = write(dir.path(), "foreign", &stranger_ca.issue(&["127.0.0.2"]));
    let expired = write(dir.path(), "expired", &ca.issue_expired(&["127.0.0.2"]));
    let server_config = Arc::new(server_settings(&ca_file, &server, ClientAuth::Required).build().unwrap());
    let client = |node: Option<&Node>| Arc::new(client_settings(&ca_file, node).build().unwrap());
    // (client configuration, name the dialer expects, whether the dialer completes, what the server saw)
    let cases: Vec<(Arc<rustls::ClientConfig>, &str, bool, Accepted)> = vec![
        (client(Some(&good)), "127.0.0.1", true, Accepted::Tls { alpn: Some(ALPN.to_vec()), client_cert: true }),
        (client(Some(&good)), "localhost", true, Accepted::Tls { alpn: Some(ALPN.to_vec()), client_cert: true }),
        (client(Some(&foreign)), "127.0.0.1", false, Accepted::Refused { first_byte_tls: true, failure: TlsFailure::UnknownCa }),
        (client(Some(&expired)), "127.0.0.1", false, Accepted::Refused { first_byte_tls: true, failure: TlsFailure::Expired }),
        (client(None), "127.0.0.1", false, Accepted::Refused { first_byte_tls: true, failure: TlsFailure::NoCertificate }),
    ];
    let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(256 << 10).make().unwrap();
    executor.run(async move {
        let limit = glommio::timer::sleep(Duration::from_secs(60));
        let body = async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            for (client, name, dialed, accepted) in cases {
                let server_side = accept_one(&listener, server_config.clone());
                let (seen, result) = futures_lite::future::zip(server_side, dial(address, client, name)).await;
                assert_eq!(seen, accepted, "dialing as {name}");
                assert_eq!(result.is_ok(), dialed, "dialing as {name}: {result:?}");
            }
            // The dialer checks the name: a server certificate not naming 10.9.9.9.
            let server_side = accept_one(&listener, server_config.clone());
            let (_, result) = futures_lite::future::zip(server_side, dial(address, client(Some(&good)), "10.9.9.9")).await;
            assert_eq!(result, Err(TlsFailure::WrongIdentity));
            // A plaintext client: seen before the handshake, and by rustls.
            let server_side = accept_one(&listener, server_config.clone());
            let plaintext = async {
                let mut stream = TcpStream::connect(address).await.unwrap();
                stream.write_all(b"CNCW\x01 plaintext frame header and then some more bytes").await.unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            };
            let (seen, ()) = futures_lite::future::zip(server_side, plaintext).await;
            assert_eq!(seen, Accepted::Refused { first_byte_tls: false, failure: TlsFailure::Plaintext });
        };
        body.or(async {
            limit.await;
            panic!("handshake test exceeded 60 s");
        })
        .await
    });
}
