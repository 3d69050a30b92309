//! The shared store on a real Redis Cluster (three masters, three
//! replicas, `tests/src/redis_cluster.rs`): two coordinators on it, an agent
//! on each, jobs of every kernel. Mid-job, right after a job was accepted,
//! the master of the shared slot (queues, agents, tokens, the job list and
//! the work epoch) is SIGKILLed while a client keeps submitting; its replica
//! is promoted by the cluster's own failover, and every accepted job
//! finishes with the right answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use musketeer_client::ApiClient;
use musketeer_tests::redis_cluster::RedisCluster;
use musketeer_tests::{reference, Agent, Coordinator, CoordinatorOptions};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// The keys' prefix of the coordinators (their default): the shared slot
/// is the slot of `{musketeer}`.
const PREFIX: &str = "musketeer";

/// Waits for a job to succeed, asking each coordinator in turn, through
/// the errors a failover gives; returns its JSON result.
async fn result(clients: &[ApiClient], id: &str, timeout: Duration) -> Result<Value> {
    let end = Instant::now() + timeout;
    let mut last = Value::Null;
    for turn in 0.. {
        let c = &clients[turn % clients.len()];
        match c.get_json(&format!("/v1/jobs/{id}")).await {
            Ok(s) if s["state"] == "succeeded" => {
                if let Ok(bytes) = musketeer_client::result_bytes(c, id, "json").await {
                    return Ok(serde_json::from_slice(&bytes)?);
                }
            }
            Ok(s) if s["state"] == "failed" || s["state"] == "cancelled" => {
                bail!("job {id} ended {s}")
            }
            Ok(s) => last = s,
            Err(e) => last = json!(e.to_string()),
        }
        if Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("job {id} did not finish in {timeout:?}: {last}")
}

fn strings(v: &Value) -> Vec<String> {
    v["values"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn submit(c: &ApiClient, body: &Value) -> Result<String> {
    Ok(musketeer_client::submit_json(c, serde_json::to_vec(body)?).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_job_loses_no_accepted_job() {
    let started = Instant::now();
    let mut redis = RedisCluster::start().unwrap();
    let options = CoordinatorOptions {
        lease_ttl: 2.0,
        extra: vec!["--redis".into(), redis.url()],
    };
    let coordinators = [
        Coordinator::start(options.clone()).unwrap(),
        Coordinator::start(options).unwrap(),
    ];
    let ca = &coordinators[0].ca_pem;
    assert!(coordinators.iter().all(|c| &c.ca_pem == ca), "one CA");
    let clients: Vec<ApiClient> = coordinators.iter().map(Coordinator::client).collect();
    let token = &coordinators[0].join_token;
    let _agents: Vec<Agent> = coordinators
        .iter()
        .map(|c| Agent::join(&c.url, token, &["--cpus", "1"]).unwrap())
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    while coordinators[1].agents().await.unwrap().len() < 2 {
        assert!(Instant::now() < end, "the agents did not enrol");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Jobs of every kernel, on both coordinators; the Fibonacci one is a
    // few seconds of work in a hundred tasks, so that it is seen running
    // (four big tasks could all come back in one batch) and the kill comes
    // mid-job.
    let ns: Vec<u64> = (0..2_000u64).map(|i| 40_000 + (i * 7919) % 500).collect();
    let fib = submit(
        &clients[0],
        &json!({"kernel": "fibonacci", "n": ns, "items_per_task": 20}),
    )
    .await
    .unwrap();
    let fact = submit(&clients[1], &json!({"kernel": "factorial", "n": 5000}))
        .await
        .unwrap();
    let a: Vec<Vec<f64>> = (0..30)
        .map(|i| {
            (0..40)
                .map(|j| ((i * 7 + j * 3) % 11) as f64 - 5.0)
                .collect()
        })
        .collect();
    let b: Vec<Vec<f64>> = (0..40)
        .map(|i| (0..20).map(|j| ((i * 5 + j) % 9) as f64 - 4.0).collect())
        .collect();
    let mm = submit(&clients[0], &json!({"kernel": "matmul", "a": a, "b": b}))
        .await
        .unwrap();
    let text = "the cat and the hat and the bat ".repeat(2_000);
    let wc = submit(
        &clients[1],
        &json!({"kernel": "wordcount", "text": text, "top": 3}),
    )
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = clients[0]
            .get_json(&format!("/v1/jobs/{fib}"))
            .await
            .unwrap();
        if s["progress"]["done"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(s["state"], "running", "the job ended before the kill: {s}");
            break;
        }
        assert!(Instant::now() < end, "the job never started: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The master of the shared slot and the replica that will replace it.
    let master = redis.master_of(&format!("{{{PREFIX}}}")).unwrap();
    let replica = redis.replica_of(master).unwrap();
    // A job accepted just before the kill: its 201 came once a replica of
    // each master it was written to had it.
    let last = submit(
        &clients[1],
        &json!({"kernel": "fibonacci", "n": [10, 20, 30]}),
    )
    .await
    .unwrap();
    redis.kill(master);
    let killed_at = Instant::now();

    // A client that keeps submitting through the failover: what it is
    // refused was not accepted; what it is given an id for must finish.
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn({
        let clients = clients.clone();
        let stop = stop.clone();
        async move {
            let (mut accepted, mut refused) = (Vec::new(), 0);
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let start = i * 7;
                let body =
                    json!({"kernel": "fibonacci", "range": {"start": start, "end": start + 30}});
                match submit(&clients[i as usize % 2], &body).await {
                    Ok(id) => accepted.push((id, start)),
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (accepted, refused)
        }
    });
    tokio::task::block_in_place(|| redis.wait_promoted(replica, Duration::from_secs(20))).unwrap();
    let failover = killed_at.elapsed();
    // Submissions on the promoted replica for a while (each waits up to
    // 1 s for a replica of its own, which the new master lacks).
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (accepted, refused) = submitter.await.unwrap();
    let nodes = redis.nodes().unwrap();
    assert!(
        nodes.iter().any(|n| n.port == master && n.failed),
        "the killed master is marked failed: {nodes:?}"
    );
    assert!(
        refused > 0,
        "no submission met the failover: the kill came too late"
    );
    assert!(
        !accepted.is_empty(),
        "no submission was accepted after the failover"
    );

    let logs = || {
        coordinators
            .iter()
            .enumerate()
            .map(|(i, c)| format!("--- coordinator {i}:\n{}", c.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let got = result(&clients, &fib, JOB_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(
        strings(&got) == reference::fibonacci(&ns),
        "wrong Fibonacci values"
    );
    let got = result(&clients, &fact, JOB_TIMEOUT).await.unwrap();
    assert_eq!(got["value"].as_str().unwrap(), reference::factorial(5000));
    let got = result(&clients, &mm, JOB_TIMEOUT).await.unwrap();
    let want = reference::matmul(&a, &b);
    let rows = got["c"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for (row, want) in rows.iter().zip(&want) {
        for (x, y) in row.as_array().unwrap().iter().zip(want) {
            assert!(reference::close(x.as_f64().unwrap(), *y), "{x} != {y}");
        }
    }
    let got = result(&clients, &wc, JOB_TIMEOUT).await.unwrap();
    let (total, top) = reference::wordcount(text.as_bytes(), 1, false, false);
    assert_eq!(got["total_words"], total);
    assert_eq!(got["top"], json!(top[..3]));
    let got = result(&clients, &last, JOB_TIMEOUT).await.unwrap();
    assert_eq!(strings(&got), reference::fibonacci(&[10, 20, 30]));
    for (id, start) in &accepted {
        let got = result(&clients, id, JOB_TIMEOUT).await.unwrap();
        let want: Vec<u64> = (*start..start + 30).collect();
        assert_eq!(strings(&got), reference::fibonacci(&want), "job {id}");
    }
    eprintln!(
        "failover in {:.1} s; {} submissions accepted and {refused} refused around it; \
         {:.1} s in all",
        failover.as_secs_f64(),
        accepted.len(),
        started.elapsed().as_secs_f64()
    );
}
