//! Signed self-update end to end: real `release keygen` and `release
//! publish`, a coordinator serving the release, an agent that installs it
//! and comes back as the new version with the same credential; and agents
//! that refuse a tampered binary and a release signed by another key, and
//! keep working on their old version.
//!
//! The newer agent is `target/debug/musketeer-next`, the same source built
//! with a higher version by `scripts/build-next-agent` (scripts/test runs
//! it). Each agent runs from its own copy, since updating replaces it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musketeer_tests::{
    bin, bin_dir, reference, spawn_when_not_busy, Agent, Coordinator, CoordinatorOptions,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Long enough for a download, a check and a restart on a busy machine.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(90);

fn version_of(binary: &Path) -> String {
    let out = spawn_when_not_busy(
        Command::new(binary)
            .arg("--version")
            .stdout(std::process::Stdio::piped()),
    )
    .and_then(|child| child.wait_with_output())
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("musketeer ")
        .expect("musketeer <version>")
        .to_string()
}

fn target_of(binary: &Path) -> String {
    let out = spawn_when_not_busy(
        Command::new(binary)
            .arg("info")
            .stdout(std::process::Stdio::piped()),
    )
    .and_then(|child| child.wait_with_output())
    .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["target"].as_str().unwrap().to_string()
}

/// The newer build, or a panic that says how to make it.
fn next_agent() -> PathBuf {
    let path = bin_dir().join("musketeer-next");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-next-agent (scripts/test does)",
        path.display()
    );
    path
}

fn coordinator_cli(args: &[&str]) -> std::process::Output {
    Command::new(bin("musketeer-coordinator"))
        .args(args)
        .output()
        .unwrap()
}

/// `release keygen` into `dir`; returns (private, public) paths.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let out = coordinator_cli(&[
        "release",
        "keygen",
        "--private",
        private.to_str().unwrap(),
        "--public",
        public.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    (private, public)
}

/// `release publish` of `binary` to `coordinator`.
fn publish(
    coordinator: &Coordinator,
    key: &Path,
    target: &str,
    version: &str,
    binary: &Path,
) -> std::process::Output {
    coordinator_cli(&[
        "release",
        "publish",
        "--data-dir",
        coordinator.dir.path().to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--target",
        target,
        "--version",
        version,
        binary.to_str().unwrap(),
    ])
}

fn coordinator_with_key(public: &Path) -> Coordinator {
    Coordinator::start(CoordinatorOptions {
        extra: vec!["--release-key".into(), public.display().to_string()],
        ..CoordinatorOptions::default()
    })
    .unwrap()
}

/// The current agent, copied to a directory of its own, joined with
/// updates looked for every second.
fn updating_agent(coordinator: &Coordinator) -> (TempDir, PathBuf, Agent) {
    let dir = tempfile::Builder::new()
        .prefix("musketeer-bin-")
        .tempdir()
        .unwrap();
    let exe = dir.path().join("musketeer");
    std::fs::copy(bin("musketeer"), &exe).unwrap();
    let launcher: Vec<OsString> = vec![exe.clone().into()];
    let agent = Agent::join_using(
        &launcher,
        &coordinator.url,
        &coordinator.join_token,
        &["--cpus", "1", "--update-interval", "1"],
    )
    .unwrap();
    (dir, exe, agent)
}

