//! What the edge fuzzer measures of the `conclave serve` process it attacks: whether it
//! is alive, its resident memory, its open sockets (client connections hold one each), and
//! gauges of its own `/metrics` (client sessions, watch streams).
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Whether process `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Sockets `pid` holds open (listeners, peers, clients).
pub fn open_sockets(pid: i32) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:")))
        .count()
}

/// The value of an unlabelled gauge or counter in the server's `/metrics`.
pub fn metric(metrics: SocketAddr, name: &str) -> f64 {
    let mut stream = TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(15))).expect("read timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("send the scrape");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the scrape");
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from the scrape:\n{answer}"))
}
