//! Bad input gets a clear 4xx JSON error, the coordinator keeps serving, and
//! no accepted job is lost among the refused ones.

use std::time::Duration;

use musketeer_tests::{Cluster, CoordinatorOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn post(c: &musketeer_client::ApiClient, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = c
        .request(Method::POST, path)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_get_clear_errors_and_good_ones_are_kept() {
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let client = c.client();

    let good = c
        .submit(&serde_json::json!({"kernel": "factorial", "n": 50}))
        .await
        .unwrap();

    let cases: Vec<(&str, StatusCode, &str, &str)> = vec![
        (
            "{\"kernel\":",
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "not a valid JSON",
        ),
        ("[1,2]", StatusCode::BAD_REQUEST, "malformed_json", "object"),
        ("", StatusCode::BAD_REQUEST, "malformed_json", "EOF"),
        (
            r#"{"kernel":"sort","n":3}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kernel",
            "fibonacci",
        ),
        (
            r#"{"n":3}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "kernel",
        ),
        (
            r#"{"kernel":"factorial","n":-5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "-5",
        ),
        (
            r#"{"kernel":"factorial","n":"ten"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "ten",
        ),
        (
            r#"{"kernel":"factorial","n":1000000000000}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "job_too_large",
            "1000000000000",
        ),
        (
            r#"{"kernel":"fibonacci","n":[5,-1]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "-1",
        ),
        (
            r#"{"kernel":"fibonacci","n":[]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "",
        ),
        (
            r#"{"kernel":"fibonacci","range":{"start":0,"end":1000000}}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "job_too_large",
            "",
        ),
        (
            r#"{"kernel":"fibonacci","n":[1],"range":{"start":0,"end":2}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "",
        ),
        (
            r#"{"kernel":"matmul","a":[[1,2,3],[4,5,6]],"b":[[1,2],[3,4]]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "shape",
        ),
        (
            r#"{"kernel":"matmul","a":[[1,2],[3]],"b":[[1],[2]]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "",
        ),
        (
            r#"{"kernel":"matmul","a":[],"b":[]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "",
        ),
        (
            r#"{"kernel":"matmul","random":{"m":100000,"k":100000,"n":100000,"seed":1}}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "job_too_large",
            "",
        ),
        (
            r#"{"kernel":"wordcount","text":""}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "empty",
        ),
        (
            r#"{"kernel":"factorial","n":5,"priority":10}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "priority",
        ),
        (
            r#"{"kernel":"factorial","n":5,"priorty":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "priorty",
        ),
        (
            r#"{"kernel":"factorial","n":5,"max_attempts":0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "max_attempts",
        ),
    ];
    for (body, status, code, hint) in cases {
        let (s, v) = post(&client, "/v1/jobs", body.as_bytes().to_vec()).await;
        assert_eq!(s, status, "{body} -> {v}");
        assert_eq!(v["error"]["code"], code, "{body} -> {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(hint),
            "{body}: message {message:?} should mention {hint:?}"
        );
    }

    // A body over the limit is refused without being read to the end.
    let huge = vec![b' '; 65 << 20];
    let (s, v) = post(&client, "/v1/jobs", huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");

    // Streamed word count: empty text, bad options.
    let (s, v) = post(&client, "/v1/jobs/wordcount", Vec::new()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_job")),
        "{v}"
    );
    let (s, v) = post(&client, "/v1/jobs/wordcount?min_len=abc", b"text".to_vec()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query")),
        "{v}"
    );
    let (s, v) = post(&client, "/v1/jobs/wordcount?split=commas", b"text".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Unknown jobs and paths.
    let resp = client
        .request(Method::GET, "/v1/jobs/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = client
        .request(Method::GET, "/v2/whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    // Still serving, and the one good job is there and completes; no
    // refused body left a job behind.
    let health = client.get_json("/healthz").await.unwrap();
    assert_eq!(health["status"], "ok");
    let got = c.result(&good, Duration::from_secs(60)).await.unwrap();
    assert_eq!(got["digits"], 65);
    // A finished job cannot be cancelled.
    let resp = client
        .request(Method::DELETE, &format!("/v1/jobs/{good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["state"].as_str(), v["error"]["code"].as_str()),
        (Some("succeeded"), Some("job_finished"))
    );
    let jobs = client.get_json("/v1/jobs").await.unwrap();
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![good.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_too_early_and_cancel() {
    let cluster = Cluster::start(0, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let client = c.client();
    let id = c
        .submit(&serde_json::json!({"kernel": "factorial", "n": 500}))
        .await
        .unwrap();
    let resp = client
        .request(Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["state"], "queued");
    assert_eq!(v["error"]["code"], "not_finished");

    let v: Value = client
        .send(client.request(Method::DELETE, &format!("/v1/jobs/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "cancelled");
    // Cancelling twice is harmless (DELETE is idempotent).
    let resp = client
        .request(Method::DELETE, &format!("/v1/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .request(Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_and_oversized_uploads_leave_no_job_behind() {
    let options = CoordinatorOptions {
        // Above one 4 MiB chunk, so uploads store tasks before they fail.
        extra: vec!["--max-upload-mib".into(), "9".into()],
        ..Default::default()
    };
    // No agent yet: tasks an aborted upload left behind would stay pending.
    let mut cluster = Cluster::start(0, options, &[]).await.unwrap();
    let client = cluster.coordinator.client();

    // Over the coordinator's streamed-upload limit.
    let (s, v) = post(&client, "/v1/jobs/wordcount", b"word ".repeat(12 << 18)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-upload-mib"),
        "{v}"
    );

    // A client that breaks off in the middle of its upload.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(b"some words and more words ".repeat(400_000)),
        Err(std::io::Error::other("the client died")),
    ];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
    let sent = client
        .request(Method::POST, "/v1/jobs/wordcount")
        .body(body)
        .send()
        .await;
    assert!(sent.is_err() || !sent.unwrap().status().is_success());

    // Neither left a job or a task, and the coordinator still takes good work.
    let metrics = || async {
        let c = cluster.coordinator.client();
        c.send(c.request(Method::GET, "/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !metrics()
        .await
        .contains("musketeer_tasks{state=\"pending\"} 0")
    {
        assert!(
            std::time::Instant::now() < end,
            "tasks of aborted uploads remain:\n{}",
            metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let jobs = client.get_json("/v1/jobs").await.unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "{jobs}");
    let c = &cluster.coordinator;
    cluster
        .agents
        .push(musketeer_tests::Agent::join(&c.url, &c.join_token, &[]).unwrap());
    let c = &cluster.coordinator;
    let (s, v) = post(&client, "/v1/jobs/wordcount?top=1", b"ok ok fine".to_vec()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let got = c
        .result(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got["top"], serde_json::json!([["ok", 2]]));
    let metrics = client
        .send(client.request(Method::GET, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("musketeer_jobs{state=\"succeeded\"} 1"),
        "{metrics}"
    );
    let snapshot = client.get_json("/dashboard/snapshot").await.unwrap();
    assert_eq!(snapshot["overview"]["agents_online"], 1, "{snapshot}");
    assert_eq!(
        snapshot["jobs"]["items"][0]["kernel"], "wordcount",
        "{snapshot}"
    );
}

/// A body the coordinator refuses without reading it to the end closes its
/// connection (`Connection: close`), so a keep-alive client's next request
/// goes out on a fresh one and works: for a submitter and for an agent, a
/// hundred times in a row on one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_leave_a_keep_alive_client_working() {
    let c = musketeer_tests::Coordinator::start(CoordinatorOptions {
        // A hundred rounds of refusals would otherwise meet the rate limits.
        extra: [
            "--agent-requests-per-s",
            "0",
            "--address-requests-per-s",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        ..CoordinatorOptions::default()
    })
    .unwrap();
    let agent = c.enrol_manual().await.unwrap();
    let job = c
        .submit(&serde_json::json!({"kernel": "factorial", "n": 50}))
        .await
        .unwrap();

    // One client, so one connection pool, for every call; each call carries
    // its own token.
    let client = c.client_with_token("");
    let admin = format!("Bearer {}", c.admin_token);
    let credential = format!("Bearer {}", agent.credential);
    let oversized_job = bytes::Bytes::from(vec![b' '; (64 << 20) + 1]);
    let oversized_control = vec![b' '; (4 << 20) + 1];
    let lease = serde_json::to_vec(&serde_json::json!({
        "max_work": 1, "max_tasks": 1, "wait_ms": 0,
        "capacity": musketeer_tests::capacity("nowhere", &[]),
    }))
    .unwrap();
    let small = vec![b'x'; 4096];
    let refusals: Vec<(&str, &str, Vec<u8>, StatusCode)> = vec![
        (
            "/v1/jobs",
            admin.as_str(),
            Vec::new(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/v1/agent/lease",
            credential.as_str(),
            oversized_control,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/v1/jobs",
            "Bearer nope",
            small.clone(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/v1/agent/results",
            "Bearer nope",
            small,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for round in 0..100 {
        // Every kind of refusal a quarter of the time; the 64 MiB body, which
        // the coordinator drains, in ten rounds.
        let kind = if round % 10 == 0 { 0 } else { 1 + round % 3 };
        {
            let (path, token, body, status) = &refusals[kind];
            let body = if body.is_empty() {
                // The 64 MiB body is shared, not copied, round after round.
                reqwest::Body::from(oversized_job.clone())
            } else {
                reqwest::Body::from(body.clone())
            };
            let resp = client
                .request(Method::POST, path)
                .header("authorization", *token)
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: POST {path} -> {e:?}"));
            assert_eq!(resp.status(), *status, "round {round}: POST {path}");
            assert_eq!(
                resp.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "round {round}: POST {path} left the connection open"
            );
            let v: Value = resp.json().await.unwrap();
            assert!(v["error"]["code"].is_string(), "round {round}: {v}");

            // The very next request on the same client works.
            let resp = client
                .request(Method::GET, &format!("/v1/jobs/{job}"))
                .header("authorization", &admin)
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: GET after POST {path} -> {e:?}"));
            assert_eq!(resp.status(), StatusCode::OK, "round {round}");
            assert!(resp.headers().get("connection").is_none());
            let resp = client
                .request(Method::POST, "/v1/agent/lease")
                .header("authorization", &credential)
                .body(lease.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: lease after POST {path} -> {e:?}"));
            assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        }
    }
    // Nothing refused became a job; the one accepted job is still there.
    let jobs = c.client().get_json("/v1/jobs").await.unwrap();
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, [job.as_str()], "{jobs}");
}
