//! Schedules end to end: bad input refused naming what is wrong; a
//! schedule every 2 s fires each tick, records its jobs, pauses, resumes
//! and goes; ticks missed while the coordinator was down run once on its
//! return; and three coordinators on one Redis, one SIGKILLed, fire each
//! tick of a minute exactly once.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use musketeer_client::ApiClient;
use musketeer_tests::shared::SharedCluster;
use musketeer_tests::{Coordinator, CoordinatorOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const JOB: fn() -> Value = || json!({"kernel": "factorial", "n": 20});

async fn create(c: &ApiClient, cron: &str) -> String {
    let resp = c
        .send(
            c.request(Method::POST, "/v1/schedules")
                .json(&json!({"cron": cron, "timezone": "UTC", "job": JOB()})),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert!(v["next_run"].as_str().unwrap().ends_with('Z'), "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn post(c: &ApiClient, path: &str) -> Value {
    c.send(c.request(Method::POST, path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The jobs schedule `id` made, as (created ms, job id), oldest first.
async fn fired(c: &ApiClient, id: &str) -> Vec<(u64, String)> {
    let v = c.get_json("/v1/jobs?limit=10000").await.unwrap();
    let mut jobs: Vec<(u64, String)> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["schedule"] == id)
        .map(|j| {
            (
                j["created_ms"].as_u64().unwrap(),
                j["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    jobs.sort();
    jobs
}

/// Waits until schedule `id` (of 2-second ticks) has made `n` jobs, for
/// at most 3 s a job and 10 s more.
async fn wait_for_jobs(c: &ApiClient, id: &str, n: usize) {
    let limit = Duration::from_secs(10 + 3 * n as u64);
    let end = Instant::now() + limit;
    loop {
        let jobs = fired(c, id).await;
        if jobs.len() >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "{} of {n} jobs in {limit:?}: {jobs:?}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks, once `paused` (the schedule as its pause answered) is settled,
/// that every 2-second tick from the first to the schedule's next made
/// exactly one job; returns the jobs. A claim and its job's creation are
/// two steps on Redis, and a tick claimed by a killed coordinator is
/// finished by another later: this waits until every claimed tick's job
/// exists.
async fn every_tick_once(c: &ApiClient, id: &str, paused: &Value) -> Vec<(u64, String)> {
    let next = paused["next_run_ms"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = c.get_json("/v1/schedules").await.unwrap();
        let last = list["schedules"][0]["last_jobs"]
            .as_array()
            .unwrap()
            .clone();
        if last.iter().all(|j| !j["state"].is_null()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a claimed tick has no job: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs = fired(c, id).await;
    let ticks: Vec<u64> = jobs.iter().map(|(t, _)| t / 2000).collect();
    let first = *ticks.first().expect("the schedule fired");
    assert_eq!(
        ticks,
        (first..next / 2000).collect::<Vec<u64>>(),
        "every tick before the next ({}) must have fired exactly once",
        next / 2000
    );
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_naming_what_is_wrong() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let client = c.client();
    let cases = [
        (
            json!({"cron": "0 0 30 2 *", "job": JOB()}),
            "cron_never_fires",
            "\"0 0 30 2 *\"",
        ),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Olympus", "job": JOB()}),
            "unknown_timezone",
            "Mars/Olympus",
        ),
        (
            json!({"cron": "*/5 * *", "job": JOB()}),
            "invalid_cron",
            "\"*/5 * *\"",
        ),
        (
            json!({"cron": "61 * * * *", "job": JOB()}),
            "invalid_cron",
            "\"61 * * * *\"",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kernel": "sort"}}),
            "invalid_job",
            "sort",
        ),
        (json!({"cron": "* * * * *"}), "invalid_schedule", "job"),
    ];
    for (body, code, says) in cases {
        let resp = client
            .request(Method::POST, "/v1/schedules")
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
    assert!(client.get_json("/v1/schedules").await.unwrap()["schedules"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_tick_pauses_resumes_and_goes() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let client = c.client();
    let id = create(&client, "*/2 * * * * *").await;
    wait_for_jobs(&client, &id, 3).await;
    let paused = post(&client, &format!("/v1/schedules/{id}/pause")).await;
    assert_eq!(paused["paused"], true, "{paused}");
    let jobs = every_tick_once(&client, &id, &paused).await;
    assert_eq!(
        paused["last_jobs"][0]["id"],
        jobs.last().unwrap().1.as_str(),
        "{paused}"
    );
    // The newest tick's job is released (planned, queued) just after its
    // claim: it may still be waiting at the pause.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let list = client.get_json("/v1/schedules").await.unwrap();
        let s = &list["schedules"][0];
        if s["last_jobs"][0]["state"] == "queued" {
            break;
        }
        assert!(
            Instant::now() < end,
            "the newest tick's job was not released: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = jobs.len();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(
        fired(&client, &id).await.len(),
        before,
        "fired while paused"
    );
    let resumed = post(&client, &format!("/v1/schedules/{id}/resume")).await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    assert!(
        resumed["next_run_ms"].as_u64().unwrap() > now_ms() - 100,
        "{resumed}"
    );
    wait_for_jobs(&client, &id, before + 2).await;

    client
        .send(client.request(Method::DELETE, &format!("/v1/schedules/{id}")))
        .await
        .unwrap();
    let after = fired(&client, &id).await.len();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(fired(&client, &id).await.len(), after, "fired once deleted");
    assert!(client.get_json("/v1/schedules").await.unwrap()["schedules"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_missed_while_down_run_once_on_return() {
    let mut c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let id = create(&c.client(), "*/5 * * * * *").await;
    let end = Instant::now() + Duration::from_secs(15);
    while fired(&c.client(), &id).await.is_empty() {
        assert!(Instant::now() < end, "the schedule never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill();
    let killed = now_ms();
    // Down for at least two ticks; back a little after a tick, so that the
    // next regular one is seconds away.
    tokio::time::sleep(Duration::from_millis(11_000)).await;
    while !(300..1300).contains(&(now_ms() % 5000)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = now_ms();
    c.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(
        back + 3_400 - now_ms().min(back + 3_400),
    ))
    .await;
    let jobs = fired(&c.client(), &id).await;
    let since: Vec<u64> = jobs
        .iter()
        .map(|(t, _)| *t)
        .filter(|&t| t > killed)
        .collect();
    println!(
        "down {} ms ({} ticks missed): {} job(s) on return, {} ms after the restart began",
        back - killed,
        (back - killed) / 5000,
        since.len(),
        since.first().map(|t| t - back).unwrap_or(0)
    );
    assert_eq!(since.len(), 1, "missed ticks must run once: {jobs:?}");
    assert!(since[0] >= back, "fired while down: {jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_on_redis_fire_each_tick_exactly_once() {
    let mut cluster = SharedCluster::start(3, CoordinatorOptions::default(), 0, &[])
        .await
        .unwrap();
    let client = cluster.client();
    let id = create(&client, "*/2 * * * * *").await;
    let started = now_ms();
    // Ten ticks (20 s), then one coordinator SIGKILLed, then on to thirty:
    // a minute of a schedule every 2 s.
    wait_for_jobs(&client, &id, 10).await;
    cluster.coordinators[0].kill();
    wait_for_jobs(&client, &id, 30).await;
    let stopped = now_ms();
    let paused = post(&client, &format!("/v1/schedules/{id}/pause")).await;
    // The store says which ticks were claimed: every one before its next.
    let next = paused["next_run_ms"].as_u64().unwrap();
    let jobs = every_tick_once(&client, &id, &paused).await;
    let ticks: Vec<u64> = jobs.iter().map(|(t, _)| t / 2000).collect();
    println!(
        "{} jobs over {} ms with three coordinators, one SIGKILLed after ten; next tick {}; ticks {:?}",
        jobs.len(),
        stopped - started,
        next / 2000,
        ticks
    );
    let first = ticks[0];
    assert!(
        first * 2000 <= started + 2000,
        "the first tick came late: started {started}: {ticks:?}"
    );
    assert!(
        next + 2000 >= stopped,
        "ticks stopped early: next {next}, paused at {stopped}: {ticks:?}"
    );
    assert!(jobs.len() >= 30, "{} jobs", jobs.len());
}
