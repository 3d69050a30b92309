//! Measures every kernel in release mode and compares the time with the cost
//! model's estimate (work units are meant to be nanoseconds on one core).
//! `cargo bench -p musketeer-tasks [-- FILTER]`.

use std::hint::black_box;
use std::time::Instant;

use musketeer_tasks::factorial::{self, FactorialJob, FactorialTask};
use musketeer_tasks::fibonacci::{FibonacciJob, FibonacciTask, IndexRange};
use musketeer_tasks::kernel::{TaskInput, TaskOutput};
use musketeer_tasks::matmul::{MatmulTask, RandomMatrices, Tile};
use musketeer_tasks::wordcount::{self, SplitRule, WordcountOptions, WordcountTask};
use musketeer_tasks::JobSpec;

/// Nanoseconds this thread has spent on a CPU (Linux's schedstat), so that
/// other processes competing for the cores do not inflate the numbers; the
/// wall clock elsewhere.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Runs `f` in samples of at least `budget_ms` / 3 of wall time each (at
/// least one run); the best sample's time per run in ns. On-CPU time where
/// the OS tells it, measured over the whole sample because it is only
/// updated at scheduler ticks.
fn time<T>(budget_ms: u128, mut f: impl FnMut() -> T) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let (t, c) = (Instant::now(), cpu_ns());
        let mut runs = 0u32;
        loop {
            black_box(f());
            runs += 1;
            if t.elapsed().as_millis() * 3 >= budget_ms {
                break;
            }
        }
        let ns = match (c, cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64,
            _ => t.elapsed().as_nanos() as f64,
        };
        best = best.min(ns / runs as f64);
    }
    best
}

/// Wall time of one run of `f`, in ns (for work on several threads).
fn wall<T>(f: impl FnOnce() -> T) -> f64 {
    let t = Instant::now();
    black_box(f());
    t.elapsed().as_nanos() as f64
}

fn report(name: &str, ns: f64, estimate: u64, unit: &str, units: f64) {
    println!(
        "{name:<44} {:>10.3} ms  est {:>10.3} ms  ratio {:>5.2}  {:>12.1} {unit}/s",
        ns / 1e6,
        estimate as f64 / 1e6,
        ns / estimate.max(1) as f64,
        units / (ns / 1e9)
    );
}

fn task(t: TaskInput, name: &str, unit: &str, units: f64) {
    let est = t.cost().work;
    let ns = time(600, || t.run().unwrap());
    report(name, ns, est, unit, units);
}

/// A deterministic pseudo-English text: Zipf-like draws from a vocabulary of
/// `vocab` made-up words, with punctuation and line breaks.
fn prose(bytes: usize, vocab: usize, non_ascii: bool) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let syll: &[&str] = if non_ascii {
        &[
            "λο", "γο", "ς", "中", "文", "dé", "jà", "ŝa", "ü", "ber", "Σα", "na",
        ]
    } else {
        &[
            "ta", "ke", "ri", "mo", "su", "na", "lo", "pe", "th", "an", "ing", "er",
        ]
    };
    let words: Vec<String> = (0..vocab)
        .map(|i| {
            let mut w = String::new();
            let mut j = i + 1;
            while j > 0 {
                w.push_str(syll[j % syll.len()]);
                j /= syll.len();
            }
            if i % 7 == 0 {
                let mut cs = w.chars();
                cs.next()
                    .map_or(String::new(), |c| c.to_uppercase().chain(cs).collect())
            } else {
                w
            }
        })
        .collect();
    let mut out = Vec::with_capacity(bytes + 64);
    let mut col = 0;
    while out.len() < bytes {
        // Zipf-ish: small indices much more often.
        let r = (next() % 1_000_000) as f64 / 1_000_000.0;
        let i = ((vocab as f64).powf(r) as usize)
            .saturating_sub(1)
            .min(vocab - 1);
        out.extend_from_slice(words[i].as_bytes());
        col += words[i].len() + 1;
        match next() % 16 {
            0 => out.extend_from_slice(b", "),
            1 => out.extend_from_slice(b". "),
            _ if col > 70 => {
                out.push(b'\n');
                col = 0;
            }
            _ => out.push(b' '),
        }
    }
    out
}

