//! Your own kernels, end to end: the example kernels of `examples/kernels`
//! through a real cluster on both stores, each against an independent
//! reference written here in plain Rust; the three reduces; uploads refused
//! with the reason; modules kept while jobs use them; hostile modules that
//! fail their own task while the agent goes on within its memory limit.

use std::time::Duration;

use musketeer_tests::procstat::RssSampler;
use musketeer_tests::redis::RedisServer;
use musketeer_tests::wasm::{self, kernel, module_with, push, upload, ECHO_MAP};
use musketeer_tests::{Cluster, Coordinator, CoordinatorOptions};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;

/// The references: the same definitions as the kernels' (see their docs),
/// written again here, natively, without the guest crate.
mod reference {
    /// Monte Carlo pi: SplitMix64 from the seed, points in the unit square,
    /// those with x² + y² < 1 counted.
    pub fn pi_inside(seed: u64, samples: u64) -> u64 {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let bits = z ^ (z >> 31);
            (bits >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..samples)
            .filter(|_| {
                let (x, y) = (next(), next());
                x * x + y * y < 1.0
            })
            .count() as u64
    }

    /// Primes below `n`, by the sieve of Eratosthenes (the kernel divides).
    pub fn prime_flags(n: usize) -> Vec<bool> {
        let mut is = vec![true; n];
        is[0] = false;
        is[1] = false;
        let mut i = 2;
        while i * i < n {
            if is[i] {
                (i * i..n).step_by(i).for_each(|j| is[j] = false);
            }
            i += 1;
        }
        is
    }

    /// Escape counts of one Mandelbrot row (the kernel's definition).
    pub fn mandelbrot_row(y: u32, width: u32, height: u32, max_iter: u32) -> Vec<u32> {
        let ci = -1.5 + 3.0 * y as f64 / height as f64;
        (0..width)
            .map(|x| {
                let c = (-2.0 + 3.0 * x as f64 / width as f64, ci);
                let mut z = (0.0f64, 0.0f64);
                let mut n = 0;
                while n < max_iter && z.0 * z.0 + z.1 * z.1 <= 4.0 {
                    z = (z.0 * z.0 - z.1 * z.1 + c.0, 2.0 * z.0 * z.1 + c.1);
                    n += 1;
                }
                n
            })
            .collect()
    }

    /// N-queens solutions by bitmasks of attacked columns and diagonals
    /// (the kernel backtracks over an array of columns).
    pub fn queens(n: u32) -> u64 {
        fn go(all: u32, cols: u32, left: u32, right: u32) -> u64 {
            if cols == all {
                return 1;
            }
            let mut free = all & !(cols | left | right);
            let mut count = 0;
            while free != 0 {
                let bit = free & free.wrapping_neg();
                free ^= bit;
                count += go(all, cols | bit, (left | bit) << 1, (right | bit) >> 1);
            }
            count
        }
        go((1u32 << n) - 1, 0, 0, 0)
    }
}

/// The pi kernel's output for a seed, as JSON: `{"inside","samples","pi"}`.
fn pi_output(inside: u64, samples: u64) -> Value {
    json!({"inside": inside, "samples": samples, "pi": 4.0 * inside as f64 / samples as f64})
}

