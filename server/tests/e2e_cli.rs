//! The command-line client (`conclave elect|leader|watch|anoint|promote|demote|evict|withdraw`
//! and `conclave node status|bootstrap|join|leave|events`) run as processes against real
//! servers: every election command with text and JSON output, `elect` held until SIGINT or
//! SIGTERM and then withdrawn, `watch` printing every change, one-line errors with the gRPC
//! code and their exit statuses, `--endpoints` failing over to the next endpoint (one that
//! is down at connect time, and a `watch` whose node is killed), and the node commands on a
//! three-node cluster.
mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{Cluster, ClusterOptions};
use support::{free_port, Node, NodeOptions, TestDir};

/// Bound of one short command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of waiting for a line from a long-running command.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

fn conclave() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_conclave"));
    command.env("CONCLAVE_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs a short command to its end (bounded).
fn run(args: &[&str]) -> Output {
    let mut child = conclave().args(args).spawn().expect("spawn conclave");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("conclave {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Runs a command that must succeed; its stdout.
fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "conclave {args:?} failed ({}):\n{stdout}{}", output.status, String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Runs a command that must fail with exit status `exit` and one line on stderr naming
/// `code`; that line.
fn run_failing(args: &[&str], exit: i32, code: &str) -> String {
    let output = run(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(exit), "conclave {args:?}: exit status (stderr: {stderr})");
    assert!(output.stdout.is_empty(), "conclave {args:?} printed no result: {}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(stderr.lines().count(), 1, "conclave {args:?}: the error is one line:\n{stderr}");
    assert!(stderr.starts_with(&format!("conclave: {code}: ")), "conclave {args:?}: the error names {code}: {stderr}");
    stderr.trim_end().to_owned()
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// A long-running command (elect, watch, node events) whose stdout lines are read as they
/// come. Killed and reaped on drop.
struct Running {
    args: Vec<String>,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = conclave().args(args).spawn().expect("spawn conclave");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("stderr lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Running { args: args.iter().map(|a| a.to_string()).collect(), child: Some(child), lines, seen: Vec::new(), stderr }
    }

    /// Waits (bounded) for a new stdout line matching `matches`; returns it.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "conclave {:?}: no line with {what} within {LINE_TIMEOUT:?}; printed:\n{}\nstderr:\n{}",
                    self.args,
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.as_ref().expect("running").id()).expect("pid");
        // SAFETY: our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
    }

    /// Waits (bounded) for the exit; the status and every stdout line not read yet.
    fn exit(&mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("conclave {:?} did not exit within {COMMAND_TIMEOUT:?}", self.args);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = Vec::new();
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line.clone());
            rest.push(line);
        }
        (status, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (term, leader, candidates) of a JSON term line.
fn state(line: &str) -> (u64, String, Vec<String>) {
    let v = json_line(line);
    let candidates = v["candidates"].as_array().expect("candidates").iter().map(|c| c.as_str().expect("name").to_owned()).collect();
    (v["term"].as_u64().expect("term"), v["leader"].as_str().expect("leader").to_owned(), candidates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_commands_run_end_to_end() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let ep = format!("--endpoints={}", node.ports.listen);
    let ep = ep.as_str();

    let error = run_failing(&["leader", "job", ep], 1, "NOT_FOUND");
    assert!(error.contains("job"), "the error names the election: {error}");

    let mut alice = Running::spawn(&["elect", "job", "alice", ep]);
    let first = alice.wait_for("alice leading", |l| l.contains("leader=alice") && l.ends_with("leading=true"));
    assert_eq!(first, "term=1 leader=alice candidates=alice leading=true");
    let mut watch = Running::spawn(&["watch", "job", ep, "--json"]);
    watch.wait_for("the first state", |l| state(l) == (1, "alice".into(), vec!["alice".into()]));
    let mut bob = Running::spawn(&["elect", "job", "bob", ep, "--json"]);
    let line = bob.wait_for("bob entered behind alice", |l| json_line(l)["leading"] == json!(false));
    assert_eq!(state(&line), (1, "alice".into(), vec!["alice".into(), "bob".into()]));

    let read = json_line(&run_ok(&["leader", "job", ep, "--json"]));
    assert_eq!(read, json!({ "term": 1, "leader": "alice", "candidates": ["alice", "bob"] }));
    assert_eq!(run_ok(&["promote", "job", "bob", ep]), "term=2 leader=bob candidates=bob,alice\n");
    bob.wait_for("bob leading", |l| json_line(l)["leading"] == json!(true));
    alice.wait_for("alice no longer leading", |l| l == "term=2 leader=bob candidates=bob,alice leading=false");
    assert_eq!(run_ok(&["demote", "job", "bob", ep]), "term=3 leader=alice candidates=alice,bob\n");
    assert_eq!(
        json_line(&run_ok(&["anoint", "job", "bob", ep, "--json"])),
        json!({ "term": 4, "leader": "bob", "candidates": ["bob", "alice"] })
    );
    // An unknown candidate changes nothing and answers the state.
    assert_eq!(run_ok(&["evict", "job", "carol", ep]), "term=4 leader=bob candidates=bob,alice\n");
    assert_eq!(run_ok(&["withdraw", "job", "carol", ep]), "term=4 leader=bob candidates=bob,alice\n");
    run_failing(&["anoint", "job", "", ep], 1, "INVALID_ARGUMENT");
    let usage = run_failing(&["leader", "job", "--endpoints", "nohost"], 2, "USAGE");
    assert!(usage.contains("nohost"), "{usage}");

    // Ctrl-C: alice withdraws and exits 0; bob stays leader.
    alice.signal(libc::SIGINT);
    let (status, rest) = alice.exit();
    assert!(status.success(), "elect exits 0 after Ctrl-C: {status}\n{}", alice.stderr());
    assert_eq!(rest.last().map(String::as_str), Some("withdrawn candidate=alice term=4 leader=bob candidates=bob"), "{rest:?}");
    assert_eq!(run_ok(&["leader", "job", ep]), "term=4 leader=bob candidates=bob\n");
    // SIGTERM does the same.
    bob.signal(libc::SIGTERM);
    let (status, rest) = bob.exit();
    assert!(status.success(), "elect exits 0 after SIGTERM: {status}\n{}", bob.stderr());
    let last = json_line(rest.last().expect("the withdrawal is printed"));
    assert_eq!(last, json!({ "event": "withdrawn", "candidate": "bob", "term": 4, "leader": "", "candidates": [] }));

    // The watch printed every change, in order, none twice.
    watch.wait_for("the empty election", |l| state(l).2.is_empty());
    watch.signal(libc::SIGINT);
    let (status, _) = watch.exit();
    assert!(status.success(), "watch exits 0 after Ctrl-C: {status}");
    let states: Vec<(u64, String, Vec<String>)> = watch.seen.iter().map(|l| state(l)).collect();
    let expected: Vec<(u64, &str, &[&str])> = vec![
        (1, "alice", &["alice"]),
        (1, "alice", &["alice", "bob"]),
        (2, "bob", &["bob", "alice"]),
        (3, "alice", &["alice", "bob"]),
        (4, "bob", &["bob", "alice"]),
        (4, "bob", &["bob"]),
        (4, "", &[]),
    ];
    let expected: Vec<(u64, String, Vec<String>)> =
        expected.into_iter().map(|(t, l, c)| (t, l.to_owned(), c.iter().map(|s| s.to_string()).collect())).collect();
    assert_eq!(states, expected, "every change, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_fail_over_to_the_next_one() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    // Ports that were free a moment ago: nothing listens there.
    let (dead1, dead2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let eps = format!("--endpoints={dead1},{}", node.ports.listen);
    let eps = eps.as_str();

    let mut alice = Running::spawn(&["elect", "failover", "alice", eps]);
    alice.wait_for("alice leading through the second endpoint", |l| l.ends_with("leading=true"));
    assert_eq!(json_line(&run_ok(&["leader", "failover", eps, "--json"]))["leader"], json!("alice"));
    assert_eq!(run_ok(&["evict", "failover", "alice", eps]), "term=1 leader=(none) candidates=(none)\n");
    alice.wait_for("alice evicted", |l| l == "term=1 leader=(none) candidates=(none) leading=false");
    alice.signal(libc::SIGINT);
    let (status, _) = alice.exit();
    assert!(status.success(), "{status}: {}", alice.stderr());

    let both_down = format!("--endpoints={dead1},{dead2}");
    let error = run_failing(&["leader", "failover", &both_down], 1, "UNAVAILABLE");
    assert!(error.contains(&dead1) && error.contains(&dead2), "the error names every endpoint tried: {error}");
    let error = run_failing(&["node", "status", &format!("--endpoints={dead1}")], 1, "UNAVAILABLE");
    assert!(error.contains(&dead1), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_commands_and_watch_failover_on_a_cluster() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let partitions = cluster.options.partitions;
    let admin = |id: u32| format!("--endpoints={}", cluster.member(id).ports.admin);
    let peer = |id: u32| cluster.member(id).ports.peer.to_string();
    let clients: Vec<String> = cluster.ids().iter().map(|&id| cluster.member(id).ports.listen.to_string()).collect();
    let client = |id: u32| clients[(id - 1) as usize].clone();

    // Status: health and every client partition with a leader.
    let status = run_ok(&["node", "status", &admin(1)]);
    let mut status_lines = status.lines();
    assert_eq!(status_lines.next(), Some(format!("health=SERVING groups={partitions}").as_str()), "{status}");
    for (line, group) in status_lines.zip(1..) {
        assert!(line.starts_with(&format!("group={group} ready=true term=")) && !line.ends_with("leader=0"), "{status}");
    }

    let mut events = Running::spawn(&["node", "events", &admin(1), "--json"]);
    for group in 1..=partitions {
        events.wait_for("the current state", |l| json_line(l)["event"] == json!("member_ready") && json_line(l)["group"] == json!(group));
    }

    // A new group on nodes 1 and 2, then node 3 joins it as an observer and leaves it.
    let group = partitions + 1;
    let g = group.to_string();
    for id in [1, 2] {
        let done = run_ok(&["node", "bootstrap", &g, &format!("1={}", peer(1)), &format!("2={}", peer(2)), &admin(id)]);
        assert_eq!(done, format!("bootstrap group={group} node={}\n", cluster.member(id).ports.admin));
    }
    events.wait_for("the new group's member_ready", |l| {
        json_line(l)["event"] == json!("member_ready") && json_line(l)["group"] == json!(group)
    });
    let led = events.wait_for("the new group's leader", |l| {
        let event = json_line(l);
        event["event"] == json!("leader_updated") && event["group"] == json!(group) && event["leader"] != json!(0)
    });
    assert!([1, 2].contains(&json_line(&led)["leader"].as_u64().expect("leader")), "{led}");
    run_ok(&["node", "join", &g, &format!("1={}", peer(1)), &format!("2={}", peer(2)), &format!("3={}/observer", peer(3)), &admin(3)]);
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        let status = json_line(&run_ok(&["node", "status", &admin(3), "--json"]));
        let joined = status["groups"].as_array().expect("groups").iter().find(|g| g["group"] == json!(group)).cloned();
        if joined.as_ref().is_some_and(|g| g["ready"] == json!(true) && [1, 2].contains(&g["leader"].as_u64().unwrap_or(0))) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 reports group {group} ready and led: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(run_ok(&["node", "leave", &g, &admin(3)]), format!("leave group={group} node={}\n", cluster.member(3).ports.admin));
    let two = format!("--endpoints={},{}", cluster.member(1).ports.admin, cluster.member(3).ports.admin);
    run_failing(&["node", "leave", &g, &two], 2, "USAGE");
    run_failing(&["node", "bootstrap", "0", "1=h:1", &admin(1)], 2, "USAGE");
    events.signal(libc::SIGINT);
    let (status, _) = events.exit();
    assert!(status.success(), "node events exits 0 after Ctrl-C: {status}\n{}", events.stderr());

    // A watch through node 1 moves to node 2 when node 1 dies; a candidacy held through
    // node 1 is lost with it (its elect fails), one held through node 2 stays.
    let mut alice = Running::spawn(&["elect", "fo", "alice", &format!("--endpoints={}", client(2))]);
    alice.wait_for("alice leading", |l| l.ends_with("leading=true"));
    let mut carol = Running::spawn(&["elect", "fo", "carol", &format!("--endpoints={}", client(1))]);
    carol.wait_for("carol entered", |l| l.ends_with("leading=false"));
    let mut watch = Running::spawn(&["watch", "fo", &format!("--endpoints={},{}", client(1), client(2)), "--json"]);
    watch.wait_for("alice and carol", |l| state(l).2 == ["alice", "carol"]);
    cluster.kill9(1);
    let (status, _) = carol.exit();
    assert_eq!(status.code(), Some(1), "elect fails when its node dies: {}", carol.stderr());
    let said = carol.stderr();
    assert!(said.starts_with("conclave: UNAVAILABLE: lost ") && said.lines().count() == 1, "{said}");
    let mut bob = Running::spawn(&["elect", "fo", "bob", &format!("--endpoints={}", client(3))]);
    bob.wait_for("bob entered", |l| l.ends_with("leading=false"));
    watch.wait_for("bob, seen through node 2", |l| state(l).2.contains(&"bob".to_owned()));
    assert!(watch.stderr().contains("lost "), "the watch says it moved: {}", watch.stderr());
    for running in [&mut alice, &mut bob, &mut watch] {
        running.signal(libc::SIGINT);
        let (status, _) = running.exit();
        assert!(status.success(), "{:?}: {status}\n{}", running.args, running.stderr());
    }
}
