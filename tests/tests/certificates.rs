//! Certificates with lifetimes: the self-made server certificate lives at
//! most 90 days and is renewed in place while agents keep working; a new
//! CA lives ten years. Read from the outside, as a TLS client sees them,
//! with Debian's `openssl` (scripts/test installs it when missing).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use musketeer_tests::{bin_dir, reference, Agent, Cluster, Coordinator, CoordinatorOptions};
use serde_json::json;

const DAY: u64 = 86_400;

/// The PEM certificate a TLS handshake with `port` is answered with.
fn served_certificate(port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl runs (apt-get install openssl, or run scripts/test)");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate in the handshake:\n{text}"));
    let end = text
        .find("-----END CERTIFICATE-----")
        .expect("the PEM ends")
        + 25;
    text[start..end].to_string()
}

/// `openssl x509` with `args` on `pem`: its output, and whether it exited 0.
fn x509(pem: &str, args: &[&str]) -> (String, bool) {
    let mut child = Command::new("openssl")
        .arg("x509")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        out.status.success(),
    )
}

/// Whether `pem` is still valid `secs` seconds from now.
fn valid_for(pem: &str, secs: u64) -> bool {
    x509(pem, &["-noout", "-checkend", &secs.to_string()]).1
}

fn serial(pem: &str) -> String {
    x509(pem, &["-noout", "-serial"]).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_certificates_have_bounded_lives() {
    let coordinator = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let leaf = served_certificate(coordinator.port);
    assert!(
        valid_for(&leaf, 89 * DAY),
        "the server certificate should last 90 days"
    );
    assert!(
        !valid_for(&leaf, 90 * DAY + 60),
        "the server certificate must not outlive 90 days"
    );
    let ca = std::fs::read_to_string(coordinator.data_dir().join("ca.pem")).unwrap();
    assert!(valid_for(&ca, 9 * 365 * DAY), "a new CA lasts ten years");
    assert!(
        !valid_for(&ca, 10 * 365 * DAY + DAY),
        "a new CA must not outlive ten years"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_renewed_without_dropping_agents() {
    let lifetime = 4;
    let cluster = Cluster::start(
        1,
        CoordinatorOptions {
            extra: vec!["--server-cert-lifetime-s".into(), lifetime.to_string()],
            ..Default::default()
        },
        &["--cpus", "1"],
    )
    .await
    .unwrap();
    let c = &cluster.coordinator;
    let first = served_certificate(c.port);
    assert!(valid_for(&first, 0), "the served certificate is valid now");
    assert!(
        !valid_for(&first, lifetime),
        "it lives no longer than asked"
    );

    // Two thirds through its life the coordinator issues the next one.
    let end = Instant::now() + Duration::from_secs(15);
    let renewed = loop {
        let now = served_certificate(c.port);
        if serial(&now) != serial(&first) {
            break now;
        }
        assert!(
            Instant::now() < end,
            "the certificate was not renewed:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(valid_for(&renewed, 0), "the renewed certificate is valid");
    assert!(
        c.log().contains("server certificate renewed"),
        "{}",
        c.log()
    );

    // Past the first certificate's end, the agent enrolled under it still
    // works, and a new agent joins through the current one.
    while valid_for(&first, 0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = Agent::join(&c.url, &c.join_token, &["--cpus", "1"]).unwrap();
    let ns: Vec<u64> = (0..300).collect();
    let id = c
        .submit(&json!({"kernel": "fibonacci", "n": ns, "items_per_task": 10}))
        .await
        .unwrap();
    let got = c.result(&id, Duration::from_secs(60)).await.unwrap();
    let values: Vec<String> = got["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, reference::fibonacci(&ns));
    let agents = c.agents().await.unwrap();
    assert_eq!(agents.len(), 2, "{agents:?}");
    for a in &agents {
        assert_eq!(a["state"], "active", "an agent was dropped: {a}");
        assert!(
            a["tasks_done"].as_u64().unwrap_or(0) > 0 || a["id"] == late.wait_id().unwrap(),
            "the first agent did no work after the renewal: {a}"
        );
    }
    let first_agent = &cluster.agents[0];
    assert!(
        !first_agent.log().contains("certificate"),
        "the first agent saw a certificate error:\n{}",
        first_agent.log()
    );
}

#[test]
fn a_lifetime_over_90_days_is_refused_with_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("musketeer-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--server-cert-lifetime-s", &(91 * DAY).to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 s to 90 days"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_settings_pass_mozillas_intermediate_profile() {
    let venv = std::env::var("MUSKETEER_TEST_VENV").expect(
        "MUSKETEER_TEST_VENV is unset: run scripts/test, which installs SSLyze into target/test-venv",
    );
    let coordinator = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/mozilla_intermediate.py");
    let out = tokio::process::Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .args(["localhost", &coordinator.port.to_string(), "127.0.0.1"])
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{printed}");
    assert!(out.status.success(), "not compliant:\n{printed}");
    assert!(
        printed.contains("compliant with Mozilla's intermediate"),
        "{printed}"
    );
}
