//! `engine-bench` runs end to end: on every core it may use (at most two), with the server's
//! snapshot policy, a short run commits commands, fails none and takes snapshots, so the
//! benchmark the engine's figures come from (tuning.md, "The engine alone") cannot rot
//! unnoticed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The number after `label` on the line that starts with it.
fn figure(output: &str, label: &str) -> f64 {
    let line = output.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line in:\n{output}"));
    let rest = line[label.len()..].trim_start();
    let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    number.parse().unwrap_or_else(|e| panic!("{label:?} in {line:?}: {e}"))
}

#[test]
fn a_short_run_commits_on_every_core_and_snapshots() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine-bench"))
        .args(["--dir", dir.path().to_str().unwrap(), "--cores", &cores.to_string()])
        .args(["--groups", "4", "--proposers-per-group", "16", "--seconds", "1", "--snapshot-every", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine-bench starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("engine-bench did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "engine-bench failed ({status}):\n{out}\n{err}");
    assert!(out.contains(&format!("{cores} core(s)")), "{out}");
    assert!(figure(&out, "committed commands/s:") > 0.0, "{out}");
    assert_eq!(figure(&out, "failed commands:"), 0.0, "{out}");
    assert!(figure(&out, "snapshots:") > 0.0, "groups snapshot every 100 entries:\n{out}");
    assert!(figure(&out, "process CPU per command:") > 0.0, "{out}");
}
