//! `musketeer bench`: each kernel's built-in sample, planned and run here on
//! one core, measured against the planner's estimate; and one function, a
//! prime count, run natively and interpreted by the agent's WebAssembly
//! engine, side by side.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use musketeer_tasks::job::parse_job;
use musketeer_tasks::protocol::TaskOutcome;

use musketeer_tasks::wasm::{Compiled, Limits};

use crate::executor::run_input;

/// The interpreted kernel: item `k` counts the primes in
/// `[1000k, 1000k + 1000)` by trial division (`bench/primes.wat`,
/// assembled by `build.rs`).
pub const PRIMES_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/primes.wasm"));
/// Blocks of a thousand integers the twin benchmark counts primes in.
pub const PRIME_BLOCKS: u32 = 200;

/// The interpreted kernel's native twin: the same trial division.
pub fn primes_native(k: u32) -> u32 {
    let mut count = 0;
    for n in k * 1000..k * 1000 + 1000 {
        if n < 2 {
            continue;
        }
        let mut d = 2u32;
        let mut prime = 1;
        while d * d <= n {
            if n % d == 0 {
                prime = 0;
                break;
            }
            d += 1;
        }
        count += prime;
    }
    count
}

/// The same function, native and interpreted.
#[derive(Clone, Debug, PartialEq)]
pub struct TwinRow {
    /// Items (blocks) per round.
    pub items: u32,
    /// Rounds run of each.
    pub rounds: u32,
    /// Time the native rounds took.
    pub native: Duration,
    /// Time the interpreted rounds took, compilation and instantiation included.
    pub wasm: Duration,
    /// Fuel one interpreted round burnt.
    pub fuel_per_round: u64,
}

impl TwinRow {
    /// How many times slower the interpreter is.
    pub fn slowdown(&self) -> f64 {
        self.wasm.as_secs_f64() / self.native.as_secs_f64().max(1e-9)
    }

    /// Fuel the interpreter burns per second on this core.
    pub fn fuel_per_s(&self) -> f64 {
        self.fuel_per_round as f64 * f64::from(self.rounds) / self.wasm.as_secs_f64().max(1e-9)
    }
}

/// Counts primes in `blocks` blocks natively and with the interpreter,
/// checking that both agree, for at least `min_time` each.
pub fn bench_primes(blocks: u32, min_time: Duration) -> Result<TwinRow, String> {
    let items: Vec<String> = (0..blocks).map(|k| k.to_string()).collect();
    let limits = Limits {
        fuel: u64::MAX / 2,
        ..Limits::default()
    };
    let mut row = TwinRow {
        items: blocks,
        rounds: 0,
        native: Duration::ZERO,
        wasm: Duration::ZERO,
        fuel_per_round: 0,
    };
    let start = Instant::now();
    let mut native = Vec::new();
    while row.rounds == 0 || start.elapsed() < min_time {
        native = (0..blocks)
            .map(primes_native)
            .map(std::hint::black_box)
            .collect();
        row.rounds += 1;
    }
    row.native = start.elapsed();
    let start = Instant::now();
    for _ in 0..row.rounds {
        let out = Compiled::new(PRIMES_WASM, &limits)
            .and_then(|c| c.map(&items, 0))
            .map_err(|e| e.to_string())?;
        row.fuel_per_round = out.fuel_used;
        let counts: Vec<u32> = out.outputs.iter().filter_map(|o| o.parse().ok()).collect();
        if counts != native {
            return Err(format!(
                "the interpreted and native prime counts differ: {:?} vs {:?}",
                &counts[..counts.len().min(5)],
                &native[..native.len().min(5)]
            ));
        }
    }
    row.wasm = start.elapsed();
    Ok(row)
}

/// The twin benchmark as lines for a person.
pub fn render_twin(row: &TwinRow) -> String {
    let per = |d: Duration| d.as_secs_f64() / f64::from(row.rounds.max(1));
    format!(
        "\nprime count of {} x 1000 integers by trial division, one core:\n\
         {:<10} {:>8.4} s per round\n\
         {:<10} {:>8.4} s per round  {:.1}x the native time, {:.3e} fuel/s\n",
        row.items,
        "native",
        per(row.native),
        "wasm",
        per(row.wasm),
        row.slowdown(),
        row.fuel_per_s()
    )
}

/// Run each sample again and again for at least this long: the samples take
/// well under a millisecond each, too short to time once.
pub const MIN_BENCH_TIME: Duration = Duration::from_millis(500);

/// One kernel's measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    /// The kernel.
    pub kernel: String,
    /// Tasks run (the sample's tasks, as many times over as fit in the bench time).
    pub tasks: usize,
    /// Tasks that failed.
    pub failed: usize,
    /// The planner's estimate of their work, in [`musketeer_tasks::Cost::work`] units.
    pub work: u64,
    /// Time they took, one after another on one core.
    pub elapsed: Duration,
}

