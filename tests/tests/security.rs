//! Trust: agents pin the coordinator's CA through the token, and each
//! credential opens only the endpoints it is for.

use std::time::Duration;

use musketeer_tests::{wait_exit, Agent, Cluster, Coordinator, CoordinatorOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn status_and_code(
    c: &Coordinator,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let client = c.client_with_token(auth.unwrap_or(""));
    let mut req = client.request(method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The status of an empty heartbeat sent with `token`.
async fn heartbeat_status(c: &Coordinator, token: &str) -> StatusCode {
    let body = json!({"running": []});
    status_and_code(
        c,
        Method::POST,
        "/v1/agent/heartbeat",
        Some(token),
        Some(body),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_coordinator_whose_ca_does_not_match_the_token() {
    let coordinator = Coordinator::start(CoordinatorOptions::default()).unwrap();
    // Same secret, another CA's digest: an impostor's token, or a typo.
    let parts: Vec<&str> = coordinator.join_token.splitn(4, '-').collect();
    let forged = format!("{}-{}-{}-{}", parts[0], parts[1], "ab".repeat(32), parts[3]);
    let mut agent = Agent::join(&coordinator.url, &forged, &[]).unwrap();
    let status = wait_exit(&mut agent.child, Duration::from_secs(30));
    assert!(
        matches!(status, Some(s) if !s.success()),
        "the agent should give up: {status:?}"
    );
    let log = agent.log();
    assert!(
        log.to_lowercase().contains("ca"),
        "the agent should say the CA does not match:\n{log}"
    );
    assert!(coordinator.agents().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_revoked_join_tokens_are_refused() {
    let coordinator = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let (prefix, _) = coordinator.join_token.rsplit_once('-').unwrap();
    let unknown = format!("{prefix}-{}", "Z".repeat(32));
    let mut agent = Agent::join(&coordinator.url, &unknown, &[]).unwrap();
    let status = wait_exit(&mut agent.child, Duration::from_secs(30));
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(
        agent.log().contains("unknown join token"),
        "{}",
        agent.log()
    );

    let client = coordinator.client();
    let v = client.get_json("/v1/tokens").await.unwrap();
    let id = v["tokens"][0]["id"].as_str().unwrap().to_string();
    client
        .send(client.request(Method::DELETE, &format!("/v1/tokens/{id}")))
        .await
        .unwrap();
    let mut agent = Agent::join(&coordinator.url, &coordinator.join_token, &[]).unwrap();
    let status = wait_exit(&mut agent.child, Duration::from_secs(30));
    assert!(matches!(status, Some(s) if !s.success()), "{status:?}");
    assert!(agent.log().contains("revoked"), "{}", agent.log());
    assert!(coordinator.agents().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_opens_only_its_own_endpoints() {
    let cluster = Cluster::start(0, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let client = c.client();
    // An agent credential, from a real enrolment.
    let enrol: Value = client
        .send(client.request(Method::POST, "/v1/agent/enrol").json(&json!({
            "token": c.join_token,
            "capacity": {"cpus": 1, "memory_bytes": 1 << 30, "arch": "x86_64", "os": "linux",
                         "hostname": "t", "version": "0", "queues": [], "labels": {}}
        })))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_cred = enrol["credential"].as_str().unwrap().to_string();
    let job = json!({"kernel": "factorial", "n": 10});

    for (method, path) in [
        (Method::POST, "/v1/jobs"),
        (Method::GET, "/v1/jobs"),
        (Method::GET, "/v1/agents"),
        (Method::POST, "/v1/tokens"),
        (Method::GET, "/v1/tokens"),
    ] {
        // A token's body says which kind it makes (`{}`: a join token).
        let body = (method == Method::POST).then(|| {
            if path == "/v1/tokens" {
                json!({})
            } else {
                job.clone()
            }
        });
        let (s, code) = status_and_code(c, method.clone(), path, None, body.clone()).await;
        assert_eq!(
            (s, code.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{method} {path} without a token"
        );
        let (s, _) =
            status_and_code(c, method.clone(), path, Some("not-the-token"), body.clone()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a bad token"
        );
        let (s, code) =
            status_and_code(c, method.clone(), path, Some(&agent_cred), body.clone()).await;
        assert_eq!(
            (s, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path} with an agent credential"
        );
        let (s, _) = status_and_code(c, method.clone(), path, Some(&c.admin_token), body).await;
        assert!(s.is_success(), "{method} {path} with the admin token: {s}");
    }
    // The admin token is no agent credential.
    let s = heartbeat_status(c, &c.admin_token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let s = heartbeat_status(c, &agent_cred).await;
    assert_eq!(s, StatusCode::OK);
    // A removed agent's credential stops working at once.
    let agent_id = enrol["agent_id"].as_str().unwrap();
    client
        .send(client.request(Method::DELETE, &format!("/v1/agents/{agent_id}")))
        .await
        .unwrap();
    let s = heartbeat_status(c, &agent_cred).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// The status, `Retry-After` and error code of a lease call by `agent`.
async fn lease_call(
    c: &Coordinator,
    agent: &musketeer_tests::ManualAgent,
) -> (StatusCode, Option<String>, String) {
    let client = c.client_with_token(&agent.credential);
    let body = json!({"max_work": 1000, "max_tasks": 1, "wait_ms": 0,
                      "capacity": musketeer_tests::capacity("x86_64", &[])});
    let resp = client
        .request(Method::POST, "/v1/agent/lease")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let code = if status.is_success() {
        String::new()
    } else {
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Retry-After"),
            "{v}"
        );
        v["error"]["code"].as_str().unwrap().to_string()
    };
    (status, retry, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hammering_agent_is_slowed_and_a_legitimate_one_is_not() {
    let options = CoordinatorOptions {
        extra: ["--agent-requests-per-s", "5", "--agent-burst", "10"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let cluster = Cluster::start(1, options, &["--cpus", "1"]).await.unwrap();
    let c = &cluster.coordinator;
    let hammer = c.enrol_manual().await.unwrap();
    let mut limited = 0;
    for _ in 0..60 {
        let (status, retry, code) = lease_call(c, &hammer).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert_eq!(code, "rate_limited");
            assert_eq!(
                retry.as_deref(),
                Some("1"),
                "5 a second: back within a second"
            );
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    // A burst of 10 and 5 a second: most of 60 quick calls are refused.
    assert!(limited >= 30, "only {limited} of 60 calls were limited");
    let metrics = c
        .client()
        .send(c.client().request(Method::GET, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("musketeer_requests_rate_limited_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        counted >= limited,
        "{counted} refusals in /metrics, {limited} seen"
    );
    // The real agent, on the same coordinator and the same address, works on.
    let ns: Vec<u64> = (0..2000).map(|i| 1000 + i % 50).collect();
    let id = c
        .submit(&json!({"kernel": "fibonacci", "n": ns, "items_per_task": 100}))
        .await
        .unwrap();
    let got = c.result(&id, Duration::from_secs(120)).await.unwrap();
    let values: Vec<String> = got["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, musketeer_tests::reference::fibonacci(&ns));
    // And the hammering agent is let back in once it waits.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(lease_call(c, &hammer).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_tokens_from_one_address_is_slowed_to_a_crawl() {
    let options = CoordinatorOptions {
        extra: ["--address-requests-per-s", "1", "--address-burst", "20"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let cluster = Cluster::start(1, options, &["--cpus", "1"]).await.unwrap();
    let c = &cluster.coordinator;
    let mut statuses = Vec::new();
    for i in 0..40 {
        let (s, code) = status_and_code(
            c,
            Method::GET,
            "/v1/jobs",
            Some(&format!("guess-{i}")),
            None,
        )
        .await;
        statuses.push((s, code));
    }
    let limited = statuses
        .iter()
        .filter(|(s, code)| *s == StatusCode::TOO_MANY_REQUESTS && code == "rate_limited")
        .count();
    let refused = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(limited + refused, 40, "{statuses:?}");
    assert!(limited >= 15, "{statuses:?}");
    // The operator and the enrolled agent are not charged for the guesser.
    let id = c
        .submit(&json!({"kernel": "factorial", "n": 500}))
        .await
        .unwrap();
    let got = c.result(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        got["value"].as_str().unwrap(),
        musketeer_tests::reference::factorial(500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_only_as_hashes() {
    use sha2::Digest;
    let cluster = Cluster::start(0, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let agent = c.enrol_manual().await.unwrap();
    let made: Value = c
        .client()
        .send(c.client().request(Method::POST, "/v1/tokens"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let join_secret = c.join_token.rsplit_once('-').unwrap().1.to_string();
    let new_secret = made["token"]
        .as_str()
        .unwrap()
        .rsplit_once('-')
        .unwrap()
        .1
        .to_string();
    let cred_secret = agent.credential.rsplit_once('-').unwrap().1.to_string();
    // Everything the store wrote: the database and its write-ahead log.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(c.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("musketeer.db") {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    let contains = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    for (what, secret) in [
        ("join token", &join_secret),
        ("new join token", &new_secret),
        ("agent credential", &cred_secret),
        ("admin token", &c.admin_token),
    ] {
        assert!(
            !contains(secret.as_bytes()),
            "the {what}'s secret is stored in clear"
        );
    }
    // And the hashes are there: the scan looked at the right bytes.
    for secret in [&join_secret, &new_secret, &cred_secret] {
        let hash: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        assert!(contains(&hash), "no hash of a secret in the store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_target_one_named_agent_or_one_architecture() {
    use musketeer_tests::capacity;
    let cluster = Cluster::start(0, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let a = c.enrol_manual().await.unwrap();
    let b = c.enrol_manual().await.unwrap();
    let x86 = capacity("x86_64", &[]);
    let riscv = capacity("riscv64", &[]);

    let for_a = c
        .submit(
            &json!({"kernel": "fibonacci", "n": [1, 2, 3, 4], "items_per_task": 1, "agent": a.id}),
        )
        .await
        .unwrap();
    // B cannot take A's tasks, not even by claiming A's id as a label.
    let forged = capacity("x86_64", &[("musketeer.agent", &a.id)]);
    assert!(c
        .lease_manual(&b, forged, 64)
        .await
        .unwrap()
        .tasks
        .is_empty());
    assert!(c
        .lease_manual(&b, x86.clone(), 64)
        .await
        .unwrap()
        .tasks
        .is_empty());
    let leased = c.lease_manual(&a, x86.clone(), 64).await.unwrap();
    assert_eq!(leased.tasks.len(), 4);
    assert!(leased.tasks.iter().all(|t| t.task.job == for_a));
    c.complete_manual(&a, &leased).await.unwrap();
    let got = c.result(&for_a, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got["values"], json!(["1", "1", "2", "3"]));

    // By architecture: only an agent advertising riscv64 takes these.
    let for_riscv = c
        .submit(&json!({"kernel": "factorial", "n": 50, "arch": "riscv64"}))
        .await
        .unwrap();
    assert!(c
        .lease_manual(&a, x86.clone(), 64)
        .await
        .unwrap()
        .tasks
        .is_empty());
    let leased = c.lease_manual(&b, riscv, 64).await.unwrap();
    assert!(!leased.tasks.is_empty());
    c.complete_manual(&b, &leased).await.unwrap();
    let got = c.result(&for_riscv, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        got["value"].as_str().unwrap(),
        musketeer_tests::reference::factorial(50)
    );
    // Targeting a job at an agent by a reserved label directly is refused.
    let err = c
        .submit(&json!({"kernel": "factorial", "n": 5, "labels": {"musketeer.arch": "x86_64"}}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_agents_leases_go_back_at_once_and_its_late_results_are_refused() {
    use musketeer_tests::capacity;
    // Leases of two minutes: the job can only finish in time if removal
    // hands the tasks back at once rather than when their leases run out.
    let options = CoordinatorOptions {
        lease_ttl: 120.0,
        ..Default::default()
    };
    let cluster = Cluster::start(0, options, &[]).await.unwrap();
    let c = &cluster.coordinator;
    let rogue = c.enrol_manual().await.unwrap();
    let honest = c.enrol_manual().await.unwrap();
    let id = c
        .submit(&json!({"kernel": "fibonacci", "n": [5, 6, 7, 8], "items_per_task": 2}))
        .await
        .unwrap();
    let held = c
        .lease_manual(&rogue, capacity("x86_64", &[]), 64)
        .await
        .unwrap();
    assert_eq!(held.tasks.len(), 2);
    let admin = c.client();
    admin
        .send(admin.request(Method::DELETE, &format!("/v1/agents/{}", rogue.id)))
        .await
        .unwrap();
    // The removed agent cannot hand its results in any more...
    let late = c.complete_manual(&rogue, &held).await.unwrap_err();
    assert!(late.to_string().contains("removed"), "{late}");
    // ...and its tasks are offered again straight away.
    let taken = c
        .lease_manual(&honest, capacity("x86_64", &[]), 64)
        .await
        .unwrap();
    assert_eq!(taken.tasks.len(), 2);
    c.complete_manual(&honest, &taken).await.unwrap();
    let got = c.result(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got["values"], json!(["5", "8", "13", "21"]));
    let agents = c.agents().await.unwrap();
    let done = |who: &str| {
        agents.iter().find(|a| a["id"] == who).unwrap()["tasks_done"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((done(&rogue.id), done(&honest.id)), (0, 2));
}
