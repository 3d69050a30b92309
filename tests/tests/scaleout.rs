//! Scale-out: coordinators that share one Redis behind one address. One of
//! three is SIGKILLed mid-job, or Redis itself is SIGKILLed and restarted
//! from its append-only file: every accepted job still completes with the
//! right answer.

use std::time::{Duration, Instant};

use musketeer_tests::redis::RedisServer;
use musketeer_tests::shared::SharedCluster;
use musketeer_tests::{reference, Coordinator, CoordinatorOptions};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(240);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Jobs of every kernel, with what their results must be checked against.
struct Jobs {
    fib: (String, Vec<u64>),
    fact: String,
    mm: (String, Vec<Vec<f64>>, Vec<Vec<f64>>),
    wc: (String, String),
}

/// A text of a few hundred KiB with repeated words in mixed case.
fn text() -> String {
    let words = ["alpha", "Beta", "don't", "gamma", "Delta", "alpha", "épée"];
    (0..60_000u64)
        .map(|i| words[((i * 2_654_435_761) % 7) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn matrix(m: usize, n: usize, seed: u64) -> Vec<Vec<f64>> {
    (0..m)
        .map(|i| {
            (0..n)
                .map(|j| ((i * 31 + j * 17 + seed as usize) % 13) as f64 - 6.0)
                .collect()
        })
        .collect()
}

async fn submit_jobs(cluster: &SharedCluster) -> Jobs {
    // A few seconds of work on the agents: mid-sized Fibonacci numbers.
    let ns: Vec<u64> = (0..6_000u64).map(|i| 20_000 + (i * 7919) % 500).collect();
    let fib = cluster
        .submit(&json!({"kernel": "fibonacci", "n": ns}))
        .await
        .unwrap();
    let fact = cluster
        .submit(&json!({"kernel": "factorial", "n": 20000}))
        .await
        .unwrap();
    let (a, b) = (matrix(60, 70, 1), matrix(70, 50, 2));
    let mm = cluster
        .submit(&json!({"kernel": "matmul", "a": a, "b": b}))
        .await
        .unwrap();
    let text = text();
    let wc = cluster
        .submit(&json!({"kernel": "wordcount", "text": text, "top": 5}))
        .await
        .unwrap();
    Jobs {
        fib: (fib, ns),
        fact,
        mm: (mm, a, b),
        wc: (wc, text),
    }
}

async fn check_jobs(cluster: &SharedCluster, jobs: &Jobs) {
    let got = cluster.result(&jobs.fib.0, JOB_TIMEOUT).await.unwrap();
    assert!(
        strings(&got["values"]) == reference::fibonacci(&jobs.fib.1),
        "wrong Fibonacci values"
    );
    let got = cluster.result(&jobs.fact, JOB_TIMEOUT).await.unwrap();
    assert_eq!(
        got["value"].as_str().unwrap(),
        reference::factorial(20000),
        "wrong factorial"
    );
    let got = cluster.result(&jobs.mm.0, JOB_TIMEOUT).await.unwrap();
    let want = reference::matmul(&jobs.mm.1, &jobs.mm.2);
    let rows = got["c"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for (row, want) in rows.iter().zip(&want) {
        for (x, y) in row.as_array().unwrap().iter().zip(want) {
            assert!(reference::close(x.as_f64().unwrap(), *y), "{x} != {y}");
        }
    }
    let got = cluster.result(&jobs.wc.0, JOB_TIMEOUT).await.unwrap();
    let (total, list) = reference::wordcount(jobs.wc.1.as_bytes(), 1, false, false);
    assert_eq!(got["total_words"], total);
    assert_eq!(got["top"], json!(list[..5]));
}

/// Waits until the Fibonacci job is under way (some tasks done, not all).
async fn wait_mid_job(cluster: &SharedCluster, id: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let s = cluster.status(id).await.unwrap();
        let done = s["progress"]["done"].as_u64().unwrap_or(0);
        if done > 0 {
            assert!(
                s["state"] == "running",
                "the job finished before the kill could hit it mid-way: {s}"
            );
            return;
        }
        assert!(Instant::now() < end, "the job never started: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_one_sigkilled_mid_job() {
    let mut cluster = SharedCluster::start(
        3,
        CoordinatorOptions {
            lease_ttl: 2.0,
            ..Default::default()
        },
        3,
        &["--cpus", "1"],
    )
    .await
    .unwrap();
    // One CA and one admin token for all: the join token of the first
    // enrolled agents on all three (the balancer spread them).
    let ca = &cluster.coordinators[0].ca_pem;
    assert!(cluster.coordinators.iter().all(|c| &c.ca_pem == ca));
    let jobs = submit_jobs(&cluster).await;
    wait_mid_job(&cluster, &jobs.fib.0).await;
    cluster.coordinators[1].kill();
    // New work accepted after the kill goes to the survivors too.
    let after = cluster
        .submit(&json!({"kernel": "fibonacci", "range": {"start": 0, "end": 500}}))
        .await
        .unwrap();
    check_jobs(&cluster, &jobs).await;
    // HAProxy's health checks of /healthz took the dead one out of the
    // rotation and kept the survivors in it.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let servers = cluster.balancer.servers().unwrap();
        let status = |name: &str| servers.iter().find(|s| s.0 == name).map(|s| s.1.clone());
        if status("coordinator1").as_deref() == Some("DOWN")
            && status("coordinator0").as_deref() == Some("UP")
            && status("coordinator2").as_deref() == Some("UP")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "haproxy did not mark the killed coordinator down: {servers:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = cluster.result(&after, JOB_TIMEOUT).await.unwrap();
    assert_eq!(
        strings(&got["values"]),
        reference::fibonacci(&(0..500).collect::<Vec<_>>())
    );
    // Work went through more than one coordinator: each logs the results
    // it recorded.
    let serving = cluster
        .coordinators
        .iter()
        .filter(|c| c.log().contains("agent enrolled"))
        .count();
    assert!(
        serving >= 2,
        "the balancer used one coordinator only\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_and_restarted_mid_job_loses_no_accepted_job() {
    let mut cluster = SharedCluster::start(
        2,
        CoordinatorOptions {
            lease_ttl: 2.0,
            ..Default::default()
        },
        2,
        &["--cpus", "1"],
    )
    .await
    .unwrap();
    let jobs = submit_jobs(&cluster).await;
    wait_mid_job(&cluster, &jobs.fib.0).await;
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.redis.restart().unwrap();
    let after = cluster
        .submit(&json!({"kernel": "factorial", "n": 3000}))
        .await
        .unwrap_or_else(|e| panic!("submit after the restart: {e}\n{}", cluster.logs()));
    check_jobs(&cluster, &jobs).await;
    let got = cluster.result(&after, JOB_TIMEOUT).await.unwrap();
    assert_eq!(got["value"].as_str().unwrap(), reference::factorial(3000));
    assert!(
        cluster
            .coordinators
            .iter()
            .any(|c| c.log().contains("Redis error")),
        "no coordinator noticed Redis was down: the kill came too late\n{}",
        cluster.logs()
    );
    let listed = cluster
        .client()
        .get_json("/v1/jobs?limit=100")
        .await
        .unwrap();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        5,
        "every accepted job is still listed: {listed}"
    );
}

/// A coordinator whose data directory already holds its own CA cannot join
/// a cluster with another one: agents pinned to either would be refused by
/// half the coordinators. It says what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_another_ca_is_refused() {
    let redis = RedisServer::start().unwrap();
    let shared = vec!["--redis".to_string(), redis.url()];
    let _first = Coordinator::start(CoordinatorOptions {
        extra: shared.clone(),
        ..Default::default()
    })
    .unwrap();
    let mut lone = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let err = lone
        .restart_with(CoordinatorOptions {
            extra: shared,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds another CA") && err.contains("--redis-prefix"),
        "{err}"
    );
}