fn fibonacci() {
    let ns: Vec<u64> = (0..1_000_000u64).map(|i| 20 + i % 11).collect();
    let job = FibonacciJob {
        n: Some(ns),
        range: None,
    };
    let plan = JobSpec::Fibonacci(job).plan().unwrap();
    let est: u64 = plan.tasks.iter().map(|(_, c)| c.work).sum();
    let ns = time(1000, || {
        let outs: Vec<TaskOutput> = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        plan.reduce.reduce(outs).unwrap()
    });
    report(
        &format!("fib benchmark list 1M ({} tasks)", plan.tasks.len()),
        ns,
        est,
        "items",
        1e6,
    );
    let (t, _) = &plan.tasks[0];
    let ns = time(1000, || t.run().unwrap());
    report(
        "fib benchmark list 1M, first task's run only",
        ns,
        t.cost().work,
        "items",
        1e6 / plan.tasks.len() as f64,
    );
    for n in [187u64, 300, 1000, 10_000, 100_000, 1_000_000] {
        let reps = (200_000 / n).max(1);
        let t = TaskInput::Fibonacci(FibonacciTask::List(vec![n; reps as usize]));
        task(
            t,
            &format!("fib list {reps} x F({n})"),
            "items",
            reps as f64,
        );
    }
    for (s, e) in [
        (0u64, 187u64),
        (187, 1187),
        (1_000, 3_000),
        (10_000, 11_000),
        (100_000, 100_100),
        (500_000, 500_020),
        (999_990, 1_000_000),
    ] {
        let t = TaskInput::Fibonacci(FibonacciTask::Range(IndexRange { start: s, end: e }));
        task(t, &format!("fib range {s}..{e}"), "items", (e - s) as f64);
    }
}

fn factorial() {
    for n in [1000u64, 20_000, 50_000, 100_000, 200_000] {
        let t = TaskInput::Factorial(FactorialTask { lo: 1, hi: n + 1 });
        task(
            t,
            &format!("factorial product 1..={n}"),
            "factors",
            n as f64,
        );
        let t = TaskInput::Factorial(FactorialTask {
            lo: n / 2,
            hi: n + 1,
        });
        task(
            t,
            &format!("factorial product {}..={n}", n / 2),
            "factors",
            (n / 2) as f64,
        );
    }
    for n in [20_000u64, 100_000, 200_000, 300_000, 500_000, 1_000_000] {
        let plan = JobSpec::Factorial(FactorialJob { n }).plan();
        let Ok(plan) = plan else {
            // Above the limit: time it anyway, to see why.
            let product = time(600, || factorial::range_product(1, n + 1));
            let p = factorial::range_product(1, n + 1);
            let decimal = time(600, || p.to_str_radix(10).len());
            println!(
                "factorial n={n} (above MAX_N): product {:.0} ms, decimal {:.0} ms",
                product / 1e6,
                decimal / 1e6
            );
            continue;
        };
        let outs: Vec<TaskOutput> = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        let ns = time(600, || plan.reduce.reduce(outs.clone()).unwrap());
        println!(
            "factorial reduce+decimal n={n} ({} tasks): {:.0} ms",
            plan.tasks.len(),
            ns / 1e6
        );
    }
}