impl BenchRow {
    /// Tasks per second on one core.
    pub fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Work units per second on one core.
    pub fn work_per_s(&self) -> f64 {
        self.work as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The estimate over the real time: 1.0 runs as the planner's reference
    /// core does (a work unit is a nanosecond), 2.0 twice as fast.
    pub fn ratio(&self) -> f64 {
        self.work as f64 / (self.elapsed.as_nanos() as f64).max(1.0)
    }
}

/// Plans `job` (a job body) and runs its tasks here, one after another, as
/// an agent would (decode the input, run, encode the output), over and
/// over until `min_time` has passed.
pub fn bench_job(
    kernel: &str,
    job: &serde_json::Value,
    min_time: Duration,
) -> Result<BenchRow, String> {
    let body = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    let (spec, _options) = parse_job(&body).map_err(|e| e.to_string())?;
    let plan = spec.plan().map_err(|e| e.to_string())?;
    let inputs: Vec<(Vec<u8>, u64)> = plan
        .tasks
        .iter()
        .map(|(input, cost)| (input.encode(), cost.work))
        .collect();
    let mut row = BenchRow {
        kernel: kernel.to_string(),
        tasks: 0,
        failed: 0,
        work: 0,
        elapsed: Duration::ZERO,
    };
    let start = Instant::now();
    loop {
        for (input, work) in &inputs {
            if let (_, TaskOutcome::Failed(why)) = run_input(input, None, u64::MAX) {
                if row.failed == 0 {
                    tracing::warn!("a {kernel} task failed: {why}");
                }
                row.failed += 1;
            }
            row.tasks += 1;
            row.work += work;
        }
        if inputs.is_empty() || row.failed > 0 || start.elapsed() >= min_time {
            break;
        }
    }
    row.elapsed = start.elapsed();
    Ok(row)
}

/// Benchmarks every built-in sample job.
pub fn run_samples() -> Vec<Result<BenchRow, (String, String)>> {
    musketeer_tasks::samples::sample_jobs()
        .into_iter()
        .map(|(kernel, job)| {
            bench_job(kernel, &job, MIN_BENCH_TIME).map_err(|e| (kernel.to_string(), e))
        })
        .collect()
}

/// The rows as a table for a person.
pub fn render(rows: &[Result<BenchRow, (String, String)>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>8} {:>10} {:>14} {:>9}",
        "kernel", "tasks", "seconds", "tasks/s", "work units/s", "vs est."
    );
    for row in rows {
        match row {
            Ok(r) => {
                let _ = write!(
                    out,
                    "{:<10} {:>8} {:>8.3} {:>10.1} {:>14.3e} {:>8.2}x",
                    r.kernel,
                    r.tasks,
                    r.elapsed.as_secs_f64(),
                    r.tasks_per_s(),
                    r.work_per_s(),
                    r.ratio()
                );
                if r.failed > 0 {
                    let _ = write!(out, "  ({} failed)", r.failed);
                }
                out.push('\n');
            }
            Err((kernel, why)) => {
                let _ = writeln!(out, "{kernel:<10} cannot run the sample: {why}");
            }
        }
    }
    out.push_str("(one core; \"vs est.\" is the planner's estimate over the time taken: above 1 is faster than its reference core)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_planned_run_and_measured() {
        let job = serde_json::json!({"kernel": "fibonacci", "n": [10, 20, 30]});
        let row = bench_job("fibonacci", &job, Duration::from_millis(20)).unwrap();
        assert!(row.tasks >= 1);
        assert!(row.elapsed >= Duration::from_millis(20));
        assert_eq!(row.failed, 0);
        assert!(row.work > 0 && row.elapsed > Duration::ZERO);
        let table = render(&[Ok(row), Err(("matmul".into(), "boom".into()))]);
        assert!(table.contains("fibonacci") && table.contains("matmul") && table.contains("boom"));
    }

    #[test]
    fn bad_samples_are_errors_not_panics() {
        let e = bench_job(
            "nope",
            &serde_json::json!({"kernel": "nope"}),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.contains("unknown kernel"), "{e}");
    }

    #[test]
    fn the_interpreted_twin_agrees_with_the_native_one() {
        assert_eq!(primes_native(0), 168, "primes below 1000");
        assert_eq!(primes_native(1), 135, "primes in 1000..2000");
        let row = bench_primes(20, Duration::ZERO).unwrap();
        assert_eq!(row.rounds, 1);
        assert!(row.fuel_per_round > 0 && row.fuel_per_s() > 0.0);
        assert!(row.slowdown() > 0.0);
        let text = render_twin(&row);
        assert!(
            text.contains("native") && text.contains("wasm") && text.contains("fuel/s"),
            "{text}"
        );
    }

    #[test]
    fn ratios_and_rates() {
        let row = BenchRow {
            kernel: "k".into(),
            tasks: 4,
            failed: 0,
            work: 2_000_000_000,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(row.tasks_per_s(), 4.0);
        assert_eq!(row.work_per_s(), 2e9);
        assert_eq!(row.ratio(), 2.0);
    }
}
