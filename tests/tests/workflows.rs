//! Workflows end to end, each checked against an independent reference: a
//! chain (A·B)·C of matmuls, a chord of five word counts merged into the
//! count of their concatenation, Fibonacci values fed in as the indices of
//! the next job and as the items of a wasm job, whose outputs feed another; failure and cancellation flowing to the steps after; bad
//! graphs refused naming the step; and a workflow that survives its
//! coordinator's SIGKILL on both stores.

use std::time::{Duration, Instant};

use musketeer_tests::redis::RedisServer;
use musketeer_tests::{reference, wasm, Agent, Cluster, Coordinator, CoordinatorOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A matrix of `rows` × `cols` with entries from a small formula.
fn matrix(rows: usize, cols: usize, salt: f64) -> Vec<Vec<f64>> {
    (0..rows)
        .map(|i| {
            (0..cols)
                .map(|j| ((i * 7 + j * 3) % 11) as f64 * 0.5 - salt + j as f64 * 0.25)
                .collect()
        })
        .collect()
}

fn step_job<'a>(workflow: &'a Value, step: &str) -> &'a str {
    workflow["steps"][step].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_matmuls_equals_the_product() {
    let cluster = Cluster::start(2, CoordinatorOptions::default(), &["--cpus", "1"])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let (a, b, m) = (
        matrix(30, 40, 1.0),
        matrix(40, 20, 2.0),
        matrix(20, 10, 0.5),
    );
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "ab", "job": {"kernel": "matmul", "a": a, "b": b}},
            {"name": "abc", "job": {"kernel": "matmul", "a": {"result_of": "ab"}, "b": m}},
        ]}))
        .await
        .unwrap();
    let status = c
        .wait_workflow(wf["id"].as_str().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    let got = c.result(step_job(&wf, "abc"), TIMEOUT).await.unwrap();
    let want = reference::matmul(&reference::matmul(&a, &b), &m);
    let rows = got["c"].as_array().unwrap();
    assert_eq!(rows.len(), 30);
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 10);
        for (j, v) in row.iter().enumerate() {
            assert!(
                reference::close(v.as_f64().unwrap(), want[i][j]),
                "c[{i}][{j}]"
            );
        }
    }
}

/// Five texts with shared and distinct words, apostrophes and case.
fn texts() -> Vec<String> {
    (0..5)
        .map(|t| {
            (0..400)
                .map(|i| match (i * 31 + t * 17) % 9 {
                    0 => "The".to_string(),
                    1 => "don't".to_string(),
                    2 => format!("word{}", (i + t) % 23),
                    3 => format!("text{t}"),
                    4 => "Celery's".to_string(),
                    _ => format!("w{}", (i * t) % 57),
                })
                .collect::<Vec<_>>()
                .join(if t % 2 == 0 { " " } else { ", " })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_of_five_word_counts_equals_the_count_of_their_concatenation() {
    let cluster = Cluster::start(2, CoordinatorOptions::default(), &["--cpus", "1"])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let texts = texts();
    let mut steps: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"name": format!("t{i}"), "job": {"kernel": "wordcount", "text": t}}))
        .collect();
    let merge: Vec<Value> = (0..5)
        .map(|i| json!({"result_of": format!("t{i}")}))
        .collect();
    steps.push(json!({"name": "all", "job": {"kernel": "wordcount", "merge": merge, "top": 5}}));
    let wf = c.submit_workflow(&json!({ "steps": steps })).await.unwrap();
    let status = c
        .wait_workflow(wf["id"].as_str().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        status["steps"]["all"]["needs"],
        json!(["t0", "t1", "t2", "t3", "t4"])
    );
    let all = step_job(&wf, "all");
    let (total, list) = reference::wordcount(texts.join("\n").as_bytes(), 1, false, false);
    let got = c.result(all, TIMEOUT).await.unwrap();
    assert_eq!(got["total_words"], total);
    assert_eq!(got["distinct"], list.len() as u64);
    assert_eq!(got["top"], json!(list[..5]));
    let tsv = musketeer_client::result_bytes(&c.client(), all, "tsv")
        .await
        .unwrap();
    let every: Vec<(String, u64)> = String::from_utf8(tsv)
        .unwrap()
        .lines()
        .map(|l| {
            let (w, n) = l.split_once('\t').unwrap();
            (w.to_string(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(every, list, "every word of the merge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fibonacci_values_feed_the_next_job_once_it_has_them() {
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let firsts: Vec<u64> = (0..20).collect();
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "f", "job": {"kernel": "fibonacci", "n": firsts, "countdown_s": 1}},
            {"name": "ff", "job": {"kernel": "fibonacci", "n": {"result_of": "f"}}},
        ]}))
        .await
        .unwrap();
    let id = wf["id"].as_str().unwrap();
    // While f counts down, ff waits.
    let status = c.workflow(id).await.unwrap();
    assert_eq!(status["steps"]["f"]["state"], "queued", "{status}");
    assert_eq!(status["steps"]["ff"]["state"], "waiting", "{status}");
    assert_eq!(
        c.job_status(step_job(&wf, "ff")).await.unwrap()["state"],
        "waiting"
    );
    let status = c.wait_workflow(id, TIMEOUT).await.unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    let values: Vec<u64> = reference::fibonacci(&firsts)
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let got = c.result(step_job(&wf, "ff"), TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&got), reference::fibonacci(&values));
}

