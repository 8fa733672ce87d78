//! A standard non-Rust gRPC client against `conclave serve`: runs the Python `grpcio`
//! election scenario (`server/tests/python/election_scenario.py`) against a started server
//! and requires it to pass. On first use the test installs the pinned packages of
//! `server/tests/python/requirements.txt` into a virtual environment under `target/`, so a
//! machine needs only Python 3 with `venv` and pip.
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::python::python_with_grpc;
use support::{Node, NodeOptions, TestDir};

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

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
