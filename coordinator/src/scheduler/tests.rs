//! The scheduler in-process, over a real SQLite store in a temporary
//! directory and a clock the tests move: long-poll wake, lease expiry, the
//! reduce of finished jobs and the CPU-report clamp.

use std::time::Duration;

use musketeer_tasks::job::parse_job;
use musketeer_tasks::protocol::{TaskOutcome, TaskReport};
use musketeer_tasks::TaskInput;

use super::*;
use crate::clock::ManualClock;
use crate::store::conformance::{enrol, query, T0};
use crate::store::{JobState, JobTiming, SqliteStore};

/// A scheduler over a fresh store, with its clock at [`T0`].
struct Fixture {
    scheduler: Arc<Scheduler>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture(lease_ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    for agent in ["a", "b"] {
        enrol(store.as_ref(), agent).await;
    }
    let clock = Arc::new(ManualClock::new(T0));
    let scheduler = Scheduler::with_clock(store, lease_ttl, clock.clone());
    Fixture {
        scheduler,
        clock,
        _dir: dir,
    }
}

/// Plans and submits a job body as the API does; returns its id.
async fn submit(s: &Arc<Scheduler>, body: &str) -> String {
    let (spec, options) = parse_job(body.as_bytes()).unwrap();
    let (reduce_plan, tasks) = NewTask::from_plan(spec.plan_with(&options).unwrap());
    let id = uuid::Uuid::now_v7().to_string();
    let job = NewJob {
        id: id.clone(),
        kernel: spec.kernel().into(),
        options,
        reduce_plan,
        created_ms: s.now_ms(),
        module: None,
        timing: JobTiming::default(),
    };
    s.submit(job, tasks).await.unwrap();
    id
}

/// Runs leased tasks as an agent would.
fn run(leased: &[LeasedTask]) -> Vec<TaskReport> {
    leased
        .iter()
        .map(|t| TaskReport {
            task: t.task.clone(),
            cpu_ms: 1,
            outcome: TaskOutcome::Done(
                TaskInput::decode(&t.input).unwrap().run().unwrap().encode(),
            ),
        })
        .collect()
}

/// Waits (up to ten seconds) until job `id` reaches `state`.
async fn wait_for_state(s: &Scheduler, id: &str, state: JobState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = s.store.job(id).await.unwrap().unwrap().state;
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} stayed {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A 20-second long poll by `agent`, in the background: what it leased,
/// and how long it waited.
fn open_poll(
    s: &Arc<Scheduler>,
    agent: &'static str,
) -> tokio::task::JoinHandle<(Vec<LeasedTask>, Duration)> {
    let s = s.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let got = s
            .lease(query(agent, 0, 10), Duration::from_secs(20))
            .await
            .unwrap();
        (got, started.elapsed())
    })
}

#[tokio::test]
async fn a_waiting_lease_wakes_when_work_is_submitted() {
    let f = fixture(Duration::from_secs(10)).await;
    let waiting = open_poll(&f.scheduler, "a");
    // Let the lease find nothing and start waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    submit(&f.scheduler, r#"{"kernel":"fibonacci","n":[1,2,3]}"#).await;
    let (got, waited) = waiting.await.unwrap();
    assert_eq!(got.len(), 1);
    // Woken by the submit, not by the once-a-second look.
    assert!(waited < REPOLL, "waited {waited:?}");
    // The scheduler stamped the lease with its own clock.
    let agents = f.scheduler.store.list_agents().await.unwrap();
    let a = agents.iter().find(|a| a.id == "a").unwrap();
    assert_eq!(a.last_seen_ms, T0);
}