async fn wait_for_log(agent: &Agent, needle: &str) {
    let end = Instant::now() + UPDATE_TIMEOUT;
    while !agent.log().contains(needle) {
        assert!(
            Instant::now() < end,
            "the agent never logged {needle:?}; its log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one agent as the coordinator lists it, once it reports `version`.
async fn wait_for_version(coordinator: &Coordinator, version: &str) -> Value {
    let end = Instant::now() + UPDATE_TIMEOUT;
    loop {
        let agents = coordinator.agents().await.unwrap();
        if let Some(a) = agents.iter().find(|a| a["capacity"]["version"] == version) {
            return a.clone();
        }
        assert!(
            Instant::now() < end,
            "no agent reports {version}: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job that the agent must do right, whatever version it runs.
async fn job_succeeds(coordinator: &Coordinator, agent: &Agent) {
    let ns: Vec<u64> = (0..50).map(|i| 100 + i * 13).collect();
    let id = coordinator
        .submit(&json!({"kernel": "fibonacci", "n": ns}))
        .await
        .unwrap();
    let result = coordinator
        .result(&id, JOB_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    let got: Vec<String> = result["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, reference::fibonacci(&ns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_release_is_installed_and_the_agent_comes_back_as_it() {
    let next = next_agent();
    let current = version_of(&bin("musketeer"));
    let next_version = version_of(&next);
    assert_ne!(current, next_version);
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keygen(keys.path(), "release");
    let coordinator = coordinator_with_key(&public);
    let (_bin_dir, exe, agent) = updating_agent(&coordinator);
    let before = wait_for_version(&coordinator, &current).await;
    job_succeeds(&coordinator, &agent).await;

    let target = target_of(&exe);
    let out = publish(&coordinator, &private, &target, &next_version, &next);
    assert!(out.status.success(), "{out:?}");

    wait_for_log(&agent, &format!("restarting as version {next_version}")).await;
    let after = wait_for_version(&coordinator, &next_version).await;
    // The same agent, back with the same credential: no second enrolment.
    assert_eq!(after["id"], before["id"]);
    assert_eq!(coordinator.agents().await.unwrap().len(), 1);
    assert_eq!(
        std::fs::read(&exe).unwrap(),
        std::fs::read(&next).unwrap(),
        "the binary on disk is the release"
    );
    assert_eq!(version_of(&exe), next_version);
    // The new version looked again (every second) while it did that job,
    // found nothing newer than itself, and stayed.
    job_succeeds(&coordinator, &agent).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.log().matches("restarting as version").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_releases_are_refused_and_the_old_version_keeps_working() {
    let next = next_agent();
    let current = version_of(&bin("musketeer"));
    let next_version = version_of(&next);
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keygen(keys.path(), "release");
    let (other_private, other_public) = keygen(keys.path(), "other");
    let mut coordinator = coordinator_with_key(&public);
    let (_bin_dir, exe, agent) = updating_agent(&coordinator);
    let original = std::fs::read(&exe).unwrap();
    wait_for_version(&coordinator, &current).await;
    let target = target_of(&exe);

    // The coordinator itself refuses an upload signed by another key.
    let out = publish(&coordinator, &other_private, &target, &next_version, &next);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_signature"),
        "{out:?}"
    );

    // A release whose binary is altered after signing (on the
    // coordinator's disk): the agent refuses it.
    let out = publish(&coordinator, &private, &target, &next_version, &next);
    assert!(out.status.success(), "{out:?}");
    let stored = coordinator
        .dir
        .path()
        .join("releases")
        .join(&target)
        .join(&next_version)
        .join("musketeer");
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&stored, &bytes).unwrap();
    wait_for_log(
        &agent,
        &format!("refusing {next_version}: the downloaded binary's SHA-256"),
    )
    .await;
    assert_eq!(std::fs::read(&exe).unwrap(), original);
    job_succeeds(&coordinator, &agent).await;

    // A coordinator whose release key was swapped (taken over, or
    // misconfigured) serves a release signed by that other key: the agent
    // trusts only the key it enrolled with.
    std::fs::remove_dir_all(stored.parent().unwrap()).unwrap();
    coordinator
        .restart_with(CoordinatorOptions {
            extra: vec!["--release-key".into(), other_public.display().to_string()],
            ..CoordinatorOptions::default()
        })
        .unwrap();
    let out = publish(&coordinator, &other_private, &target, &next_version, &next);
    assert!(out.status.success(), "{out:?}");
    wait_for_log(
        &agent,
        &format!("refusing {next_version}: its signature does not verify"),
    )
    .await;

    // Still the old binary, still the old version, still working.
    assert_eq!(std::fs::read(&exe).unwrap(), original);
    assert!(agent.log().matches("refusing").count() >= 2);
    assert!(!agent.log().contains("restarting as version"));
    job_succeeds(&coordinator, &agent).await;
    let agents = coordinator.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["capacity"]["version"], current.as_str());
}
