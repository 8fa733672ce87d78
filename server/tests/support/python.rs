//! The test suite's Python: a virtual environment under `target/` with the pinned packages
//! of `server/tests/python/requirements.txt` (grpcio for the election scenario, and
//! `prometheus-client`, whose parsers read the metrics listener's output).

use std::path::{Path, PathBuf};
use std::process::Command;

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
pub fn python_with_grpc() -> PathBuf {
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
        Command::new(&python).args(["-c", "import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2, prometheus_client.parser"]),
        "importing the installed Python gRPC packages",
    );
    std::fs::write(&marker, wanted).expect("record the installed requirements");
    python
}
