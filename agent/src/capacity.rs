//! What this host offers: its cores and memory, less the owner's limits.

use musketeer_tasks::job::DEFAULT_QUEUE;
use musketeer_tasks::protocol::Capacity;

use crate::config::Limits;

/// The host's own resources, before limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Cores this process may run on (affinity and cgroup quota included).
    pub cpus: u32,
    /// Bytes of memory: the machine's, or its cgroup's limit when lower.
    pub memory_bytes: u64,
    /// The host's name.
    pub hostname: String,
}

impl Host {
    /// Reads the host's resources.
    pub fn detect() -> Host {
        use sysinfo::{MemoryRefreshKind, RefreshKind, System};

        // `available_parallelism` honours CPU affinity and cgroup quotas, so a
        // container started with `--cpus 2` counts 2, not the machine's cores.
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let system = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let mut memory_bytes = system.total_memory();
        // A container's memory limit is what the kernel enforces, whatever
        // the machine has.
        if let Some(cgroup) = system.cgroup_limits() {
            if cgroup.total_memory > 0 {
                memory_bytes = memory_bytes.min(cgroup.total_memory);
            }
        }
        Host {
            cpus,
            memory_bytes,
            hostname: System::host_name().unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// The capacity `host` advertises under `limits`: each limit can only lower
/// what the host has.
pub fn capacity(host: &Host, limits: &Limits) -> Capacity {
    let cpus = limits.cpus.map_or(host.cpus, |c| c.min(host.cpus)).max(1);
    let memory_bytes = limits
        .memory_bytes
        .map_or(host.memory_bytes, |m| m.min(host.memory_bytes));
    let queues = if limits.queues.is_empty() {
        vec![DEFAULT_QUEUE.to_string()]
    } else {
        limits.queues.clone()
    };
    Capacity {
        cpus,
        memory_bytes,
        arch: std::env::consts::ARCH.to_string(),
        os: std::env::consts::OS.to_string(),
        hostname: host.hostname.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        queues,
        labels: limits.labels.clone(),
    }
}

/// The capacity this host advertises under `limits`.
pub fn detect(limits: &Limits) -> Capacity {
    let host = Host::detect();
    if let Some(wanted) = limits.cpus.filter(|&c| c > host.cpus) {
        tracing::warn!(
            "--cpus {wanted} is more than the {} cores available: using {}",
            host.cpus,
            host.cpus
        );
    }
    capacity(&host, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpus: 4,
            memory_bytes: 8 << 30,
            hostname: "pi".into(),
        }
    }

    #[test]
    fn limits_only_lower_what_the_host_has() {
        let c = capacity(&host(), &Limits::default());
        assert_eq!((c.cpus, c.memory_bytes), (4, 8 << 30));
        assert_eq!(c.queues, vec!["default".to_string()]);
        assert_eq!(c.hostname, "pi");
        assert_eq!(c.os, std::env::consts::OS);

        let limits = Limits {
            cpus: Some(2),
            memory_bytes: Some(1 << 30),
            queues: vec!["gpu".into()],
            ..Limits::default()
        };
        let c = capacity(&host(), &limits);
        assert_eq!((c.cpus, c.memory_bytes), (2, 1 << 30));
        assert_eq!(c.queues, vec!["gpu".to_string()]);

        let greedy = Limits {
            cpus: Some(64),
            memory_bytes: Some(1 << 40),
            ..Limits::default()
        };
        let c = capacity(&host(), &greedy);
        assert_eq!((c.cpus, c.memory_bytes), (4, 8 << 30));
    }

    #[test]
    fn this_host_has_something_to_offer() {
        let h = Host::detect();
        assert!(h.cpus >= 1);
        assert!(h.memory_bytes > 0);
    }
}
