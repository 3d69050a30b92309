//! The admin CLI and the demo, as a user runs them: real binaries, the
//! data directory's defaults, output checked.

use std::process::Command;
use std::time::Duration;

use musketeer_tests::{bin, reference, Cluster, CoordinatorOptions};

fn cli(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("musketeer-coordinator"))
        .args(args)
        .env("MUSKETEER_DATA_DIR", data_dir)
        .env_remove("MUSKETEER_URL")
        .env_remove("MUSKETEER_ADMIN_TOKEN")
        .env_remove("MUSKETEER_CA")
        .output()
        .expect("the CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_drives_a_cluster_from_the_data_directory() {
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let dir = cluster.coordinator.dir.path().to_path_buf();

    // `token create` prints the token alone, for TOKEN=$(...).
    let (ok, token, err) = cli(&dir, &["token", "create"]);
    assert!(ok, "{err}");
    let token = token.trim_end_matches('\n');
    assert!(
        token.starts_with("MSKTKN-1-") && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    // `--viewer`: a viewer token, listed with its role.
    let (ok, viewer, err) = cli(&dir, &["token", "create", "--viewer"]);
    assert!(ok, "{err}");
    assert!(viewer.trim().starts_with("MSKVWR-"), "{viewer:?}");
    let (ok, listed, _) = cli(&dir, &["token", "list"]);
    assert!(ok && listed.lines().count() == 4, "{listed}");
    assert!(listed.lines().any(|l| l.contains(" viewer ")), "{listed}");

    // `jobs why` names the label no agent carries.
    let stuck = dir.join("stuck.json");
    std::fs::write(
        &stuck,
        r#"{"kernel":"factorial","n":50,"labels":{"gpu":"yes"}}"#,
    )
    .unwrap();
    let (ok, stuck_id, err) = cli(&dir, &["jobs", "submit", stuck.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, why, err) = cli(&dir, &["jobs", "why", stuck_id.trim()]);
    assert!(ok, "{err}");
    assert!(
        why.contains("- no active agent carries label gpu=yes"),
        "{why}"
    );
    let (ok, _, err) = cli(&dir, &["jobs", "cancel", stuck_id.trim()]);
    assert!(ok, "{err}");

    // Submit from a file, wait with the progress bar, fetch the result.
    let job = dir.join("job.json");
    std::fs::write(&job, r#"{"kernel":"factorial","n":1000}"#).unwrap();
    let (ok, id, err) = cli(&dir, &["jobs", "submit", job.to_str().unwrap()]);
    assert!(ok, "{err}");
    let id = id.trim();
    let (ok, _, err) = cli(&dir, &["jobs", "wait", id]);
    assert!(ok, "{err}");
    let (ok, result, err) = cli(&dir, &["jobs", "result", id]);
    assert!(ok, "{err}");
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(
        result["value"].as_str().unwrap(),
        reference::factorial(1000)
    );
    // `jobs retry` of a job that did not fail: the API's refusal, and why.
    let (ok, _, err) = cli(&dir, &["jobs", "retry", id]);
    assert!(
        !ok && err.contains("job_not_retryable") && err.contains("only a failed job"),
        "{err}"
    );

    // A streamed word count from a file, with options.
    let text = dir.join("text.txt");
    std::fs::write(&text, "Hello, hello. HELLO world, world.\n").unwrap();
    let (ok, out, err) = cli(
        &dir,
        &[
            "jobs",
            "submit",
            "--wordcount",
            text.to_str().unwrap(),
            "--options",
            "split=whitespace",
            "--wait",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(r#"["world",2]"#) && out.contains(r#"["HELLO",1]"#),
        "{out}"
    );

    let (ok, jobs, _) = cli(&dir, &["jobs", "list"]);
    assert!(
        ok && jobs.contains(id) && jobs.contains("succeeded"),
        "{jobs}"
    );
    let (ok, agents, _) = cli(&dir, &["agents", "list"]);
    assert!(
        ok && agents.lines().count() == 2 && agents.contains("active"),
        "{agents}"
    );
    // The columns line up: the state sits under its header.
    let lines: Vec<&str> = agents.lines().collect();
    assert_eq!(lines[0].find("STATE"), lines[1].find("active"), "{agents}");

    // Errors read well and exit non-zero.
    let (ok, _, err) = cli(&dir, &["jobs", "status", "no-such-job"]);
    assert!(!ok && err.contains("not_found"), "{err}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"kernel":"factorial","n":-1}"#).unwrap();
    let (ok, _, err) = cli(&dir, &["jobs", "submit", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("invalid_job"), "{err}");
}

#[test]
fn demo_runs_every_sample_and_exits_zero() {
    let mut child = Command::new(bin("musketeer-coordinator"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = musketeer_tests::wait_exit(&mut child, Duration::from_secs(120));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "{status:?}\n{out}"
    );
    for kernel in ["fibonacci", "factorial", "matmul", "wordcount"] {
        assert!(
            out.lines().any(|l| l.starts_with(kernel)),
            "no {kernel} line:\n{out}"
        );
    }
    assert!(out.contains("20000! has 77338 digits"), "{out}");
    assert!(out.contains("every sample job succeeded"), "{out}");
}

#[test]
fn completions_cover_the_subcommands_and_bash_parses_them() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, script, err) = cli(dir.path(), &["completions", "bash"]);
    assert!(ok, "{err}");
    for word in [
        "serve", "token", "agents", "jobs", "release", "drain", "wait",
    ] {
        assert!(script.contains(word), "no {word} in the bash script");
    }
    let file = dir.path().join("musketeer-coordinator.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n refused the script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The other shells have no parser on this machine; their scripts must
    // at least name the same subcommands.
    for shell in ["zsh", "fish"] {
        let (ok, script, err) = cli(dir.path(), &["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(
            script.contains("agents") && script.contains("jobs"),
            "{shell}:\n{script}"
        );
    }
    let (ok, _, err) = cli(dir.path(), &["completions", "tcsh"]);
    assert!(!ok && err.contains("tcsh"), "{err}");
}