#[tokio::test]
async fn a_stopping_agents_open_poll_ends_empty_and_leases_nothing() {
    let f = fixture(Duration::from_secs(10)).await;
    let waiting = open_poll(&f.scheduler, "a");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The agent says it is leaving, and work arrives right then: the poll
    // it left open must not take it.
    f.scheduler.agent_stopping("a");
    let id = submit(&f.scheduler, r#"{"kernel":"fibonacci","n":[1,2,3]}"#).await;
    let (got, waited) = waiting.await.unwrap();
    assert!(
        got.is_empty(),
        "the abandoned poll leased {} tasks",
        got.len()
    );
    assert!(waited < REPOLL, "waited {waited:?}");
    let job = f.scheduler.store.job(&id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    // Another agent's poll is not affected, and the same agent polling
    // again (started anew) leases as before.
    let again = f
        .scheduler
        .lease(query("a", 0, 10), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
}

#[tokio::test]
async fn an_empty_lease_answers_when_its_wait_ends() {
    let f = fixture(Duration::from_secs(10)).await;
    let got = f
        .scheduler
        .lease(query("a", 0, 10), Duration::from_millis(30))
        .await
        .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn expired_leases_go_to_another_agent() {
    // A short TTL makes the expiry loop look every 100 ms.
    let f = fixture(Duration::from_millis(400)).await;
    f.scheduler.start().await.unwrap();
    let id = submit(&f.scheduler, r#"{"kernel":"fibonacci","n":[10]}"#).await;
    let mut q = query("a", 0, 10);
    q.ttl_ms = 400;
    let first = f.scheduler.lease(q.clone(), Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    // Nothing to lease for b while a holds the task.
    q.agent_id = "b".into();
    assert!(f
        .scheduler
        .lease(q.clone(), Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    // a goes silent past its deadline: the loop returns the task, and b's
    // waiting lease is woken with it.
    f.clock.advance(1_000);
    let second = f.scheduler.lease(q, Duration::from_secs(10)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].task.job, id);
    assert_eq!(
        f.scheduler.counters.leases_expired.load(Ordering::Relaxed),
        1
    );
    // a's late result is stale; b's finishes the job.
    let late = f.scheduler.complete("a", run(&first)).await.unwrap();
    assert_eq!(late.stale, 1);
    f.scheduler.complete("b", run(&second)).await.unwrap();
    wait_for_state(&f.scheduler, &id, JobState::Succeeded).await;
}

#[tokio::test]
async fn the_last_result_reduces_the_job() {
    let f = fixture(Duration::from_secs(10)).await;
    let id = submit(
        &f.scheduler,
        r#"{"kernel":"fibonacci","n":[10,20,30],"items_per_task":1}"#,
    )
    .await;
    let leased = f
        .scheduler
        .lease(query("a", 0, 10), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    let out = f.scheduler.complete("a", run(&leased)).await.unwrap();
    assert_eq!(out.ready, vec![id.clone()]);
    wait_for_state(&f.scheduler, &id, JobState::Succeeded).await;
    let result = f.scheduler.store.job_result(&id).await.unwrap().unwrap();
    let (json, _) = musketeer_tasks::JobResult::decode(&result)
        .unwrap()
        .render("json")
        .unwrap();
    assert_eq!(json, br#"{"values":["55","6765","832040"]}"#);
    let status = f.scheduler.store.job(&id).await.unwrap().unwrap();
    assert_eq!(
        status.finished_ms,
        Some(T0),
        "stamped by the scheduler's clock"
    );
}

#[tokio::test]
async fn start_reduces_jobs_a_previous_run_left_unreduced() {
    let f = fixture(Duration::from_secs(10)).await;
    let id = submit(&f.scheduler, r#"{"kernel":"factorial","n":10}"#).await;
    let leased = f
        .scheduler
        .lease(query("a", 0, 10), Duration::ZERO)
        .await
        .unwrap();
    // The results reach the store, but no scheduler reduces them (the
    // coordinator stopped right after the commit).
    let store = f.scheduler.store.clone();
    let out = store.complete("a", run(&leased), T0).await.unwrap();
    assert_eq!(out.ready, vec![id.clone()]);
    assert_eq!(
        store.job(&id).await.unwrap().unwrap().state,
        JobState::Running
    );
    // The next start finds and reduces it.
    let restarted = Scheduler::with_clock(store, Duration::from_secs(10), f.clock.clone());
    restarted.start().await.unwrap();
    wait_for_state(&restarted, &id, JobState::Succeeded).await;
}

/// An agent's absurd CPU figure neither overflows nor breaks the listing:
/// the scheduler clamps it before the store sees it.
#[tokio::test]
async fn absurd_cpu_reports_are_clamped() {
    let f = fixture(Duration::from_secs(10)).await;
    submit(
        &f.scheduler,
        r#"{"kernel":"fibonacci","n":[1,2],"items_per_task":1}"#,
    )
    .await;
    let leased = f
        .scheduler
        .lease(query("a", 0, 2), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    let mut reports = run(&leased);
    for r in &mut reports {
        r.cpu_ms = u64::MAX;
    }
    f.scheduler.complete("a", reports).await.unwrap();
    let agents = f.scheduler.store.list_agents().await.unwrap();
    let a = agents.iter().find(|a| a.id == "a").unwrap();
    assert!(a.cpu_ms <= 2 * 7 * 24 * 3600 * 1000, "{}", a.cpu_ms);
}

/// `why` reads the job's backlog and the agents as the store has them
/// now: a missing label, a retry's backoff, and agents gone silent.
#[tokio::test]
async fn why_a_job_waits_follows_the_store_and_the_clock() {
    let f = fixture(Duration::from_secs(10)).await;
    let s = &f.scheduler;
    assert_eq!(s.why("no-such-job").await.unwrap(), None);
    let gpu = submit(
        s,
        r#"{"kernel":"factorial","n":100,"labels":{"gpu":"yes"}}"#,
    )
    .await;
    let why = s.why(&gpu).await.unwrap().unwrap();
    assert_eq!(why.state, JobState::Queued);
    assert!(why.waiting >= 1, "{why:?}");
    let messages: Vec<&str> = why.reasons.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["no active agent carries label gpu=yes"]);

    // A task that failed waits out its backoff, and the why says until when.
    let fib = submit(
        s,
        r#"{"kernel":"fibonacci","n":[1,2],"items_per_task":1,"priority":9}"#,
    )
    .await;
    let leased = s.lease(query("a", 0, 1), Duration::ZERO).await.unwrap();
    assert_eq!(leased[0].task.job, fib);
    let failed = TaskReport {
        task: leased[0].task.clone(),
        cpu_ms: 1,
        outcome: TaskOutcome::Failed("boom".into()),
    };
    s.complete("a", vec![failed]).await.unwrap();
    let why = s.why(&fib).await.unwrap().unwrap();
    let codes: Vec<&str> = why.reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["retry_backoff", "busy"], "{why:?}");
    assert!(
        why.reasons[0].message.contains("until"),
        "{}",
        why.reasons[0].message
    );
    // The label job now also stands behind the priority-9 task.
    let why = s.why(&gpu).await.unwrap().unwrap();
    assert_eq!(why.reasons[0].code, "missing_label", "{why:?}");

    // Agents that stop calling are no longer online.
    f.clock.advance(why::ONLINE_WINDOW_MS + 1);
    let why = s.why(&fib).await.unwrap().unwrap();
    assert_eq!(why.reasons[0].code, "no_agent", "{why:?}");
}
