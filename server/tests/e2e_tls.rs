//! TLS and mutual TLS on the client and admin listeners of a real `conclave serve`, with
//! certificates made at test time (rcgen, `conclave_wire::tls::testing`): tonic clients
//! over TLS and mutual TLS, clients without a certificate, with one of another CA or an
//! expired one refused under `--client-cert-auth` (each with its log line), a plaintext
//! client on the TLS port refused, handshakes that never finish dropped after
//! `--handshake-timeout-ms` (on both listeners), the admin
//! listener requiring client certificates once `--trusted-ca-file` is set, certificate
//! rotation without a restart (SIGHUP and the per-connection check), and the command-line
//! client with `--cacert`/`--cert`/`--key`. Python grpcio and grpcurl over TLS are in
//! `e2e_tls_tools.rs`.
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conclave_wire::tls::testing::{TestCa, TestCert};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use support::client::atomix::runtime::election::v1 as rt;
use support::client::grpc::health::v1::health_client::HealthClient;
use support::client::grpc::health::v1::HealthCheckRequest;
use support::{bounded, id, serve_args, Node, NodeOptions, Ports, TestDir};

/// How long a log line may take to appear after the event it reports.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// A CA, the server's certificate (for 127.0.0.1) and a client certificate, as files.
struct Pki {
    dir: PathBuf,
    ca: TestCa,
    ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: TestCert,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(format!("pki-{name}"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca = TestCa::new(&format!("conclave test CA {name}"));
        let ca_file = ca.write(&dir, "ca.crt");
        let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"]).write(&dir, "server");
        let client = ca.issue(&["client"]);
        Pki { dir, ca, ca_file, server_cert, server_key, client }
    }

    /// `serve` flags of a server with this PKI's certificate, plus `extra`.
    fn serve_args(&self, ports: &Ports, data_dir: &Path, extra: &[&str]) -> Vec<String> {
        // Sessions outlive the pauses of a loaded machine: these tests are about TLS.
        let options = NodeOptions { session_timeout_ms: 10_000, ..NodeOptions::default() };
        let mut args = serve_args(&options, ports, data_dir);
        args.extend(["--cert-file".to_owned(), path(&self.server_cert), "--key-file".to_owned(), path(&self.server_key)]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// A client trusting this CA, presenting `identity` when given.
    fn client_tls(&self, identity: Option<&TestCert>) -> ClientTlsConfig {
        client_tls(&self.ca.pem(), identity)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn client_tls(ca_pem: &str, identity: Option<&TestCert>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    match identity {
        Some(cert) => tls.identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem)),
        None => tls,
    }
}

/// A new connection to `address`: TLS with `tls`, plaintext without.
async fn connect(address: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}")).expect("url").connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("client TLS configuration");
    }
    endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))
}

/// A health check on `channel` (bounded).
async fn health(channel: Channel) -> Result<(), String> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(Duration::from_secs(5));
    HealthClient::new(channel).check(request).await.map(|_| ()).map_err(|s| format!("call: {s:?}"))
}

/// Whether a new connection with `tls` gets a health answer from `address`. With TLS 1.3
/// a refused client certificate shows on the first call rather than at connect.
async fn served(address: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    health(connect(address, tls).await?).await
}

