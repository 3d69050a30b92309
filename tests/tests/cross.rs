//! The static agents of `dist/` (packaging/build): each is statically
//! linked, and each non-x86 one runs under qemu user emulation: `info`,
//! `bench`, and a real `join` to a coordinator of the harness that finishes
//! a job with the right answer.
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
