//! A standard non-Rust gRPC client against `conclave serve`: runs the Python `grpcio`
//! election scenario (`server/tests/python/election_scenario.py`) against a started server
//! and requires it to pass. On first use the test installs the pinned packages of
//! `server/tests/python/requirements.txt` into a virtual environment under `target/`, so a
//! machine needs only Python 3 with `venv` and pip.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Node, NodeOptions, TestDir};

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

fn run_checked(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}; install Python 3 with venv and pip"));
    assert!(
        output.status.success(),
        "{what} failed ({}); install Python 3 with venv and pip, or the packages by hand with \
         `pip install -r server/tests/python/requirements.txt`:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python of a virtual environment under `target/` holding the pinned gRPC packages,
/// created (or brought up to date with requirements.txt) when needed. The environment sees
/// the system's site packages, so pins already installed there are not downloaded again.
fn python_with_grpc() -> PathBuf {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("read requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-grpc-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("remove the outdated virtual environment");
    }
    run_checked(
        Command::new("python3").args(["-m", "venv", "--system-site-packages"]).arg(&venv),
        "creating the Python virtual environment",
    );
    run_checked(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&requirements),
        "installing the Python gRPC packages",
    );
    run_checked(
        Command::new(&python).args(["-c", "import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2"]),
        "importing the installed Python gRPC packages",
    );
    std::fs::write(&marker, wanted).expect("record the installed requirements");
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_grpcio_election_scenario_passes() {
    let python = python_with_grpc();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/election_scenario.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(node.ports.listen.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > SCENARIO_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Python scenario did not finish within {SCENARIO_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().expect("scenario output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python scenario failed ({}):\n{stdout}\n{}\nserver output:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        node.output()
    );
    assert!(stdout.contains("passed, 0 failed"), "the scenario reports its checks:\n{stdout}");
}
