//! Redundancy end to end: honest agents and a lying one (the hidden
//! `--corrupt-results` flag) on a job with `redundancy: 2`. No wrong answer
//! may be accepted, and the liar must show up as `suspect`.

use std::time::Duration;

use musketeer_tests::{reference, Agent, Cluster, Coordinator, CoordinatorOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_agent_is_outvoted_and_flagged() {
    // The liar sees the job first and starts on it alone, so that it casts
    // a good share of the votes; three honest agents then join, two votes
    // per task and a third to break the ties its lies cause.
    let coordinator = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let join = |extra: &[&str]| {
        let mut flags = vec!["--cpus", "1"];
        flags.extend_from_slice(extra);
        Agent::join(&coordinator.url, &coordinator.join_token, &flags).unwrap()
    };
    let liar = join(&["--corrupt-results", "0.5"]);
    let liar_id = liar.wait_id().unwrap();
    let mut cluster = Cluster {
        agents: vec![liar],
        coordinator,
    };
    cluster.wait_for_agents(1).await.unwrap();
    let range = (1000u64, 1400u64);
    let id = cluster
        .coordinator
        .submit(&json!({
            "kernel": "fibonacci",
            "range": {"start": range.0, "end": range.1},
            "items_per_task": 1,
            "redundancy": 2,
        }))
        .await
        .unwrap();
    // Running means its first task was leased, and the liar is the only
    // agent: it may hold nothing by the time we look (its tasks are tiny,
    // and it can vote on each task only once), so its lease count is no
    // condition to wait on.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.coordinator.job_status(&id).await.unwrap()["state"] == "queued" {
        assert!(std::time::Instant::now() < end, "the liar never leased");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let agent = Agent::join(
            &cluster.coordinator.url,
            &cluster.coordinator.join_token,
            &["--cpus", "1"],
        )
        .unwrap();
        cluster.agents.push(agent);
    }
    let c = &cluster.coordinator;
    let result = c.result(&id, Duration::from_secs(180)).await.unwrap();
    let ns: Vec<u64> = (range.0..range.1).collect();
    let got: Vec<String> = result["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect();
    let agents = c.agents().await.unwrap();
    let want = reference::fibonacci(&ns);
    let wrong: Vec<u64> = ns
        .iter()
        .zip(got.iter().zip(&want))
        .filter(|(_, (g, w))| g != w)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        wrong.is_empty() && got.len() == want.len(),
        "wrong answers accepted for n in {wrong:?} ({} values of {}); agents: {agents:#?}",
        got.len(),
        want.len()
    );
    for a in &agents {
        let id = a["id"].as_str().unwrap();
        if id == liar_id {
            assert_eq!(a["trust"], "suspect", "the liar is flagged: {a}");
            assert!(a["results_invalid"].as_u64().unwrap() >= 2, "{a}");
        } else {
            assert_ne!(a["trust"], "suspect", "an honest agent is not flagged: {a}");
            assert_eq!(a["results_invalid"], 0, "{a}");
        }
    }
    // Credit only for agreeing results: at least one per task (a trusted
    // agent's answer can stand alone), and never the liar's outvoted ones.
    let credited: u64 = agents
        .iter()
        .map(|a| a["tasks_done"].as_u64().unwrap())
        .sum();
    let valid: u64 = agents
        .iter()
        .map(|a| a["results_valid"].as_u64().unwrap())
        .sum();
    assert_eq!(credited, valid);
    assert!(credited >= ns.len() as u64, "{credited}");

    // The operator's view says the same.
    let out = std::process::Command::new(musketeer_tests::bin("musketeer-coordinator"))
        .args(["agents", "list", "--data-dir"])
        .arg(c.dir.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let liar_line = listing
        .lines()
        .find(|l| l.starts_with(&liar_id))
        .unwrap_or_else(|| panic!("the liar is listed: {listing}"));
    assert!(liar_line.contains("suspect"), "{listing}");
}
