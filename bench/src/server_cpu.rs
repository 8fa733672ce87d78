//! The CPU time of the server processes under test, read from `/proc/PID/stat` (user +
//! system time of every thread) at the start and the end of a run's measured phase, so a
//! report can give the servers' CPU per operation beside its throughput and latency. It
//! needs the processes on this machine (the bench scripts run everything on loopback).

use std::time::Duration;

/// CPU time the processes `pids` have used so far, or `None` if one cannot be read.
pub fn cpu_time(pids: &[i32]) -> Option<Duration> {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks_per_sec = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let mut ticks = 0u64;
    for pid in pids {
        ticks += process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_sec))
}

/// utime + stime (fields 14 and 15) of one `/proc/PID/stat` line, in clock ticks. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, i.e. index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Samples the processes' CPU time at the start of a measured phase.
pub struct CpuWindow {
    pids: Vec<i32>,
    start: Option<Duration>,
}

impl CpuWindow {
    pub fn start(pids: &[i32]) -> CpuWindow {
        CpuWindow { pids: pids.to_vec(), start: if pids.is_empty() { None } else { cpu_time(pids) } }
    }

    /// Seconds of CPU the processes used since `start` (None without pids, or if a process
    /// could not be read, e.g. it died).
    pub fn seconds(&self) -> Option<f64> {
        let start = self.start?;
        Some(cpu_time(&self.pids)?.saturating_sub(start).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 1 0";
        assert_eq!(process_ticks(stat), Some(290));
    }

    #[test]
    fn this_process_shows_the_cpu_it_burns() {
        let pid = std::process::id() as i32;
        let before = cpu_time(&[pid]).expect("this process is readable");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until the kernel has counted at least one more tick (bounded).
        while cpu_time(&[pid]).unwrap() <= before {
            assert!(started.elapsed() < Duration::from_secs(5), "no CPU counted in 5 s of spinning");
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        assert!(x != 1);
        assert_eq!(cpu_time(&[pid, -1]), None, "an unreadable process gives no figure");
    }
}
