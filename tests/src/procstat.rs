//! CPU time and memory of a process and its descendants, read from Linux's
//! `/proc` by the tests themselves, independently of what the agent says
//! about itself.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `/proc/<pid>/stat` counts in 10 ms ticks (`USER_HZ` is 100 on Linux).
const TICK: Duration = Duration::from_millis(10);

/// The fields of `/proc/<pid>/stat` after the command name, split.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Every live process whose parent chain reaches `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // Field 4 (ppid) is the second after the name.
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parent_of.insert(pid, ppid);
            }
        }
    }
    let mut out: Vec<u32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&child, &ppid) in &parent_of {
            if ppid == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// CPU time of `pid` (utime + stime), plus that of its children it has
/// reaped (cutime + cstime) when `with_reaped`.
fn cpu_of(pid: u32, with_reaped: bool) -> Duration {
    let Some(f) = stat_fields(pid) else {
        return Duration::ZERO;
    };
    // utime, stime, cutime, cstime are fields 14..=17: indices 11..=14 here.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let mut ticks = n(11) + n(12);
    if with_reaped {
        ticks += n(13) + n(14);
    }
    TICK * ticks
}

/// CPU time the tree under `root` has used: `root`, its reaped children,
/// and every live descendant.
pub fn tree_cpu(root: u32) -> Duration {
    cpu_of(root, true)
        + descendants(root)
            .into_iter()
            .map(|p| cpu_of(p, true))
            .sum::<Duration>()
}

/// A `Name: N kB` field of `/proc/<pid>/status`, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident memory of the tree under `root`, summed (shared pages counted
/// once per process, so this is an upper bound).
pub fn tree_rss(root: u32) -> u64 {
    std::iter::once(root)
        .chain(descendants(root))
        .filter_map(|p| status_bytes(p, "VmRSS"))
        .sum()
}

/// Busy CPU time of the whole host so far (every core, every state but
/// idle and I/O wait), from `/proc/stat`.
pub fn host_busy() -> Duration {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u32> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let busy: u32 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, t)| t)
        .sum();
    TICK * busy
}

/// Samples [`tree_rss`] on a thread until dropped, keeping the largest.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling the tree under `root` every `every`.
    pub fn start(root: u32, every: Duration) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(tree_rss(root), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest sample so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a CPU hog (`sh -c 'while :; do :; done'`) until dropped.
pub struct CpuHog(std::process::Child);

impl CpuHog {
    /// Starts one hog, which keeps one core busy.
    pub fn start() -> std::io::Result<CpuHog> {
        std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .map(CpuHog)
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets the niceness of every thread of `root` and of every process under
/// it. Linux keeps a niceness per thread, and a child inherits the one of
/// the thread that started it, so every thread is set, not only the main
/// one. Needs root for a negative value.
pub fn renice_tree(root: u32, nice: i32) -> std::io::Result<()> {
    let mut pids = descendants(root);
    pids.push(root);
    let threads: Vec<String> = pids
        .iter()
        .flat_map(|pid| {
            fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|t| t.file_name().to_string_lossy().into_owned())
        })
        .collect();
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&threads)
        .stdout(std::process::Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "renice -n {nice} failed: {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hog_shows_up_under_its_parent() {
        let me = std::process::id();
        let hog = CpuHog::start().unwrap();
        let pid = hog.0.id();
        assert!(descendants(me).contains(&pid));
        // It burns CPU (however busy the machine, it gets some in time).
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while cpu_of(pid, false) < Duration::from_millis(50) {
            assert!(std::time::Instant::now() < end, "the hog never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(tree_rss(me) > status_bytes(me, "VmRSS").unwrap());
        drop(hog);
        assert!(!descendants(me).contains(&pid));
    }
}