/// Waits (bounded) until the server's output contains `needle`.
async fn wait_for_log(node: &Node, needle: &str) {
    let deadline = Instant::now() + LOG_WAIT;
    while !node.output().contains(needle) {
        assert!(Instant::now() < deadline, "the server did not log {needle:?} within {LOG_WAIT:?}:\n{}", node.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates election `name` and enters `candidate` over `channel`; returns the leader.
async fn elect(node: &Node, channel: Channel, name: &str, candidate: &str) -> String {
    rt::leader_elections_client::LeaderElectionsClient::new(channel.clone())
        .create(bounded(rt::CreateRequest { id: id(name), tags: vec![] }))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}\n{}", node.output()));
    let term = rt::leader_election_client::LeaderElectionClient::new(channel)
        .enter(bounded(rt::EnterRequest { id: id(name), candidate: candidate.to_owned() }))
        .await
        .unwrap_or_else(|e| panic!("enter {name}: {e:?}\n{}", node.output()))
        .into_inner()
        .term
        .expect("a term");
    term.leader
}

fn sighup(node: &Node) {
    // SAFETY: the pid is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(node.pid(), libc::SIGHUP) }, 0, "kill(SIGHUP)");
}

/// Runs the command-line client with `args`; its exit status and output.
fn cli(args: &[String]) -> (std::process::ExitStatus, String) {
    support::run_to_exit(args, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tonic_and_cli_clients_and_refuses_plaintext_ones() {
    let mut dir = TestDir::new();
    let pki = Pki::new(dir.path(), "main");
    let ports = Ports::fresh();
    let args = pki.serve_args(&ports, &dir.data_dir(), &[]);
    let node = Node::start_tls(&mut dir, ports, args, pki.client_tls(None)).await;

    // The candidacy lives as long as its connection's session: keep it open.
    let alice = node.connect().await;
    assert_eq!(elect(&node, alice.clone(), "tls-job", "alice").await, "alice");
    // The admin listener speaks TLS too; without --trusted-ca-file it asks for no certificate.
    served(node.ports.admin, Some(pki.client_tls(None))).await.expect("admin over TLS");

    // A plaintext HTTP/2 client on the TLS port: refused, with a line saying so.
    let plaintext = served(node.ports.listen, None).await;
    assert!(plaintext.is_err(), "a plaintext client was served on the TLS port");
    wait_for_log(&node, "plaintext connection on a TLS port").await;
    // A client that does not trust the server's CA refuses it; the server says so.
    let stranger = Pki::new(&pki.dir, "stranger");
    assert!(served(node.ports.listen, Some(stranger.client_tls(None))).await.is_err(), "a client trusted a certificate of another CA");
    wait_for_log(&node, "the other side sent TLS alert").await;

    // The command-line client: https:// endpoints or --cacert.
    let endpoint = format!("https://{}", node.ports.listen);
    let (status, output) =
        cli(&["leader".into(), "tls-job".into(), "--endpoints".into(), endpoint.clone(), "--cacert".into(), path(&pki.ca_file)]);
    assert!(status.success() && output.contains("leader=alice"), "conclave leader over TLS: {status}\n{output}");
    let (status, output) =
        cli(&["leader".into(), "tls-job".into(), "--endpoints".into(), endpoint, "--cacert".into(), path(&stranger.ca_file)]);
    assert!(!status.success() && output.contains("UNAVAILABLE"), "a CA that did not sign the server's certificate: {status}\n{output}");
    let (status, output) = cli(&["leader".into(), "tls-job".into(), "--endpoints".into(), format!("https://{}", node.ports.listen)]);
    assert_eq!(status.code(), Some(2), "https:// without --cacert is a usage error: {output}");

    // Still serving everyone else.
    assert_eq!(elect(&node, node.connect().await, "tls-job-2", "bob").await, "bob");
    drop(alice);
    assert!(!node.output().contains("panicked"), "{}", node.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_auth_refuses_clients_without_a_certificate_of_the_trusted_ca() {
    let mut dir = TestDir::new();
    let pki = Pki::new(dir.path(), "main");
    let ports = Ports::fresh();
    let args = pki.serve_args(&ports, &dir.data_dir(), &["--trusted-ca-file", &path(&pki.ca_file), "--client-cert-auth"]);
    let node = Node::start_tls(&mut dir, ports, args, pki.client_tls(Some(&pki.client))).await;

    let alice = node.connect().await;
    assert_eq!(elect(&node, alice.clone(), "mtls-job", "alice").await, "alice");

    let listen = node.ports.listen;
    assert!(served(listen, Some(pki.client_tls(None))).await.is_err(), "a client without a certificate was served");
    wait_for_log(&node, "no certificate presented").await;

    let other_ca = TestCa::new("another CA");
    let foreign = other_ca.issue(&["client"]);
    assert!(served(listen, Some(pki.client_tls(Some(&foreign)))).await.is_err(), "a certificate of another CA was accepted");
    wait_for_log(&node, "certificate from an unknown CA").await;

    let expired = pki.ca.issue_expired(&["client"]);
    assert!(served(listen, Some(pki.client_tls(Some(&expired)))).await.is_err(), "an expired certificate was accepted");
    wait_for_log(&node, "certificate expired or not yet valid").await;

    // The CLI with a client certificate, and without one.
    let (cert, key) = pki.client.write(&pki.dir, "cli");
    let base = ["leader".to_owned(), "mtls-job".into(), "--endpoints".into(), listen.to_string(), "--cacert".into(), path(&pki.ca_file)];
    let mut with_cert = base.to_vec();
    with_cert.extend(["--cert".into(), path(&cert), "--key".into(), path(&key)]);
    let (status, output) = cli(&with_cert);
    assert!(status.success() && output.contains("leader=alice"), "conclave leader over mutual TLS: {status}\n{output}");
    let (status, output) = cli(&base);
    assert!(!status.success(), "the CLI without a client certificate was served: {output}");

    // Refused handshakes kept nothing from the good clients.
    assert_eq!(elect(&node, node.connect().await, "mtls-job-2", "bob").await, "bob");
    drop(alice);
    assert!(!node.output().contains("panicked"), "{}", node.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_requires_client_certificates_once_a_ca_is_set() {
    let mut dir = TestDir::new();
    let pki = Pki::new(dir.path(), "main");
    let ports = Ports::fresh();
    // No --client-cert-auth: the client listener asks for no certificate, the admin one does.
    let args = pki.serve_args(&ports, &dir.data_dir(), &["--trusted-ca-file", &path(&pki.ca_file)]);
    let node = Node::start_tls(&mut dir, ports, args, pki.client_tls(None)).await;

    served(node.ports.listen, Some(pki.client_tls(None))).await.expect("client listener without a client certificate");
    assert!(
        served(node.ports.admin, Some(pki.client_tls(None))).await.is_err(),
        "the admin listener served a client without a certificate"
    );
    wait_for_log(&node, "no certificate presented").await;
    served(node.ports.admin, Some(pki.client_tls(Some(&pki.client)))).await.expect("admin listener with a client certificate");

    let (cert, key) = pki.client.write(&pki.dir, "operator");
    let admin = node.ports.admin.to_string();
    let mut status_args = vec!["node".to_owned(), "status".into(), "--endpoints".into(), admin, "--cacert".into(), path(&pki.ca_file)];
    let (status, output) = cli(&status_args);
    assert!(!status.success(), "node status without a client certificate: {output}");
    status_args.extend(["--cert".into(), path(&cert), "--key".into(), path(&key)]);
    let (status, output) = cli(&status_args);
    assert!(status.success(), "node status with a client certificate: {status}\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let mut dir = TestDir::new();
    let old = Pki::new(dir.path(), "old");
    let new = Pki::new(dir.path(), "new");
    let ports = Ports::fresh();
    let args = old.serve_args(&ports, &dir.data_dir(), &[]);
    let node = Node::start_tls(&mut dir, ports, args, old.client_tls(None)).await;
    let established = node.connect().await;
    assert_eq!(elect(&node, established.clone(), "rotate-job", "alice").await, "alice");

    // Replace the files in place with a certificate of another CA, then SIGHUP.
    std::fs::copy(&new.server_cert, &old.server_cert).expect("replace the certificate");
    std::fs::copy(&new.server_key, &old.server_key).expect("replace the key");
    sighup(&node);
    served(node.ports.listen, Some(new.client_tls(None))).await.expect("a new connection sees the new certificate");
    assert!(served(node.ports.listen, Some(old.client_tls(None))).await.is_err(), "a new connection still got the old certificate");
    // The connection made before the rotation keeps working.
    assert_eq!(elect(&node, established.clone(), "rotate-job-2", "bob").await, "bob");

    // A broken file: the reload fails, says why, and the certificate in use stays.
    std::fs::write(&old.server_cert, "not a certificate").expect("break the certificate file");
    sighup(&node);
    wait_for_log(&node, "TLS reload failed; keeping the certificates in use").await;
    served(node.ports.listen, Some(new.client_tls(None))).await.expect("served with the certificate in use");
    assert_eq!(elect(&node, established, "rotate-job-3", "carol").await, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_dropped_after_the_handshake_timeout() {
    let mut dir = TestDir::new();
    let pki = Pki::new(dir.path(), "main");
    let ports = Ports::fresh();
    let args = pki.serve_args(&ports, &dir.data_dir(), &["--handshake-timeout-ms", "1500"]);
    let node = Node::start_tls(&mut dir, ports, args, pki.client_tls(None)).await;

    // The first byte of a TLS record, then silence: the server gives up after its
    // handshake timeout (`--handshake-timeout-ms`, 1.5 s here) and closes the connection,
    // on the client listener and on the admin one alike.
    for (listener, address) in [("client", node.ports.listen), ("admin", node.ports.admin)] {
        let mut stalled = std::net::TcpStream::connect(address).expect("connect");
        stalled.write_all(&[0x16]).expect("write");
        stalled.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        let started = Instant::now();
        let mut buffer = [0u8; 64];
        let read = stalled.read(&mut buffer);
        let after = started.elapsed();
        assert!(matches!(read, Ok(0) | Err(_)), "{listener}: the stalled handshake was not dropped: {read:?}");
        assert!(
            after >= Duration::from_millis(1_200) && after < Duration::from_secs(8),
            "{listener}: dropped after {after:?}, not after the 1.5 s timeout"
        );
    }
    wait_for_log(&node, "did not complete within").await;
    served(node.ports.listen, Some(pki.client_tls(None))).await.expect("still serving");
}
