//! Killed processes lose no accepted work: an agent SIGKILLed mid-job, an
//! agent stopped with SIGTERM, a coordinator SIGKILLed and restarted, a job
//! failed by a bad volunteer and retried.

use std::time::{Duration, Instant};

use musketeer_tests::{
    capacity, reference, terminate, wait_exit, Agent, Cluster, CoordinatorOptions,
};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// A job of many mid-sized Fibonacci numbers: a few seconds of work.
fn slow_job(items: u64) -> (Value, Vec<u64>) {
    let ns: Vec<u64> = (0..items).map(|i| 30_000 + (i * 7919) % 300).collect();
    (json!({"kernel": "fibonacci", "n": ns}), ns)
}

/// The id the agent logged when it started working.
async fn agent_id(agent: &Agent) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let log = agent.log();
        if let Some(rest) = log
            .split("agent ")
            .find_map(|s| s.split_once(" working for").map(|(id, _)| id.to_string()))
        {
            return rest.trim().to_string();
        }
        assert!(
            Instant::now() < end,
            "the agent never said it was working:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leased_by(cluster: &Cluster, id: &str) -> u64 {
    cluster
        .coordinator
        .agents()
        .await
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["leased"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// A job's status, as `GET /v1/jobs/{id}` shows it.
async fn job_status(cluster: &Cluster, id: &str) -> Value {
    cluster
        .coordinator
        .client()
        .get_json(&format!("/v1/jobs/{id}"))
        .await
        .unwrap()
}

/// Submits a slow job and returns once `agent` holds some of its tasks.
async fn submit_and_wait_for_lease(cluster: &Cluster, agent: &str) -> (String, Vec<u64>) {
    let (body, ns) = slow_job(40_000);
    let id = cluster.coordinator.submit(&body).await.unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while leased_by(cluster, agent).await == 0 {
        assert!(Instant::now() < end, "agent {agent} never leased a task");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (id, ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigkilled_mid_job_and_the_job_still_completes() {
    let mut cluster = Cluster::start(2, CoordinatorOptions::default(), &["--cpus", "1"])
        .await
        .unwrap();
    let victim = agent_id(&cluster.agents[0]).await;
    let (id, ns) = submit_and_wait_for_lease(&cluster, &victim).await;
    cluster.agents[0].kill();
    let status = job_status(&cluster, &id).await;
    assert_ne!(
        status["state"], "succeeded",
        "the job must still be running when its agent dies"
    );

    let got = cluster.coordinator.result(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&got), reference::fibonacci(&ns));
    let status = job_status(&cluster, &id).await;
    assert_eq!(status["progress"]["done"], status["progress"]["total"]);
    assert_eq!(status["progress"]["failed"], 0);
    // The dead agent's leases ran out and their tasks went to the survivor.
    let metrics = cluster
        .coordinator
        .client()
        .send(
            cluster
                .coordinator
                .client()
                .request(reqwest::Method::GET, "/metrics"),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expired: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("musketeer_leases_expired_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        expired >= 1,
        "no lease expired: the kill proved nothing\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigterm_hands_its_leases_back() {
    // A long TTL: the job can only finish quickly if the stopping agent
    // gives its tasks back instead of letting their leases run out.
    let options = CoordinatorOptions {
        lease_ttl: 120.0,
        ..Default::default()
    };
    let mut cluster = Cluster::start(1, options, &["--cpus", "1"]).await.unwrap();
    let victim = agent_id(&cluster.agents[0]).await;
    let (id, ns) = submit_and_wait_for_lease(&cluster, &victim).await;
    terminate(&cluster.agents[0].child);
    let status = wait_exit(&mut cluster.agents[0].child, Duration::from_secs(30));
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "SIGTERM should end the agent cleanly: {status:?}\n{}",
        cluster.agents[0].log()
    );
    assert_eq!(
        leased_by(&cluster, &victim).await,
        0,
        "the stopped agent still holds leases"
    );

    let c = &cluster.coordinator;
    cluster
        .agents
        .push(Agent::join(&c.url, &c.join_token, &[]).unwrap());
    let got = c.result(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(reference::values(&got), reference::fibonacci(&ns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_sigkilled_and_restarted_loses_no_accepted_job() {
    let mut cluster = Cluster::start(0, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    // Accepted while no agent is there...
    let queued = cluster
        .coordinator
        .submit(&json!({"kernel": "factorial", "n": 3000}))
        .await
        .unwrap();
    let (body, ns) = slow_job(4000);
    let running = cluster.coordinator.submit(&body).await.unwrap();
    // ...the coordinator dies before anything ran.
    cluster.coordinator.restart().unwrap();
    let c = &cluster.coordinator;
    cluster
        .agents
        .push(Agent::join(&c.url, &c.join_token, &[]).unwrap());
    cluster
        .agents
        .push(Agent::join(&c.url, &c.join_token, &[]).unwrap());
    cluster.wait_for_agents(2).await.unwrap();

    // And again in the middle of the work: agents must ride it out.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let s = job_status(&cluster, &running).await;
        if s["progress"]["done"].as_u64().unwrap_or(0) > 0 || s["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < end, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.coordinator.restart().unwrap();
    let c = &cluster.coordinator;

    let got = c.result(&queued, JOB_TIMEOUT).await.unwrap();
    assert_eq!(got["value"].as_str().unwrap(), reference::factorial(3000));
    let got = c.result(&running, JOB_TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&got), reference::fibonacci(&ns));
    let status = job_status(&cluster, &running).await;
    assert_eq!(
        status["progress"]["done"], status["progress"]["total"],
        "{status}"
    );
}

/// A job that a bad volunteer failed (one attempt per task) is retried once
/// the volunteer is removed and a good agent joins: only the task that
/// failed and the one its failure cancelled run again, the done ones keep
/// their outputs, and the result is right. A second retry is refused with
/// what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_retried_runs_only_what_was_not_done() {
    let mut cluster = Cluster::start(0, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let client = c.client();
    let bad = c.enrol_manual().await.unwrap();
    let ns = [10u64, 20, 30, 40];
    let id = c
        .submit(&json!({"kernel": "fibonacci", "n": ns, "items_per_task": 1, "max_attempts": 1}))
        .await
        .unwrap();
    let cap = || capacity(std::env::consts::ARCH, &[]);
    let good_part = c.lease_manual(&bad, cap(), 2).await.unwrap();
    assert_eq!(good_part.tasks.len(), 2);
    c.complete_manual(&bad, &good_part).await.unwrap();
    let bad_part = c.lease_manual(&bad, cap(), 1).await.unwrap();
    assert_eq!(bad_part.tasks.len(), 1);
    c.fail_manual(&bad, &bad_part, "a bad volunteer")
        .await
        .unwrap();
    let status = c.wait(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("a bad volunteer"),
        "{status}"
    );
    assert_eq!(status["progress"]["done"], 2, "{status}");

    client
        .send(client.request(reqwest::Method::DELETE, &format!("/v1/agents/{}", bad.id)))
        .await
        .unwrap();
    let retried: Value = client
        .send(client.request(reqwest::Method::POST, &format!("/v1/jobs/{id}/retry")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        matches!(retried["state"].as_str(), Some("running" | "queued")),
        "{retried}"
    );
    assert_eq!(retried["error"], Value::Null, "{retried}");
    assert_eq!(retried["progress"]["failed"], 0, "{retried}");

    cluster
        .agents
        .push(Agent::join(&c.url, &c.join_token, &[]).unwrap());
    let c = &cluster.coordinator;
    let got = c.result(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&got), reference::fibonacci(&ns));
    let agents = c.agents().await.unwrap();
    let good = agents
        .iter()
        .find(|a| a["id"] != bad.id.as_str())
        .expect("the good agent is listed");
    assert_eq!(
        good["tasks_done"], 2,
        "only the failed and the cancelled task ran again: {good}"
    );

    let resp = client
        .request(reqwest::Method::POST, &format!("/v1/jobs/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CONFLICT);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "job_not_retryable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("succeeded") && message.contains("only a failed job"),
        "{message}"
    );
}