/// n-queens solutions for n = 0..=8 (OEIS A000170), written down here
/// rather than computed, as the reference of the wasm kernel.
const QUEENS: [u64; 9] = [1, 1, 0, 0, 2, 10, 4, 40, 92];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fibonacci_values_feed_a_wasm_job_whose_outputs_feed_another() {
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let nqueens = wasm::push(c, wasm::kernel("nqueens").unwrap())
        .await
        .unwrap();
    let echo = wasm::push(c, wasm::echo()).await.unwrap();
    let firsts: Vec<u64> = (0..=6).collect();
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "f", "job": {"kernel": "fibonacci", "n": firsts}},
            {"name": "q", "job": {"kernel": "wasm", "module": nqueens, "items": {"result_of": "f"}}},
            {"name": "s", "job": {"kernel": "wasm", "module": echo, "items": {"result_of": "q"}, "reduce": "sum"}},
        ]}))
        .await
        .unwrap();
    // A waiting step keeps its module: it cannot be deleted under it.
    let resp = c
        .client()
        .request(Method::DELETE, &format!("/v1/modules/{echo}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let status = c
        .wait_workflow(wf["id"].as_str().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    let boards: Vec<u64> = reference::fibonacci(&firsts)
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let want: Vec<u64> = boards.iter().map(|&n| QUEENS[n as usize]).collect();
    let got = c.result(step_job(&wf, "q"), TIMEOUT).await.unwrap();
    assert_eq!(got, json!({ "values": want }));
    let got = c.result(step_job(&wf, "s"), TIMEOUT).await.unwrap();
    assert_eq!(got, json!({"value": want.iter().sum::<u64>()}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_and_cancellation_flow_to_the_steps_after() {
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    // ab is 2×2; its product with a 3×3 cannot be planned, so abc fails
    // when it is released, and d after it.
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "ab", "job": {"kernel": "matmul", "a": matrix(2, 3, 0.0), "b": matrix(3, 2, 1.0)}},
            {"name": "abc", "job": {"kernel": "matmul", "a": {"result_of": "ab"}, "b": matrix(3, 3, 0.0)}},
            {"name": "d", "after": ["abc"], "job": {"kernel": "factorial", "n": 10}},
        ]}))
        .await
        .unwrap();
    let status = c
        .wait_workflow(wf["id"].as_str().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["steps"]["ab"]["state"], "succeeded");
    assert_eq!(status["steps"]["abc"]["state"], "failed");
    assert!(
        status["steps"]["abc"]["error"]
            .as_str()
            .unwrap()
            .contains("do not make a job"),
        "{status}"
    );
    let d = status["steps"]["d"]["error"].as_str().unwrap();
    assert!(
        d.contains("step \"abc\" failed") && d.contains("step \"d\" did not run"),
        "{d}"
    );

    // A step's job cancelled on its own: the step after fails, saying so.
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "slow", "job": {"kernel": "factorial", "n": 10, "countdown_s": 60}},
            {"name": "next", "after": ["slow"], "job": {"kernel": "factorial", "n": 10}},
        ]}))
        .await
        .unwrap();
    c.cancel(step_job(&wf, "slow")).await;
    let status = c
        .wait_workflow(wf["id"].as_str().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["steps"]["slow"]["state"], "cancelled");
    assert!(
        status["steps"]["next"]["error"]
            .as_str()
            .unwrap()
            .contains("was cancelled"),
        "{status}"
    );

    // The whole workflow cancelled: every unfinished step.
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "x", "job": {"kernel": "factorial", "n": 10, "countdown_s": 60}},
            {"name": "y", "after": ["x"], "job": {"kernel": "factorial", "n": 10}},
        ]}))
        .await
        .unwrap();
    let client = c.client();
    let id = wf["id"].as_str().unwrap();
    let resp = client
        .send(client.request(Method::DELETE, &format!("/v1/workflows/{id}")))
        .await
        .unwrap();
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["steps"]["x"]["state"], "cancelled");
    assert_eq!(status["steps"]["y"]["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workflows_are_refused_naming_the_step() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let client = c.client();
    let fib = json!({"kernel": "fibonacci", "n": [5]});
    let many: Vec<Value> = (0..10_000)
        .map(|i| json!({"name": format!("s{i}"), "job": fib}))
        .collect();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"steps": [{"name": "a", "after": ["b"], "job": fib}, {"name": "b", "after": ["a"], "job": fib}]}),
            "invalid_step",
            "cycle",
        ),
        (
            json!({"steps": [{"name": "me", "after": ["me"], "job": fib}]}),
            "invalid_step",
            "\"me\": it names itself",
        ),
        (
            json!({"steps": [{"name": "a", "after": ["ghost"], "job": fib}]}),
            "invalid_step",
            "\"ghost\"",
        ),
        (json!({"steps": many}), "invalid_workflow", "10000 steps"),
        (
            json!({"steps": [{"name": "f", "job": fib}, {"name": "m", "job": {"kernel": "matmul", "a": {"result_of": "f"}, "b": [[1.0]]}}]}),
            "invalid_step",
            "step \"m\"",
        ),
        (
            json!({"steps": [{"name": "f", "job": fib}, {"name": "x", "job": {"kernel": "factorial", "n": {"result_of": "f"}}}]}),
            "invalid_step",
            "step \"x\"",
        ),
        (
            json!({"steps": [{"name": "a", "job": fib}, {"name": "a", "job": fib}]}),
            "invalid_step",
            "two steps",
        ),
        (json!({"steps": []}), "invalid_workflow", "empty"),
        (
            json!({"steps": [{"name": "f", "job": fib}, {"name": "w", "job": {"kernel": "wasm", "module": format!("sha256:{}", "0".repeat(64)), "items": {"result_of": "f"}}}]}),
            "invalid_step",
            "step \"w\": no module sha256:000",
        ),
    ];
    for (body, code, says) in cases {
        let resp = client
            .request(Method::POST, "/v1/workflows")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message:?} should say {says:?}");
    }
    let resp = client
        .send(client.request(Method::GET, "/v1/workflows/nope"))
        .await;
    assert!(
        matches!(resp, Err(musketeer_client::ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND)
    );
}

