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
        let body = (method == Method::POST).then(|| job.clone());
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