/// Every example kernel against its reference, on the cluster of `c`.
async fn examples_match_their_references(c: &Coordinator) {
    let ids = futures::future::try_join_all(
        ["pi", "primes", "mandelbrot", "nqueens"].map(|k| async move { push(c, kernel(k)?).await }),
    )
    .await
    .unwrap();
    let [pi, primes, mandelbrot, nqueens] = [0, 1, 2, 3].map(|i| ids[i].clone());

    // pi, reduced by the module in a tree (200 outputs, fan-in 64), and
    // the same seeds as values.
    const SEEDS: u64 = 200;
    const SAMPLES: u64 = 100_000;
    let pi_module = c
        .submit(
            &json!({"kernel": "wasm", "module": pi, "range": {"start": 0, "end": SEEDS},
                        "reduce": "module", "items_per_task": 10}),
        )
        .await
        .unwrap();
    let pi_values = c
        .submit(
            &json!({"kernel": "wasm", "module": pi, "items": [7, 0, 12345678901234u64],
                        "reduce": "values"}),
        )
        .await
        .unwrap();
    // primes: blocks of 10,000 up to a million, summed exactly.
    let primes_sum = c
        .submit(
            &json!({"kernel": "wasm", "module": primes, "range": {"start": 0, "end": 100},
                        "reduce": "sum", "items_per_task": 7}),
        )
        .await
        .unwrap();
    // Mandelbrot: every row of the 256 x 256 picture, values by default.
    let rows = c
        .submit(&json!({"kernel": "wasm", "module": mandelbrot,
                        "range": {"start": 0, "end": 256}, "items_per_task": 16}))
        .await
        .unwrap();
    // n-queens: boards given as items, out of order.
    let boards = [8u32, 1, 4, 10, 6, 9, 2];
    let queens = c
        .submit(&json!({"kernel": "wasm", "module": nqueens, "items": boards, "items_per_task": 2}))
        .await
        .unwrap();

    let got = c.result(&pi_module, JOB_TIMEOUT).await.unwrap();
    let inside: u64 = (0..SEEDS).map(|s| reference::pi_inside(s, SAMPLES)).sum();
    assert_eq!(got, json!({"value": pi_output(inside, SEEDS * SAMPLES)}));
    let estimate = got["value"]["pi"].as_f64().unwrap();
    assert!((estimate - std::f64::consts::PI).abs() < 0.01, "{got}");

    let got = c.result(&pi_values, JOB_TIMEOUT).await.unwrap();
    let want: Vec<Value> = [7u64, 0, 12345678901234]
        .iter()
        .map(|&s| pi_output(reference::pi_inside(s, SAMPLES), SAMPLES))
        .collect();
    assert_eq!(got, json!({ "values": want }));

    let got = c.result(&primes_sum, JOB_TIMEOUT).await.unwrap();
    let flags = reference::prime_flags(1_000_000);
    let count = flags.iter().filter(|&&p| p).count();
    assert_eq!(count, 78_498, "the reference itself");
    assert_eq!(got, json!({ "value": count }));

    let got = c.result(&rows, JOB_TIMEOUT).await.unwrap();
    let want: Vec<Vec<u32>> = (0..256)
        .map(|y| reference::mandelbrot_row(y, 256, 256, 500))
        .collect();
    assert_eq!(got, json!({ "values": want }));

    let got = c.result(&queens, JOB_TIMEOUT).await.unwrap();
    let want: Vec<u64> = boards.iter().map(|&n| reference::queens(n)).collect();
    assert_eq!(want[0], 92, "the reference itself");
    assert_eq!(got, json!({ "values": want }));

    // The modules are listed, with what they export, none in use now.
    let listed = musketeer_client::list_modules(&c.client()).await.unwrap();
    for (id, reduce) in [
        (&pi, true),
        (&primes, false),
        (&mandelbrot, false),
        (&nqueens, false),
    ] {
        let m = listed.iter().find(|m| &m.id == id).unwrap();
        assert_eq!((m.has_reduce, m.in_use), (reduce, false), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_kernels_match_their_references_on_the_embedded_store() {
    let cluster = Cluster::start(2, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    examples_match_their_references(&cluster.coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_kernels_match_their_references_on_redis() {
    let redis = RedisServer::start().unwrap();
    let options = CoordinatorOptions {
        extra: vec!["--redis".into(), redis.url()],
        ..CoordinatorOptions::default()
    };
    let cluster = Cluster::start(2, options, &[]).await.unwrap();
    examples_match_their_references(&cluster.coordinator).await;
}

/// Asserts a refused upload: this status and code, and a message that
/// contains `says`.
async fn refused(
    c: &Coordinator,
    bytes: Vec<u8>,
    content_type: &str,
    status: u16,
    code: &str,
    says: &str,
) {
    let (got, v) = upload(c, bytes, content_type).await.unwrap();
    assert_eq!(got, status, "{says}: {v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "wanted {says:?} in {message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_and_content_addressed() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let wasm_type = "application/wasm";
    let echo = wasm::echo();

    // Stored once: 201 the first time, 200 with the same body after.
    let (status, first) = upload(&c, echo.clone(), wasm_type).await.unwrap();
    assert_eq!(status, 201, "{first}");
    let (status, again) = upload(&c, echo.clone(), wasm_type).await.unwrap();
    assert_eq!((status, &again), (200, &first));
    let id = first["id"].as_str().unwrap();
    use sha2::Digest;
    assert_eq!(id, format!("sha256:{:x}", sha2::Sha256::digest(&echo)));
    assert_eq!(first["size"], echo.len());

    let hundred_thousand = format!(
        "(module {} {ECHO_MAP} {})",
        wasm::ALLOC_WAT,
        "(func)".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"this is not a WebAssembly module".to_vec(),
            "WebAssembly",
        ),
        ("truncated", echo[..echo.len() / 2].to_vec(), "WebAssembly"),
        (
            "an import",
            // Imports come first in the text format.
            wasm::wat(&format!(
                r#"(module (import "env" "clock" (func)) {} {ECHO_MAP})"#,
                wasm::ALLOC_WAT
            )),
            "import",
        ),
        ("no map", module_with(""), "musketeer_map"),
        (
            "a mistyped map",
            module_with(
                r#"(func (export "musketeer_map") (param i32) (result i32) (local.get 0))"#,
            ),
            "musketeer_map",
        ),
        (
            "100,000 functions",
            wasm::wat(&hundred_thousand),
            "functions",
        ),
        (
            "a huge table",
            module_with(&format!("(table 50000000 funcref) {ECHO_MAP}")),
            "table",
        ),
    ];
    for (what, bytes, says) in cases {
        refused(&c, bytes, wasm_type, 422, "invalid_module", says).await;
        println!("{what}: refused");
    }
    refused(
        &c,
        vec![0; 17 << 20],
        wasm_type,
        413,
        "body_too_large",
        "16 MiB",
    )
    .await;
    refused(
        &c,
        echo.clone(),
        "application/octet-stream",
        415,
        "unsupported_media_type",
        "application/wasm",
    )
    .await;

    // Only the good module is stored.
    let listed = musketeer_client::list_modules(&c.client()).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].size),
        (id, echo.len() as u64)
    );
    assert!(!listed[0].has_reduce);

    // Ids that name nothing, or are no id at all.
    let client = c.client();
    let unknown = format!("sha256:{}", "0".repeat(64));
    let err = musketeer_client::delete_module(&client, &unknown)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not_found"), "{err}");
    let err = musketeer_client::delete_module(&client, "sha256:xyz")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("64 lowercase hex digits"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_is_kept_while_a_job_uses_it() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let client = c.client();
    let id = push(&c, wasm::echo()).await.unwrap();
    // No agent "nobody": the job stays queued, and its module in use.
    let job = c
        .submit(&json!({"kernel": "wasm", "module": id, "items": [1, 2], "agent": "nobody"}))
        .await
        .unwrap();
    let err = musketeer_client::delete_module(&client, &id)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("module_in_use") && text.contains(&job),
        "{text}"
    );
    assert!(musketeer_client::list_modules(&client).await.unwrap()[0].in_use);

    // "reduce":"module" needs a module that exports musketeer_reduce.
    let err = musketeer_client::submit_json(
        &client,
        serde_json::to_vec(
            &json!({"kernel": "wasm", "module": id, "items": [1], "reduce": "module"}),
        )
        .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("musketeer_reduce"), "{err}");

    c.cancel(&job).await;
    musketeer_client::delete_module(&client, &id).await.unwrap();
    assert!(musketeer_client::list_modules(&client)
        .await
        .unwrap()
        .is_empty());

    // A job naming a module that is not stored is refused, naming the id.
    let err = musketeer_client::submit_json(
        &client,
        serde_json::to_vec(&json!({"kernel": "wasm", "module": id, "items": [1]})).unwrap(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unknown_module") && text.contains(&id),
        "{text}"
    );
    assert!(text.contains("modules push"), "{text}");
}

/// A hostile module, the words its task's error must contain (any one),
/// and the job options that bound it.
struct Hostile {
    what: &'static str,
    map: &'static str,
    says: &'static [&'static str],
}

const HOSTILE: [Hostile; 6] = [
    Hostile {
        what: "an endless loop",
        map: r#"(func (export "musketeer_map") (param i32 i32) (result i64)
                  (loop $l (br $l)) (i64.const 0))"#,
        says: &["fuel", "time"],
    },
    Hostile {
        what: "memory growth to the maximum",
        map: r#"(func (export "musketeer_map") (param i32 i32) (result i64)
                  (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
                  unreachable)"#,
        says: &["memory"],
    },
    Hostile {
        what: "unbounded recursion",
        map: r#"(func $r (export "musketeer_map") (param i32 i32) (result i64)
                  (call $r (local.get 0) (local.get 1)))"#,
        says: &["stack", "recursion", "call depth"],
    },
    Hostile {
        what: "a division by zero",
        map: r#"(func (export "musketeer_map") (param i32 i32) (result i64)
                  (drop (i32.div_u (i32.const 1) (i32.sub (local.get 1) (local.get 1))))
                  (i64.const 0))"#,
        says: &["divide by zero"],
    },
    Hostile {
        what: "output that is not JSON",
        map: r#"(data (i32.const 16) "not json {")
                (func (export "musketeer_map") (param i32 i32) (result i64)
                  (i64.const 0x100000000a))"#,
        says: &["JSON", "json"],
    },
    Hostile {
        what: "output outside memory",
        map: r#"(func (export "musketeer_map") (param i32 i32) (result i64)
                  (i64.const 0xfff0000000000100))"#,
        says: &["outside", "bounds", "memory"],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_fail_their_task_and_the_agent_goes_on() {
    const MEMORY: u64 = 192 * MIB;
    let cluster = Cluster::start(
        1,
        CoordinatorOptions::default(),
        &["--cpus", "1", "--memory", "192M"],
    )
    .await
    .unwrap();
    let c = &cluster.coordinator;
    let rss = RssSampler::start(cluster.agents[0].pid(), Duration::from_millis(20));
    let primes = push(c, kernel("primes").unwrap()).await.unwrap();
    let mut accepted = Vec::new();
    for h in &HOSTILE {
        let id = push(c, module_with(h.map)).await.unwrap();
        let job = c
            .submit(&json!({"kernel": "wasm", "module": id, "items": [1, 2],
                            "max_attempts": 1, "timeout_s": 5}))
            .await
            .unwrap();
        let status = c.wait(&job, JOB_TIMEOUT).await.unwrap();
        assert_eq!(status["state"], "failed", "{}: {status}", h.what);
        let error = status["error"].as_str().unwrap_or("");
        assert!(
            h.says.iter().any(|w| error.contains(w)),
            "{}: the reason {error:?} should say one of {:?}",
            h.what,
            h.says
        );
        // The same agent runs the next job, and gets it right.
        let good = c
            .submit(
                &json!({"kernel": "wasm", "module": primes, "range": {"start": 0, "end": 3},
                            "reduce": "sum"}),
            )
            .await
            .unwrap();
        let got = c.result(&good, JOB_TIMEOUT).await.unwrap();
        let want = reference::prime_flags(30_000)
            .iter()
            .filter(|&&p| p)
            .count();
        assert_eq!(got, json!({ "value": want }), "after {}", h.what);
        accepted.extend([job, good]);
        println!("{}: {error}", h.what);
    }
    let peak = rss.peak();
    println!(
        "--memory 192M: peak RSS of the agent's process tree {:.1} MiB",
        peak as f64 / MIB as f64
    );
    assert!(
        peak < MEMORY,
        "the agent's tree reached {peak} bytes, over its --memory"
    );
    // Nothing accepted was lost: every job ended, as it should have.
    for job in &accepted {
        let s = c.job_status(job).await.unwrap();
        assert!(
            matches!(s["state"].as_str(), Some("failed" | "succeeded")),
            "{s}"
        );
    }
    assert_eq!(c.agents().await.unwrap().len(), 1, "still the one agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_module_reduce_fails_the_job_with_its_reason() {
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    // Maps as the echo does; its reduce divides by zero.
    let id = push(
        c,
        module_with(&format!(
            r#"{ECHO_MAP}
               (func (export "musketeer_reduce") (param i32 i32) (result i64)
                 (drop (i32.div_s (i32.const 1) (i32.const 0))) (i64.const 0))"#
        )),
    )
    .await
    .unwrap();
    let job = c
        .submit(&json!({"kernel": "wasm", "module": id, "items": [1, 2, 3], "reduce": "module"}))
        .await
        .unwrap();
    let status = c.wait(&job, JOB_TIMEOUT).await.unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("musketeer_reduce") && error.contains("divide by zero"),
        "{error}"
    );
    // Values of the same module still work: only the reduce was at fault.
    let job = c
        .submit(&json!({"kernel": "wasm", "module": id, "items": [1, {"a": [true]}, "x"]}))
        .await
        .unwrap();
    assert_eq!(
        c.result(&job, JOB_TIMEOUT).await.unwrap(),
        json!({"values": [1, {"a": [true]}, "x"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_sized_by_the_fuel_their_items_burn() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let echo = push(&c, wasm::echo()).await.unwrap();
    let nqueens = push(&c, kernel("nqueens").unwrap()).await.unwrap();
    let tasks = |id: String| {
        let c = &c;
        async move {
            c.job_status(&id).await.unwrap()["progress"]["total"]
                .as_u64()
                .unwrap()
        }
    };
    // Echoing a number costs a few hundred units of fuel: a thousand items
    // are one task, where an unmeasured module would get four.
    let cheap = c
        .submit(&json!({"kernel": "wasm", "module": echo, "range": {"start": 0, "end": 1000}}))
        .await
        .unwrap();
    assert_eq!(tasks(cheap).await, 1);
    // Ten queens is tens of millions: a few boards per task.
    let boards = [10u32; 24];
    let dear = c
        .submit(&json!({"kernel": "wasm", "module": nqueens, "items": boards}))
        .await
        .unwrap();
    let n = tasks(dear).await;
    assert!(
        (4..=24).contains(&n),
        "24 boards of ten queens in {n} tasks"
    );
    // The job's own items_per_task wins.
    let fixed = c
        .submit(
            &json!({"kernel": "wasm", "module": nqueens, "items": boards, "items_per_task": 24}),
        )
        .await
        .unwrap();
    assert_eq!(tasks(fixed).await, 1);
}
