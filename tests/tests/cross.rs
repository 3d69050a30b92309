//! The static agents of `dist/` (packaging/build): each is statically
//! linked, and each non-x86 one runs under qemu user emulation: `info`,
//! `bench`, and a real `join` to a coordinator of the harness that finishes
//! a job with the right answer; and a WebAssembly module that gives
//! byte-identical outputs on all three.
//!
//! Skipped when qemu or `dist/` is missing, unless MUSKETEER_REQUIRE_CROSS=1
//! (scripts/test sets it), which makes that a failure.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use musketeer_tests::dist::{self, AARCH64, ARMV7, REQUIRE_CROSS, X86_64};
use musketeer_tests::{reference, Agent, Coordinator, CoordinatorOptions};
use serde_json::{json, Value};

/// Emulated agents are slow, and share two cores with the rest of the suite.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// The agent built for `target` and the qemu that runs it, or `None` (skip).
fn emulated(target: &str, qemu: &str) -> Option<(String, PathBuf)> {
    let bin = dist::prerequisite(REQUIRE_CROSS, dist::dist_bin(target, "musketeer"))?;
    dist::prerequisite(REQUIRE_CROSS, dist::have_command(qemu))?;
    Some((qemu.to_string(), bin))
}

fn assert_static(bin: &std::path::Path) {
    let kind = dist::file_type(bin);
    assert!(
        kind.contains("statically linked"),
        "{} is not statically linked: {kind}",
        bin.display()
    );
}

