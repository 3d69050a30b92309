//! The volunteer's controls on real agent processes, measured from outside
//! (the coordinator's view, `/proc` of the agent's tree): `--schedule`,
//! `--pause-on-battery` with a faked battery, `musketeer pause` / `resume`
//! and `musketeer status` over the control socket.
//!
//! A paused agent keeps the leases of its frozen tasks (heartbeats go on)
//! for `--hold-leases-when-paused` (10 minutes by default), then gives them
//! back; queued tasks it gives back at once.
//!
//! They measure CPU use, so they run one at a time (see [`serial`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use musketeer_tests::procstat;
use musketeer_tests::{reference, Agent, Cluster, Coordinator, CoordinatorOptions};
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an agent that must not work is watched: longer than two lease
/// lifetimes of the test coordinator (2 s), so a lease taken and lost
/// would show.
const WATCH: Duration = Duration::from_secs(5);
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// A day that is not today, yesterday or tomorrow in any time zone: three
/// days after today in UTC (zones are at most 14 hours off UTC).
fn a_day_that_is_not_now() -> &'static str {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    // 1 January 1970 was a Thursday.
    DAYS[((days + 3 + 3) % 7) as usize]
}

/// Fibonacci numbers enough for some seconds of work on one core, and the
/// reference answer.
fn fib_job(items: u64) -> (Value, Vec<String>) {
    let ns: Vec<u64> = (0..items).map(|i| 200_000 + (i * 7919) % 5000).collect();
    (
        json!({"kernel": "fibonacci", "n": ns}),
        reference::fibonacci(&ns),
    )
}

