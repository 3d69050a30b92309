//! What Linux's `/proc` says about CPU time and memory, read without
//! allocating much: the supervisor reads it a hundred times a second.
//!
//! On other systems every reader returns `None`, and the limits that need
//! it (the duty cycle's measurement, stepping aside, the memory backstop)
//! fall back to doing nothing rather than guessing.

use std::fs;
use std::time::Duration;

/// `/proc/stat` and `/proc/<pid>/stat` count in `USER_HZ` ticks, which
/// Linux fixes at 100 a second for user space whatever the kernel's own HZ.
const TICK: Duration = Duration::from_millis(10);

/// CPU time a process (one whose worker runs on its main thread) has used,
/// from `/proc/<pid>/schedstat` (nanoseconds), or from `/proc/<pid>/stat`
/// (10 ms ticks) when the kernel does not keep schedstat.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/schedstat")) {
        if let Some(ns) = parse_schedstat(&text) {
            return Some(Duration::from_nanos(ns));
        }
    }
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text)
}

/// Resident memory of a process, from `/proc/<pid>/status` (`VmRSS`).
pub fn process_rss(pid: u32) -> Option<u64> {
    status_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

/// Resident memory of this process.
pub fn own_rss() -> Option<u64> {
    status_field(&fs::read_to_string("/proc/self/status").ok()?, "VmRSS:")
}

/// The most resident memory this process has held (`VmHWM`).
pub fn own_peak_rss() -> Option<u64> {
    status_field(&fs::read_to_string("/proc/self/status").ok()?, "VmHWM:")
}

/// The host's CPU time so far: busy (every state but idle and I/O wait) and
/// the number of cores it is spread over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCpu {
    /// Busy time summed over every core.
    pub busy: Duration,
    /// Cores the host has (the `cpuN` lines).
    pub cores: u32,
}

/// Reads `/proc/stat`.
pub fn host_cpu() -> Option<HostCpu> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").ok()?)
}

/// The first field of `/proc/<pid>/schedstat`: time spent on a CPU, in ns.
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// utime + stime from `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(text: &str) -> Option<Duration> {
    let rest = &text[text.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; utime and stime are 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u32 = fields.next()?.parse().ok()?;
    let stime: u32 = fields.next()?.parse().ok()?;
    Some(TICK * (utime + stime))
}

/// A `Name:   123 kB` line of `/proc/<pid>/status`, in bytes.
fn status_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn parse_proc_stat(text: &str) -> Option<HostCpu> {
    let mut lines = text.lines();
    let total = lines.next()?;
    let mut fields = total.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    if ticks.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user, so it is left out.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, t)| t)
        .sum();
    let cores = lines
        .take_while(|l| l.starts_with("cpu"))
        .filter(|l| l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Some(HostCpu {
        busy: TICK * u32::try_from(busy).unwrap_or(u32::MAX),
        cores: cores.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_is_nanoseconds_on_cpu() {
        assert_eq!(parse_schedstat("123456789 5000 42\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn stat_cpu_skips_a_command_name_with_spaces() {
        let line = "4242 (my (odd) prog) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 30 0 0 20 0 1 0 100 1000 200";
        assert_eq!(parse_stat_cpu(line), Some(Duration::from_millis(2800)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_fields_are_in_kib() {
        let text = "Name:\tmusketeer\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field(text, "VmRSS:"), Some(10 << 20));
        assert_eq!(status_field(text, "VmHWM:"), Some(20 << 20));
        assert_eq!(status_field(text, "VmSwap:"), None);
    }

    #[test]
    fn proc_stat_counts_busy_ticks_and_cores() {
        let text = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\ncpu1 50 3 25 500 10 2 1 1 0 0\nintr 1 2 3\n";
        let host = parse_proc_stat(text).unwrap();
        assert_eq!(host.cores, 2);
        assert_eq!(host.busy, TICK * (100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_can_be_read() {
        assert!(own_rss().unwrap() > 0);
        assert!(own_peak_rss().unwrap() >= own_rss().unwrap() / 2);
        assert!(process_cpu(std::process::id()).is_some());
        let host = host_cpu().unwrap();
        assert!(host.cores >= 1);
    }
}