fn matmul() {
    for (m, k, n) in [
        (64u64, 64u64, 64u64),
        (256, 256, 256),
        (512, 512, 512),
        (700, 1000, 700),
        (8, 4096, 8),
        (1, 65536, 64),
    ] {
        let matrices = RandomMatrices { m, k, n, seed: 7 };
        let t = TaskInput::Matmul(MatmulTask::Random {
            tile: Tile {
                row: 0,
                rows: m,
                col: 0,
                cols: n,
            },
            matrices,
        });
        task(
            t,
            &format!("matmul random tile {m}x{k}x{n}"),
            "GFLOP",
            (2 * m * k * n) as f64 / 1e9,
        );
    }
    let (m, k, n) = (300u64, 300u64, 300u64);
    let a: Vec<f64> = (0..m * k).map(|i| i as f64 / 7.0).collect();
    let b: Vec<f64> = (0..k * n).map(|i| i as f64 / 3.0).collect();
    let t = TaskInput::Matmul(MatmulTask::Explicit {
        tile: Tile {
            row: 0,
            rows: m,
            col: 0,
            cols: n,
        },
        k,
        a,
        b,
    });
    task(
        t,
        "matmul explicit tile 300x300x300",
        "GFLOP",
        (2 * m * k * n) as f64 / 1e9,
    );
}

fn wordcount() {
    let len = 4 << 20;
    for (name, text) in [
        ("ascii prose 50k vocab", prose(len, 50_000, false)),
        ("ascii prose 500k vocab", prose(len, 500_000, false)),
        ("non-ascii prose 50k vocab", prose(len, 50_000, true)),
        (
            "the sample fables repeated",
            musketeer_tasks::samples::SAMPLE_TEXT
                .repeat(len / musketeer_tasks::samples::SAMPLE_TEXT.len() + 1)
                .into_bytes(),
        ),
    ] {
        for (rule, split, case) in [
            ("alnum", SplitRule::Alphanumeric, false),
            ("alnum cs", SplitRule::Alphanumeric, true),
            ("whitespace", SplitRule::Whitespace, false),
        ] {
            let options = WordcountOptions {
                split,
                case_sensitive: case,
                ..Default::default()
            };
            let t = TaskInput::Wordcount(WordcountTask {
                text: text.clone(),
                options,
            });
            task(
                t,
                &format!("wordcount {name} {rule}"),
                "MB",
                len as f64 / 1e6,
            );
        }
    }
    let big = prose(64 << 20, 100_000, false);
    let options = WordcountOptions::default();
    for threads in [1, 2] {
        let ns = wall(|| wordcount::count_in_process(&big, &options, threads));
        println!(
            "wordcount in process 64 MiB, {threads} thread(s): {:.1} ms, {:.1} MB/s",
            ns / 1e6,
            big.len() as f64 / 1e6 / (ns / 1e9)
        );
    }
    let ranges =
        wordcount::chunk_ranges(&big, options.split, wordcount::DEFAULT_CHUNK_BYTES).unwrap();
    let outs: Vec<TaskOutput> = ranges
        .iter()
        .map(|r| TaskOutput::Wordcount(wordcount::count_chunk(&big[r.clone()], &options)))
        .collect();
    let plan = wordcount::reduce_plan(&options);
    let ns = time(1000, || plan.reduce(outs.clone()).unwrap());
    println!(
        "wordcount reduce of {} chunk outputs (64 MiB, 100k-word vocabulary): {:.1} ms",
        outs.len(),
        ns / 1e6
    );
    let ns = time(500, || {
        let mut c = wordcount::Chunker::new(options.clone(), wordcount::DEFAULT_CHUNK_BYTES);
        let mut n = 0;
        for piece in big.chunks(64 << 10) {
            n += c.push(piece).unwrap().len();
        }
        n + c.finish().unwrap().map_or(0, |_| 1)
    });
    println!(
        "wordcount chunker 64 MiB in 64 KiB pieces: {:.1} ms, {:.1} MB/s",
        ns / 1e6,
        big.len() as f64 / 1e6 / (ns / 1e9)
    );
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let all: [(&str, fn()); 4] = [
        ("fibonacci", fibonacci),
        ("factorial", factorial),
        ("matmul", matmul),
        ("wordcount", wordcount),
    ];
    for (name, f) in all {
        if name.contains(&filter) {
            f();
        }
    }
}