/// A chain of three steps whose middle one counts down (8 s), so the
/// coordinator can be SIGKILLed with the first done and the rest to come;
/// after the restart the workflow completes with the right answer.
async fn survives_a_sigkill(c: &mut Coordinator, _agent: &Agent) {
    let firsts: Vec<u64> = (1..15).collect();
    let wf = c
        .submit_workflow(&json!({"steps": [
            {"name": "a", "job": {"kernel": "fibonacci", "n": firsts}},
            {"name": "b", "job": {"kernel": "fibonacci", "n": {"result_of": "a"}, "countdown_s": 8}},
            {"name": "c", "job": {"kernel": "factorial", "n": 30}, "after": ["b"]},
        ]}))
        .await
        .unwrap();
    let id = wf["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.workflow(&id).await.unwrap();
        let b = &s["steps"]["b"]["state"];
        if s["steps"]["a"]["state"] == "succeeded" && (b == "queued" || b == "running") {
            break;
        }
        assert!(
            Instant::now() < end,
            "the workflow did not reach its middle: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.restart().unwrap();
    let status = c.wait_workflow(&id, TIMEOUT).await.unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    let values: Vec<u64> = reference::fibonacci(&firsts)
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let got = c.result(step_job(&wf, "b"), TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&got), reference::fibonacci(&values));
    let got = c.result(step_job(&wf, "c"), TIMEOUT).await.unwrap();
    assert_eq!(got["value"].as_str().unwrap(), reference::factorial(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_survives_a_sigkilled_coordinator_on_the_embedded_store() {
    let mut c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let agent = Agent::join(&c.url, &c.join_token, &[]).unwrap();
    survives_a_sigkill(&mut c, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_survives_a_sigkilled_coordinator_on_redis() {
    let redis = RedisServer::start().unwrap();
    let mut c = Coordinator::start(CoordinatorOptions {
        extra: vec!["--redis".into(), redis.url()],
        ..CoordinatorOptions::default()
    })
    .unwrap();
    let agent = Agent::join(&c.url, &c.join_token, &[]).unwrap();
    survives_a_sigkill(&mut c, &agent).await;
}
