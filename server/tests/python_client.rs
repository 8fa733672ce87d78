//! A standard non-Rust gRPC client against `conclave serve`: runs the Python `grpcio`
//! election scenario (`server/tests/python/election_scenario.py`) against a started server
//! and requires it to pass. `.ci/run` installs its modules first
//! (`pip install -r server/tests/python/requirements.txt`).
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Node, NodeOptions, TestDir};

const INSTALL_HINT: &str = "pip install -r server/tests/python/requirements.txt";
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// Fails with the install command when python3 or the gRPC modules are missing.
fn check_python_modules() {
    let output = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Python 3, then run `{INSTALL_HINT}`"));
    assert!(
        output.status.success(),
        "the Python gRPC modules are missing; run `{INSTALL_HINT}`:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_grpcio_election_scenario_passes() {
    check_python_modules();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/election_scenario.py");
    let mut child = Command::new("python3")
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
