//! Standard non-Rust clients over TLS against a real `conclave serve`: the Python grpcio
//! election scenario (`server/tests/python/election_scenario.py`) over TLS and over mutual
//! TLS, and grpcurl listing services by reflection over mutual TLS (and refused without a
//! client certificate). Certificates are made at test time (rcgen); the tools come from the
//! test suite's Python environment (`support::python`).
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use conclave_wire::tls::testing::TestCa;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use support::python::{grpcurl, python_with_grpc};
use support::{serve_args, Node, NodeOptions, Ports, TestDir};

const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

/// The files of one test's PKI.
struct Files {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    ca_pem: String,
    client_pem: (String, String),
}

fn pki(dir: &Path) -> Files {
    let ca = TestCa::new("conclave tools test CA");
    let server = ca.issue(&["127.0.0.1", "localhost"]);
    let client = ca.issue(&["python-client"]);
    Files {
        ca: ca.write(dir, "ca.crt"),
        server: server.write(dir, "server"),
        client: client.write(dir, "client"),
        ca_pem: ca.pem(),
        client_pem: (client.cert_pem.clone(), client.key_pem.clone()),
    }
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// Starts a node with the files' server certificate and `extra` flags; readiness is checked
/// with a tonic client presenting the client certificate.
async fn start(dir: &mut TestDir, files: &Files, extra: &[String]) -> Node {
    let ports = Ports::fresh();
    let mut args = serve_args(&NodeOptions::default(), &ports, &dir.data_dir());
    args.extend(["--cert-file".to_owned(), arg(&files.server.0), "--key-file".to_owned(), arg(&files.server.1)]);
    args.extend(extra.iter().cloned());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&files.ca_pem))
        .identity(Identity::from_pem(&files.client_pem.0, &files.client_pem.1));
    Node::start_tls(dir, ports, args, tls).await
}

/// Runs `command` to its end, bounded by [`TOOL_TIMEOUT`].
fn run_bounded(command: &mut Command, what: &str) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > TOOL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn python_scenario(node: &Node, tls_args: &[String]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/election_scenario.py");
    let output =
        run_bounded(Command::new(python_with_grpc()).arg(&script).arg(node.ports.listen.to_string()).args(tls_args), "the Python scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("passed, 0 failed"),
        "the Python scenario over TLS failed ({}):\n{stdout}\n{}\nserver output:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        node.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_runs_the_election_scenario_over_tls() {
    let mut dir = TestDir::new();
    let files = pki(dir.path());
    let node = start(&mut dir, &files, &[]).await;
    python_scenario(&node, &["--cacert".to_owned(), arg(&files.ca)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_and_grpcurl_work_over_mutual_tls() {
    let mut dir = TestDir::new();
    let files = pki(dir.path());
    let node = start(&mut dir, &files, &["--trusted-ca-file".to_owned(), arg(&files.ca), "--client-cert-auth".to_owned()]).await;
    python_scenario(
        &node,
        &["--cacert".to_owned(), arg(&files.ca), "--cert".to_owned(), arg(&files.client.0), "--key".to_owned(), arg(&files.client.1)],
    );

    let grpcurl = grpcurl();
    let listen = node.ports.listen.to_string();
    let with_cert = run_bounded(
        Command::new(&grpcurl)
            .args(["-max-time", "20", "-cacert", &arg(&files.ca), "-cert", &arg(&files.client.0), "-key", &arg(&files.client.1)])
            .args([listen.as_str(), "list"]),
        "grpcurl list",
    );
    let stdout = String::from_utf8_lossy(&with_cert.stdout);
    assert!(
        with_cert.status.success() && stdout.contains("atomix.runtime.election.v1.LeaderElection"),
        "grpcurl over mutual TLS ({}):\n{stdout}\n{}",
        with_cert.status,
        String::from_utf8_lossy(&with_cert.stderr)
    );
    let without_cert =
        run_bounded(Command::new(&grpcurl).args(["-max-time", "20", "-cacert", &arg(&files.ca), &listen, "list"]), "grpcurl list");
    assert!(!without_cert.status.success(), "grpcurl without a client certificate was served");
    let admin = node.ports.admin.to_string();
    let admin_list = run_bounded(
        Command::new(&grpcurl)
            .args(["-max-time", "20", "-cacert", &arg(&files.ca), "-cert", &arg(&files.client.0), "-key", &arg(&files.client.1)])
            .args([admin.as_str(), "list"]),
        "grpcurl list (admin)",
    );
    assert!(
        admin_list.status.success() && String::from_utf8_lossy(&admin_list.stdout).contains("atomix.multiraft.v1.Node"),
        "grpcurl on the admin listener over mutual TLS ({}):\n{}{}",
        admin_list.status,
        String::from_utf8_lossy(&admin_list.stdout),
        String::from_utf8_lossy(&admin_list.stderr)
    );
}