fn run_ok(qemu: &str, bin: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(qemu)
        .arg(bin)
        .args(args)
        .output()
        .expect("qemu starts");
    assert!(
        out.status.success(),
        "{qemu} {} {args:?} failed: {}\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `info`, `bench`, then a join that finishes a Fibonacci job alone.
async fn agent_works_under_qemu(target: &str, qemu: &str, arch: &str) {
    let Some((qemu, bin)) = emulated(target, qemu) else {
        return;
    };
    assert_static(&bin);

    let info: Value = serde_json::from_str(&run_ok(&qemu, &bin, &["info", "--cpus", "1"]))
        .expect("info prints JSON");
    assert_eq!(info["arch"], arch, "{info}");
    assert_eq!(info["cpus"], 1, "{info}");

    let bench = run_ok(&qemu, &bin, &["bench"]);
    for kernel in ["fibonacci", "factorial", "matmul", "wordcount"] {
        assert!(
            bench.lines().any(|l| l.starts_with(kernel)),
            "no {kernel} line in:\n{bench}"
        );
    }

    let coordinator = Coordinator::start(CoordinatorOptions {
        lease_ttl: 10.0,
        ..CoordinatorOptions::default()
    })
    .unwrap();
    let launcher: Vec<OsString> = vec![qemu.clone().into(), bin.clone().into()];
    let agent = Agent::join_using(
        &launcher,
        &coordinator.url,
        &coordinator.join_token,
        &["--cpus", "2", "--auto-update", "false"],
    )
    .unwrap();
    let ns: Vec<u64> = (0..300).map(|i| 500 + i * 7).collect();
    let id = coordinator
        .submit(&json!({"kernel": "fibonacci", "n": ns}))
        .await
        .unwrap();
    let result = coordinator
        .result(&id, JOB_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    let want = reference::fibonacci(&ns);
    let got: Vec<String> = result["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);

    // The emulated agent did the work, and says what it runs on.
    let agents = coordinator.agents().await.unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["capacity"]["arch"], arch);
    assert!(agents[0]["tasks_done"].as_u64().unwrap() > 0, "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aarch64_agent_runs_under_qemu() {
    agent_works_under_qemu(AARCH64, "qemu-aarch64-static", "aarch64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armv7_agent_runs_under_qemu() {
    agent_works_under_qemu(ARMV7, "qemu-arm-static", "arm").await;
}

#[test]
fn x86_64_agent_and_coordinator_are_static() {
    for name in ["musketeer", "musketeer-coordinator"] {
        let Some(bin) = dist::prerequisite(REQUIRE_CROSS, dist::dist_bin(X86_64, name)) else {
            return;
        };
        assert_static(&bin);
        let out = Command::new(&bin).arg("--version").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(name));
    }
}

/// A kernel that panics fails only its task, with the panic's message, and
/// the agent goes on with the next: on the agent as shipped, whose panics
/// abort (the worker answers for its task before it ends), as on the debug
/// build of the tests, whose panics unwind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_kernel_fails_its_task_and_the_agent_goes_on() {
    let shipped = dist::prerequisite(REQUIRE_CROSS, dist::dist_bin(X86_64, "musketeer"));
    let coordinator = Coordinator::start(CoordinatorOptions::default()).unwrap();
    for agent_bin in [Some(musketeer_tests::bin("musketeer")), shipped]
        .into_iter()
        .flatten()
    {
        let agent = Agent::join_using_env(
            &[agent_bin.clone().into()],
            &coordinator.url,
            &coordinator.join_token,
            &["--cpus", "1", "--auto-update", "false"],
            &[("MUSKETEER_PANIC_IN_KERNEL", "factorial")],
        )
        .unwrap();
        let failing = coordinator
            .submit(&json!({"kernel": "factorial", "n": 20, "max_attempts": 1}))
            .await
            .unwrap();
        let status = coordinator.wait(&failing, JOB_TIMEOUT).await.unwrap();
        assert_eq!(status["state"], "failed", "{status}\n{}", agent.log());
        let error = status["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(
                "the factorial kernel panicked: MUSKETEER_PANIC_IN_KERNEL=factorial asked for it"
            ),
            "{}: {error}\n{}",
            agent_bin.display(),
            agent.log()
        );

        // The same agent, with a fresh worker, does the next job.
        let ns = vec![90, 1000];
        let id = coordinator
            .submit(&json!({"kernel": "fibonacci", "n": ns}))
            .await
            .unwrap();
        let result = coordinator
            .result(&id, JOB_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
        assert_eq!(reference::values(&result), reference::fibonacci(&ns));
        drop(agent);
    }
}

/// The same module and items on x86_64, aarch64 and armv7 agents give
/// byte-identical outputs, floats included; with `redundancy: 3` across the
/// three every task agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_outputs_are_byte_identical_across_architectures() {
    let Some(native) = dist::prerequisite(REQUIRE_CROSS, dist::dist_bin(X86_64, "musketeer"))
    else {
        return;
    };
    let Some(arm64) = emulated(AARCH64, "qemu-aarch64-static") else {
        return;
    };
    let Some(arm32) = emulated(ARMV7, "qemu-arm-static") else {
        return;
    };
    let coordinator = Coordinator::start(CoordinatorOptions {
        lease_ttl: 10.0,
        ..CoordinatorOptions::default()
    })
    .unwrap();
    let flags = ["--cpus", "1", "--auto-update", "false"];
    let launchers: Vec<Vec<OsString>> = vec![
        vec![native.into()],
        vec![arm64.0.into(), arm64.1.into()],
        vec![arm32.0.into(), arm32.1.into()],
    ];
    let agents: Vec<Agent> = launchers
        .iter()
        .map(|l| Agent::join_using(l, &coordinator.url, &coordinator.join_token, &flags).unwrap())
        .collect();
    let logs = || {
        agents
            .iter()
            .map(Agent::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while coordinator.agents().await.unwrap().len() < 3 {
        assert!(
            std::time::Instant::now() < end,
            "agents did not enrol:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pi =
        musketeer_tests::wasm::push(&coordinator, musketeer_tests::wasm::kernel("pi").unwrap())
            .await
            .unwrap();
    let mandelbrot = musketeer_tests::wasm::push(
        &coordinator,
        musketeer_tests::wasm::kernel("mandelbrot").unwrap(),
    )
    .await
    .unwrap();
    let client = coordinator.client();
    let jobs = [
        json!({"kernel": "wasm", "module": pi, "range": {"start": 0, "end": 6}, "items_per_task": 2}),
        json!({"kernel": "wasm", "module": mandelbrot, "range": {"start": 96, "end": 160},
               "items_per_task": 16}),
    ];
    for job in jobs {
        // One run per architecture, each pinned to its agents.
        let mut outputs = Vec::new();
        for arch in ["x86_64", "aarch64", "arm"] {
            let mut body = job.clone();
            body["arch"] = json!(arch);
            let id = coordinator.submit(&body).await.unwrap();
            coordinator
                .wait(&id, JOB_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
            let bytes = musketeer_client::result_bytes(&client, &id, "json")
                .await
                .unwrap();
            outputs.push((arch, bytes));
        }
        for (arch, bytes) in &outputs[1..] {
            assert!(
                *bytes == outputs[0].1,
                "{arch} differs from x86_64 for {job}:\n{}\n{}",
                String::from_utf8_lossy(bytes),
                String::from_utf8_lossy(&outputs[0].1)
            );
        }
        // All three on every task: the votes agree.
        let mut body = job.clone();
        body["redundancy"] = json!(3);
        let id = coordinator.submit(&body).await.unwrap();
        let bytes = {
            coordinator
                .result(&id, JOB_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
            musketeer_client::result_bytes(&client, &id, "json")
                .await
                .unwrap()
        };
        assert!(
            bytes == outputs[0].1,
            "the replicated run differs for {job}"
        );
    }
    for a in coordinator.agents().await.unwrap() {
        assert_eq!(a["results_invalid"], 0, "no agent was outvoted: {a}");
        assert!(
            a["results_valid"].as_u64().unwrap() > 0,
            "every agent voted: {a}"
        );
    }
}