/// `musketeer status --json` of `agent`.
fn status(agent: &Agent) -> Value {
    let out = agent.command(&["status", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "status failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// Waits until `musketeer status` answers (the socket is up once the agent works).
async fn wait_for_status(agent: &Agent) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = agent.command(&["status", "--json"]).unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            Instant::now() < end,
            "the agent never answered status: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks for [`WATCH`] that `agent_id` holds no lease and job `id` makes no progress.
async fn assert_idle(c: &Coordinator, agent_id: &str, id: &str) {
    let end = Instant::now() + WATCH;
    while Instant::now() < end {
        assert_eq!(
            c.leased_by(agent_id).await.unwrap(),
            0,
            "a held agent leased a task"
        );
        let job = c.job_status(id).await.unwrap();
        assert_eq!(job["state"], "queued", "the job progressed: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_lease(c: &Coordinator, agent_id: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while c.leased_by(agent_id).await.unwrap() == 0 {
        assert!(Instant::now() < end, "agent {agent_id} never leased a task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_runs_outside_the_schedule() {
    let _serial = serial().await;
    let day = a_day_that_is_not_now();
    let cluster = Cluster::start(
        1,
        CoordinatorOptions::default(),
        &[
            "--cpus",
            "1",
            "--schedule",
            &format!("{day},{day} 00:00-01:00"),
        ],
    )
    .await
    .unwrap();
    let mut agent = cluster.agents.into_iter().next().unwrap();
    let c = &cluster.coordinator;
    let agent_id = agent.wait_id().unwrap();
    let s = wait_for_status(&agent).await;
    assert_eq!(s["state"], "outside_schedule", "{s}");
    assert!(s["next_window_in_min"].as_u64().unwrap() > 24 * 60, "{s}");
    let (job, want) = fib_job(40);
    let id = c.submit(&job).await.unwrap();
    assert_idle(c, &agent_id, &id).await;
    assert!(agent.log().contains("outside schedule"), "{}", agent.log());

    // The same agent, with a window that includes now: the job finishes.
    agent.restart_with(&["--schedule", "mon-sun"]).unwrap();
    let result = c.result(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&result), want);
    assert_eq!(wait_for_status(&agent).await["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_uses_no_cpu_keeps_its_leases_and_resume_finishes_the_job() {
    let _serial = serial().await;
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &["--cpus", "1"])
        .await
        .unwrap();
    let agent = &cluster.agents[0];
    let c = &cluster.coordinator;
    let agent_id = agent.wait_id().unwrap();
    wait_for_status(agent).await;
    // Tasks of a second or two each, so the one seen running is still
    // running when the pause lands: flake-hunt saw tasks of 20 items (about
    // 100 ms) finish in the ~100 ms that `status` and `pause` take to start.
    let (mut job, want) = fib_job(2000);
    job["items_per_task"] = json!(400);
    let id = c.submit(&job).await.unwrap();
    wait_for_lease(c, &agent_id).await;
    let end = Instant::now() + Duration::from_secs(30);
    while status(agent)["tasks"]["running"]
        .as_array()
        .is_none_or(|r| r.is_empty())
    {
        assert!(Instant::now() < end, "the agent never ran a task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let out = agent.command(&["pause"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("paused until `musketeer resume`"),
        "{printed}"
    );
    // The supervisor stops the workers within a tick; let it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = status(agent);
    assert_eq!(s["state"], "paused");
    let frozen = s["tasks"]["running"].as_array().unwrap().clone();
    assert!(!frozen.is_empty(), "no task was running when paused: {s}");
    assert_eq!(s["tasks"]["queued"], 0, "queued tasks are given back: {s}");
    let progress = c.job_status(&id).await.unwrap()["progress"].clone();

    let workers = procstat::descendants(agent.pid());
    assert!(!workers.is_empty(), "no worker processes");
    let workers_cpu = || {
        workers
            .iter()
            .map(|&w| procstat::tree_cpu(w))
            .sum::<Duration>()
    };
    let workers_before = workers_cpu();
    let before = procstat::tree_cpu(agent.pid());
    let started = Instant::now();
    while started.elapsed() < WATCH {
        // Kept: the coordinator still counts the frozen tasks as this agent's,
        // past two lease lifetimes.
        assert_eq!(
            c.leased_by(&agent_id).await.unwrap(),
            frozen.len() as u64,
            "the paused agent's leases changed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let used = procstat::tree_cpu(agent.pid()).saturating_sub(before);
    let workers_used = workers_cpu().saturating_sub(workers_before);
    let share = used.as_secs_f64() / started.elapsed().as_secs_f64();
    println!(
        "paused for {:.1} s: the agent's tree used {:.1} ms of CPU ({:.2}% of a core), its workers {} ms",
        started.elapsed().as_secs_f64(),
        used.as_secs_f64() * 1000.0,
        share * 100.0,
        workers_used.as_millis()
    );
    assert_eq!(workers_used, Duration::ZERO, "a frozen worker used CPU");
    // What is left is the agent's own process: heartbeats, and the
    // supervisor's look at /proc (every 100 ms while paused: at its
    // 10 ms tick, a debug build's look alone cost 3 to 4% of a core).
    assert!(
        share < 0.03,
        "a paused agent used {:.1}% of a core",
        share * 100.0
    );
    assert_eq!(status(agent)["tasks"]["running"], Value::Array(frozen));
    assert_eq!(
        c.job_status(&id).await.unwrap()["progress"],
        progress,
        "the job progressed while its only agent was paused"
    );

    let out = agent.command(&["pause", "1h"]).unwrap();
    assert!(out.status.success());
    let until = status(agent)["paused_until_ms"].as_u64().unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        until > now_ms + 3_500_000 && until <= now_ms + 3_600_000,
        "{until}"
    );

    let out = agent.command(&["resume"]).unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("state:        running"));
    let result = c.result(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&result), want);
    assert!(agent.log().contains("paused by `musketeer pause`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_battery_waits_for_mains_power() {
    let _serial = serial().await;
    let power = tempfile::tempdir().unwrap();
    let battery = power.path().join("BAT0");
    std::fs::create_dir(&battery).unwrap();
    std::fs::write(battery.join("type"), "Battery\n").unwrap();
    std::fs::write(battery.join("status"), "Discharging\n").unwrap();
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let agent = Agent::join_env(
        &c.url,
        &c.join_token,
        &["--cpus", "1"],
        &[
            ("MUSKETEER_PAUSE_ON_BATTERY", "true"),
            ("MUSKETEER_POWER_SUPPLY_DIR", power.path().to_str().unwrap()),
        ],
    )
    .unwrap();
    let agent_id = agent.wait_id().unwrap();
    let s = wait_for_status(&agent).await;
    assert_eq!(s["state"], "on_battery", "{s}");
    assert_eq!(s["pause_on_battery"], true);
    let (job, want) = fib_job(40);
    let id = c.submit(&job).await.unwrap();
    assert_idle(&c, &agent_id, &id).await;

    std::fs::write(battery.join("status"), "Charging\n").unwrap();
    let result = c.result(&id, JOB_TIMEOUT).await.unwrap();
    assert_eq!(reference::values(&result), want);
    assert!(
        agent.log().contains("no longer on battery"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_what_the_coordinator_says() {
    let _serial = serial().await;
    let cluster = Cluster::start(1, CoordinatorOptions::default(), &["--cpus", "1"])
        .await
        .unwrap();
    let agent = &cluster.agents[0];
    let c = &cluster.coordinator;
    let agent_id = agent.wait_id().unwrap();
    let (job, want) = fib_job(40);
    let id = c.submit(&job).await.unwrap();
    assert_eq!(
        reference::values(&c.result(&id, JOB_TIMEOUT).await.unwrap()),
        want
    );

    let s = wait_for_status(agent).await;
    let record = c
        .agents()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a["id"] == agent_id.as_str())
        .unwrap();
    let view = &s["coordinator_view"];
    assert_eq!(s["coordinator"], c.url.as_str());
    assert_eq!(s["agent_id"], agent_id.as_str());
    assert_eq!(s["state"], "running");
    assert!(record["tasks_done"].as_u64().unwrap() > 0, "{record}");
    for field in [
        "tasks_done",
        "cpu_ms",
        "leased",
        "state",
        "trust",
        "results_valid",
    ] {
        assert_eq!(view[field], record[field], "{field}: {view} vs {record}");
    }
    assert_eq!(s["limits"]["cpus"], 1);
    assert!(s["session"]["accepted"].as_u64().unwrap() > 0, "{s}");

    let out = agent.command(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "coordinator says: {} tasks credited",
            record["tasks_done"]
        )),
        "{text}"
    );

    // No agent on a state directory: a clear error, not a hang.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(musketeer_tests::bin("musketeer"))
        .args(["status", "--state-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no agent is running") && err.contains("musketeer run"),
        "{err}"
    );
}

#[test]
fn a_bad_schedule_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(musketeer_tests::bin("musketeer"))
        .args(["run", "--schedule", "weeknights 18:00-08:00", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "--schedule",
        "MUSKETEER_SCHEDULE",
        "unknown day \"weeknights\"",
        "mon",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
