//! `/metrics` as Prometheus reads it: after a job of every kernel (one of
//! them replicated, so votes are cast), `promtool check metrics` (Debian's
//! `prometheus` package) accepts the exposition, and the series a Grafana
//! user charts (packaging/grafana-dashboard.json) carry what happened.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use musketeer_tasks::Kernel;
use musketeer_tests::{Cluster, CoordinatorOptions};
use reqwest::Method;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The value of the one series named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_metrics_after_a_job_of_every_kernel() {
    let promtool = "promtool";
    assert!(
        Command::new(promtool).arg("--version").output().is_ok(),
        "promtool is missing: install Debian's prometheus package (scripts/test does)"
    );
    let cluster = Cluster::start(2, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let mut kernels = Vec::new();
    for (kernel, mut body) in musketeer_tasks::samples::sample_jobs() {
        if kernel == "factorial" {
            // Two agents must agree on each task: votes for the metrics.
            body["redundancy"] = 2.into();
        }
        let id = c.submit(&body).await.unwrap();
        let status = c.wait(&id, JOB_TIMEOUT).await.unwrap();
        assert_eq!(status["state"], "succeeded", "{kernel}: {status}");
        kernels.push(kernel);
    }
    // Your own kernels have no built-in sample: the echo module's job.
    let module = musketeer_tests::wasm::push(c, musketeer_tests::wasm::echo())
        .await
        .unwrap();
    let id = c
        .submit(&serde_json::json!({
            "kernel": "wasm", "module": module, "range": {"start": 0, "end": 100}
        }))
        .await
        .unwrap();
    let status = c.wait(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(status["state"], "succeeded", "wasm: {status}");
    kernels.push("wasm");
    let mut all: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
    all.sort();
    let mut ran = kernels.clone();
    ran.sort();
    assert_eq!(ran, all, "a sample job of every kernel");

    let client = c.client_with_token("");
    let text = client
        .send(client.request(Method::GET, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- the exposition:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for kernel in &kernels {
        let tasks = value(
            &text,
            &format!("musketeer_task_cpu_seconds_count{{kernel=\"{kernel}\"}}"),
        );
        assert!(tasks >= 1.0, "{kernel}: {tasks} tasks");
        let jobs = value(
            &text,
            &format!("musketeer_job_duration_seconds_count{{kernel=\"{kernel}\"}}"),
        );
        assert_eq!(jobs, 1.0, "{kernel}");
    }
    let jobs = kernels.len() as f64;
    assert!(value(&text, "musketeer_lease_latency_seconds_count") >= jobs);
    assert_eq!(value(&text, "musketeer_results_outvoted_total"), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    let arch = std::env::consts::ARCH;
    assert_eq!(
        value(
            &text,
            &format!(
                "musketeer_agents_by_version{{state=\"active\",arch=\"{arch}\",version=\"{version}\"}}"
            )
        ),
        2.0
    );
    assert_eq!(value(&text, "musketeer_jobs{state=\"succeeded\"}"), jobs);
}
