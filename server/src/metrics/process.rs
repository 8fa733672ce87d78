//! The standard `process_*` metrics of a Prometheus exporter, as the Go and Java clients
//! (and so etcd) export them: CPU seconds, resident and virtual memory, open and maximum
//! file descriptors, start time. Read from `/proc/self` at each scrape; on a system without
//! procfs (or a line it cannot parse) a scrape simply leaves out what it could not read.

use std::path::Path;

/// What `/proc/self` says of this process at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    /// Start of the process, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

/// The fields of `/proc/PID/stat` this module reads.
#[derive(Clone, Copy, Debug, PartialEq)]
struct StatFields {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks_since_boot: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted from its last `)`.
fn parse_stat(line: &str) -> Option<StatFields> {
    let after_comm = &line[line.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; utime is field 14.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks_since_boot: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of "Max open files" from `/proc/PID/limits` ("unlimited" gives none).
fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a system constant and has no memory effects.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|&v| v > 0)
}

/// This process's figures now.
pub fn read() -> ProcessStats {
    let dir = Path::new("/proc/self");
    let stat = std::fs::read_to_string(dir.join("stat")).ok().and_then(|line| parse_stat(&line));
    let ticks_per_second = sysconf(libc::_SC_CLK_TCK);
    let page_bytes = sysconf(libc::_SC_PAGESIZE);
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| parse_boot_time(&text));
    ProcessStats {
        cpu_seconds: stat.zip(ticks_per_second).map(|(s, hz)| (s.utime_ticks + s.stime_ticks) as f64 / hz as f64),
        resident_memory_bytes: stat.zip(page_bytes).map(|(s, page)| s.resident_pages * page),
        virtual_memory_bytes: stat.map(|s| s.virtual_bytes),
        start_time_seconds: stat
            .zip(ticks_per_second)
            .zip(boot_time)
            .map(|((s, hz), boot)| boot as f64 + s.start_ticks_since_boot as f64 / hz as f64),
        open_fds: std::fs::read_dir(dir.join("fd")).ok().map(|entries| entries.count() as u64),
        max_fds: std::fs::read_to_string(dir.join("limits")).ok().and_then(|text| parse_max_open_files(&text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (conclave (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 \
                    123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let fields = parse_stat(line).expect("parsed");
        assert_eq!(
            fields,
            StatFields {
                utime_ticks: 250,
                stime_ticks: 75,
                start_ticks_since_boot: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048
            }
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn boot_time_and_the_open_files_limit_are_found() {
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764806400\nprocesses 9\n"), Some(1_764_806_400));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95614                95614                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(parse_max_open_files("Max open files            unlimited            unlimited            files\n"), None);
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let before = read();
        // Burn CPU until the counter moves (it counts in ticks of 10 ms), at most 2 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let after = loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            let now = read();
            if now.cpu_seconds > before.cpu_seconds || started.elapsed() > std::time::Duration::from_secs(2) {
                break now;
            }
        };
        std::hint::black_box(x);
        let cpu = after.cpu_seconds.expect("cpu seconds");
        assert!(cpu > 0.0 && cpu > before.cpu_seconds.expect("cpu seconds"), "{before:?} {after:?}");
        assert!(after.resident_memory_bytes.expect("rss") > 0);
        assert!(after.virtual_memory_bytes.expect("vsize") >= after.resident_memory_bytes.unwrap());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = after.start_time_seconds.expect("start time");
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0, "start {start}, now {now}");
        assert!(after.open_fds.expect("open fds") >= 3);
        if let Some(max_fds) = after.max_fds {
            assert!(max_fds >= after.open_fds.unwrap());
        }
    }
}
