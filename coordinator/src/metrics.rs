//! Histograms for `/metrics`, in the Prometheus text format: lease latency,
//! the CPU time agents report per task and kernel, and how long jobs take
//! per kernel. Fixed buckets, atomic counts: recording costs a few atomic
//! adds on the hot paths, and nothing is allocated after start.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use musketeer_tasks::Kernel;

/// Bucket bounds of the lease latency, in seconds: a lease is a store
/// step of a millisecond or a few, up to a second under load.
const LEASE_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bucket bounds of a task's CPU time: tasks are planned at about 50 ms.
const TASK_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Bucket bounds of a job's duration, submission to result.
const JOB_BOUNDS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
];

/// One histogram.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let at = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Writes the histogram's series (`_bucket`, `_sum`, `_count`) with the
    /// extra labels `labels` (`kernel="matmul"`, or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// One histogram per kernel, for every kernel of the registry.
pub struct ByKernel {
    hists: Vec<(Kernel, Histogram)>,
}

impl ByKernel {
    fn new(bounds: &'static [f64]) -> ByKernel {
        ByKernel {
            hists: Kernel::ALL
                .iter()
                .map(|&k| (k, Histogram::new(bounds)))
                .collect(),
        }
    }

    /// The histogram of `kernel`.
    pub fn of(&self, kernel: Kernel) -> &Histogram {
        &self
            .hists
            .iter()
            .find(|(k, _)| *k == kernel)
            .expect("every kernel has a histogram")
            .1
    }

    /// The histogram of the kernel named `name`, if there is one.
    pub fn named(&self, name: &str) -> Option<&Histogram> {
        self.hists
            .iter()
            .find(|(k, _)| k.name() == name)
            .map(|(_, h)| h)
    }
}

/// The coordinator's histograms.
pub struct Histograms {
    /// The store step that granted a lease with tasks (the long poll's
    /// wait for work left out: that is waiting, not latency).
    pub lease_latency: Histogram,
    /// CPU time agents reported per task, by kernel.
    pub task_cpu: ByKernel,
    /// Submission to result, by kernel, of the jobs this coordinator reduced.
    pub job_duration: ByKernel,
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            lease_latency: Histogram::new(&LEASE_BOUNDS),
            task_cpu: ByKernel::new(&TASK_BOUNDS),
            job_duration: ByKernel::new(&JOB_BOUNDS),
        }
    }
}

impl Histograms {
    /// Writes every histogram with its `# HELP` and `# TYPE` lines.
    pub fn render(&self, out: &mut String) {
        let head = |out: &mut String, name: &str, help: &str| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        };
        let name = "musketeer_lease_latency_seconds";
        head(
            out,
            name,
            "Time the store took to grant a lease that got tasks (the long poll's wait for work excluded).",
        );
        self.lease_latency.render(out, name, "");
        for (name, help, by) in [
            (
                "musketeer_task_cpu_seconds",
                "CPU time agents reported per task, by kernel.",
                &self.task_cpu,
            ),
            (
                "musketeer_job_duration_seconds",
                "Time from submission to result of the jobs this coordinator reduced, by kernel.",
                &self.job_duration,
            ),
        ] {
            head(out, name, help);
            for (kernel, h) in &by.hists {
                h.render(out, name, &format!("kernel=\"{}\"", kernel.name()));
            }
        }
    }
}

/// A label value escaped for the text format.
pub fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_inf() {
        let h = Histogram::new(&LEASE_BOUNDS);
        h.observe(0.0001);
        h.observe(0.003);
        h.observe(100.0);
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 100.0031"), "{out}");
    }

    #[test]
    fn every_kernel_has_its_series() {
        let h = Histograms::default();
        h.task_cpu.of(Kernel::Matmul).observe(0.02);
        let mut out = String::new();
        h.render(&mut out);
        for k in Kernel::ALL {
            assert!(
                out.contains(&format!(
                    "musketeer_task_cpu_seconds_count{{kernel=\"{}\"}}",
                    k.name()
                )),
                "{out}"
            );
        }
        assert!(out.contains("musketeer_task_cpu_seconds_bucket{kernel=\"matmul\",le=\"0.025\"} 1"));
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
