//! The server's log output when stderr is not a terminal (a file, as under a service
//! manager or a log shipper): text lines carry no ANSI escape, and `--log-format json`
//! writes one JSON object per line, fatal errors included.
mod support;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{serve_args, NodeOptions, Ports, TestDir, READY_TIMEOUT, STOP_TIMEOUT};

const ESC: u8 = 0x1b;

/// Runs `conclave [format flags] serve ...` at log level info with stdout and stderr in
/// files, waits until it says it is ready, stops it with SIGTERM, and returns its stderr.
fn serve_and_stop(dir: &TestDir, format: &[&str]) -> Vec<u8> {
    let ports = Ports::fresh();
    let stdout_path = dir.path().join(format!("stdout-{}.log", ports.listen.port()));
    let stderr_path = dir.path().join(format!("stderr-{}.log", ports.listen.port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(format)
        .args(serve_args(&NodeOptions::default(), &ports, &dir.data_dir()))
        .env("CONCLAVE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn conclave");
    let read = |path: &Path| std::fs::read(path).unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !String::from_utf8_lossy(&read(&stdout_path)).contains("ready") {
        if child.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "conclave did not get ready:\n{}\n{}",
                String::from_utf8_lossy(&read(&stdout_path)),
                String::from_utf8_lossy(&read(&stderr_path))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + STOP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("conclave did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "conclave stops cleanly: {status}");
    read(&stderr_path)
}

#[test]
fn text_logs_to_a_file_carry_no_ansi_escapes() {
    let dir = TestDir::new();
    let stderr = serve_and_stop(&dir, &[]);
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains("INFO"), "info lines were logged:\n{text}");
    assert!(!stderr.contains(&ESC), "no ANSI escape in logs written to a file:\n{text:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TestDir::new();
    let stderr = serve_and_stop(&dir, &["--log-format", "json"]);
    let text = String::from_utf8(stderr).expect("UTF-8 logs");
    assert!(!text.contains(ESC as char), "no ANSI escape in JSON logs");
    let mut infos = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(object[key].is_string(), "log line without {key}: {line}");
        }
        assert!(object["message"].is_string(), "log line without a message: {line}");
        infos += usize::from(object["level"] == "INFO");
    }
    assert!(infos > 0, "info lines were logged:\n{text}");

    // A fatal configuration error is a JSON line too.
    let output = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["--log-format", "json", "serve", "--partitions", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run conclave");
    assert_eq!(output.status.code(), Some(2), "a bad flag exits 2");
    let line = String::from_utf8(output.stderr).expect("UTF-8");
    let object: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("the error is a JSON line ({e}): {line}"));
    assert_eq!(object["level"], "ERROR", "{line}");
    assert!(object["message"].as_str().is_some_and(|m| m.contains("partitions")), "the error names the flag: {line}");
}
