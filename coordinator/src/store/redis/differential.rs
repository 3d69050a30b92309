//! The Redis store against the embedded one, step by step, on one seeded
//! run of replicated and plain jobs with honest agents, liars, failures,
//! expiries and a removal: the embedded store defines what redundancy
//! means, and the Redis store's scripts must judge every vote alike. A
//! second run does the same for leasing under batch limits (count, work,
//! bytes, memory, the overfill rule), retries and expiries; a third for
//! time: countdowns, job expiry and result TTLs.

use musketeer_tasks::protocol::{Capacity, TaskOutcome, TaskReport};
use musketeer_tasks::{Cost, JobOptions};

use super::*;
use crate::store::conformance::{add_job, job, query, TTL};
use crate::store::SqliteStore;

const T0: u64 = 1_000_000;
const AGENTS: [&str; 8] = [
    "h0",
    "h1",
    "h2",
    "h3",
    "sometimes",
    "liar",
    "liar2",
    "liar3",
];

/// A small deterministic generator (xorshift64), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What `agent` answers for a task: honest agents agree, the liars never
/// do (nor with each other), and "sometimes" lies on every third task.
fn answer(agent: &str, job: &str, index: u32) -> Vec<u8> {
    let truth = format!("{job}{index}");
    let digits = match agent {
        "liar" => "6".to_string(),
        "liar2" => "8".to_string(),
        "liar3" => "9".to_string(),
        "sometimes" if index.is_multiple_of(3) => "7".to_string(),
        _ => truth.chars().filter(char::is_ascii_digit).collect(),
    };
    musketeer_tasks::TaskOutput::Fibonacci(musketeer_tasks::fibonacci::FibonacciOutput {
        ends: vec![digits.len() as u64],
        digits,
    })
    .encode()
}

/// Enrols each of `agents` with one token.
async fn enrol_all(store: &dyn Store, agents: &[&str]) {
    let token_hash = musketeer_tasks::token::secret_hash("tok");
    store
        .create_token("t", token_hash, TokenRole::Join, T0)
        .await
        .unwrap();
    for a in agents {
        store
            .enrol_agent(
                token_hash,
                NewAgent {
                    id: (*a).into(),
                    secret_hash: [1; 32],
                    capacity: Capacity::default(),
                    now_ms: T0,
                },
            )
            .await
            .unwrap()
            .unwrap();
    }
}

async fn setup(store: &dyn Store) {
    enrol_all(store, &AGENTS).await;
    for (j, redundancy) in [2, 3, 1, 2, 5, 2, 3].into_iter().enumerate() {
        let id = format!("{}", j + 1);
        let options = JobOptions {
            redundancy,
            max_attempts: 4,
            ..JobOptions::default()
        };
        job(store, &id, 12, options).await;
    }
}

/// What a store shows of its jobs and agents, to compare.
async fn view(store: &dyn Store) -> (Vec<String>, Vec<String>) {
    let mut jobs: Vec<String> = store
        .list_jobs(100)
        .await
        .unwrap()
        .into_iter()
        .map(|j| format!("{} {:?} {:?} {:?}", j.id, j.state, j.progress, j.error))
        .collect();
    jobs.sort();
    let mut agents: Vec<String> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            format!(
                "{} {:?} done={} cpu={} valid={} invalid={} {:?} leased={}",
                a.id,
                a.state,
                a.tasks_done,
                a.cpu_ms,
                a.results_valid,
                a.results_invalid,
                a.trust,
                a.leased
            )
        })
        .collect();
    agents.sort();
    (jobs, agents)
}

/// A fresh embedded store in a temporary directory (kept alive by the
/// returned guard) and a Redis store under a key prefix of its own.
async fn both_stores() -> (tempfile::TempDir, SqliteStore, RedisStore) {
    let url = std::env::var("MUSKETEER_TEST_REDIS_URL")
        .expect("MUSKETEER_TEST_REDIS_URL is not set: this test needs a Redis server");
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let redis = RedisStore::connect(&url, &prefix).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("db")).unwrap();
    (dir, sqlite, redis)
}

/// Expires both stores' leases at `now`; they must return as many.
async fn expire_both(sqlite: &SqliteStore, redis: &RedisStore, now: u64, step: u32) {
    let a = sqlite.expire_leases(now).await.unwrap();
    let b = redis.expire_leases(now).await.unwrap();
    assert_eq!(a, b, "step {step}: expired");
}

#[tokio::test]
async fn redis_judges_votes_as_the_embedded_store_does() {
    let (_dir, sqlite, redis) = both_stores().await;
    setup(&sqlite).await;
    setup(&redis).await;

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now = T0;
    let mut removed = None;
    for step in 0..600 {
        let agent = AGENTS[rng.below(AGENTS.len() as u64) as usize];
        if removed == Some(agent) {
            continue;
        }
        let max = 1 + rng.below(4) as u32;
        let mut leased = Vec::new();
        for store in [&sqlite as &dyn Store, &redis] {
            let mut got = store.lease(query(agent, now, max)).await.unwrap();
            got.sort_by(|a, b| (&a.task.job, a.task.index).cmp(&(&b.task.job, b.task.index)));
            leased.push(got);
        }
        let keys = |l: &Vec<LeasedTask>| -> Vec<(String, u32)> {
            l.iter()
                .map(|t| (t.task.job.clone(), t.task.index))
                .collect()
        };
        assert_eq!(
            keys(&leased[0]),
            keys(&leased[1]),
            "step {step}: {agent} leased"
        );
        // One draw per task, used for both stores.
        let fates: Vec<u64> = leased[0].iter().map(|_| rng.below(10)).collect();
        let mut outcomes = Vec::new();
        for got in &leased {
            let reports: Vec<TaskReport> = got
                .iter()
                .zip(&fates)
                .filter(|(_, fate)| **fate != 1)
                .map(|(t, fate)| TaskReport {
                    task: t.task.clone(),
                    cpu_ms: 1 + t.task.index as u64,
                    outcome: if *fate == 0 {
                        TaskOutcome::Failed("flaky".into())
                    } else {
                        TaskOutcome::Done(answer(agent, &t.task.job, t.task.index))
                    },
                })
                .collect();
            outcomes.push(reports);
        }
        // One report per call: the Redis store reads the voter's trust once
        // per batch, the embedded one before each vote, so a batch in
        // which an agent earns or loses trust may differ (by design).
        for (step_part, (a, b)) in outcomes[0].iter().zip(&outcomes[1]).enumerate() {
            let mut x = sqlite.complete(agent, vec![a.clone()], now).await.unwrap();
            let mut y = redis.complete(agent, vec![b.clone()], now).await.unwrap();
            x.ready.sort();
            y.ready.sort();
            assert_eq!(x, y, "step {step}.{step_part}: {agent}'s result");
        }
        now += 700;
        if step % 25 == 24 {
            // Unreported leases run out.
            now += TTL;
            expire_both(&sqlite, &redis, now, step).await;
        }
        // Late enough that a job may have failed already: a removed
        // voter's replicas of a failed job must stay out of the queue.
        if step >= 60 && removed.is_none() {
            removed = Some("sometimes");
            let a = sqlite.remove_agent("sometimes", now).await.unwrap();
            let b = redis.remove_agent("sometimes", now).await.unwrap();
            assert_eq!(a, b);
        }
        assert_eq!(view(&sqlite).await, view(&redis).await, "step {step}");
    }
    let (jobs, agents) = view(&redis).await;
    // The run must have reached the interesting cases.
    assert!(removed.is_some(), "no removal");
    assert!(jobs.iter().any(|j| j.contains("majority")), "{jobs:#?}");
    // No "Trusted" here: with three liars voting, disputes reset every
    // honest streak long before 20 (the rule that stops a liar earning
    // trust while its lies wait). The conformance rule
    // `trusted_agents_earn_unreplicated_work` covers trust on both stores.
    assert!(agents.iter().any(|a| a.contains("Suspect")), "{agents:#?}");
    for j in jobs.iter().filter(|j| j.contains("Running")) {
        let id = j.split(' ').next().unwrap();
        let a = sqlite.job_outputs(id).await;
        let b = redis.job_outputs(id).await;
        assert_eq!(a.is_ok(), b.is_ok(), "{id}");
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_eq!(a, b, "{id}: outputs");
        }
    }
}

/// Jobs of mixed priorities, queues and labels whose tasks differ in work,
/// memory and input size: what batch limits and the overfill rule decide.
async fn setup_batches(store: &dyn Store, rng: &mut Rng) {
    enrol_all(store, &["small", "big", "gpu"]).await;
    for j in 0..6u64 {
        let mut options = JobOptions {
            priority: (j % 3) as u8 * 4,
            max_attempts: 3,
            redundancy: if j == 4 { 2 } else { 1 },
            ..JobOptions::default()
        };
        if j == 2 {
            options.labels.insert("gpu".into(), "yes".into());
        }
        let id = format!("b{j}");
        let tasks = (0..10)
            .map(|i| NewTask {
                input: vec![i as u8; 1 + rng.below(3000) as usize],
                cost: Cost {
                    work: 1 + rng.below(300),
                    mem_bytes: 1 + rng.below(1000),
                },
            })
            .collect();
        add_job(store, &id, options, tasks).await;
    }
}

/// The two stores grant the same batches under limits of count, work,
/// bytes and memory, with the 1.5x overfill rule, retries after backoff
/// and expiries: the rules of `rules.rs` in Rust and in the Lua prelude.
#[tokio::test]
async fn redis_leases_batches_as_the_embedded_store_does() {
    let (_dir, sqlite, redis) = both_stores().await;
    setup_batches(&sqlite, &mut Rng(7)).await;
    setup_batches(&redis, &mut Rng(7)).await;

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut now = T0;
    let (mut multi, mut by_work, mut by_bytes, mut overfilled) = (0, 0, 0, 0);
    for step in 0..300 {
        let agent = ["small", "big", "gpu"][rng.below(3) as usize];
        let mut q = query(agent, now, 1 + rng.below(8) as u32);
        q.max_work = 50 + rng.below(600);
        q.max_bytes = 500 + rng.below(12_000);
        q.mem_bytes = if agent == "small" { 400 } else { 1 << 30 };
        if agent == "gpu" {
            q.labels.insert("gpu".into(), "yes".into());
        }
        let mut leased = Vec::new();
        for store in [&sqlite as &dyn Store, &redis] {
            let mut got = store.lease(q.clone()).await.unwrap();
            got.sort_by(|a, b| (&a.task.job, a.task.index).cmp(&(&b.task.job, b.task.index)));
            leased.push(got);
        }
        let summary = |l: &Vec<LeasedTask>| -> Vec<(String, u32, u64, u64, usize)> {
            l.iter()
                .map(|t| {
                    let c = t.cost;
                    (
                        t.task.job.clone(),
                        t.task.index,
                        c.work,
                        c.mem_bytes,
                        t.input.len(),
                    )
                })
                .collect()
        };
        assert_eq!(
            summary(&leased[0]),
            summary(&leased[1]),
            "step {step}: {agent} leased under {} tasks, {} work, {} bytes",
            q.max_tasks,
            q.max_work,
            q.max_bytes
        );
        let got = &leased[0];
        let work: u64 = got.iter().map(|t| t.cost.work).sum();
        let bytes: usize = got.iter().map(|t| t.input.len()).sum();
        if got.len() > 1 {
            multi += 1;
            by_work += u32::from(work >= q.max_work);
            by_bytes += u32::from(bytes as u64 >= q.max_bytes);
            overfilled += u32::from(work > q.max_work);
            assert!(work <= q.max_work * 3 / 2, "step {step}: {work} work");
        }
        // One draw per task: fail some (retried after a backoff), keep
        // some unreported (expired later), finish the rest.
        let fates: Vec<u64> = got.iter().map(|_| rng.below(6)).collect();
        let mut outcomes = Vec::new();
        for (store, got) in [&sqlite as &dyn Store, &redis].into_iter().zip(&leased) {
            let reports: Vec<TaskReport> = got
                .iter()
                .zip(&fates)
                .filter(|(_, fate)| **fate != 1)
                .map(|(t, fate)| TaskReport {
                    task: t.task.clone(),
                    cpu_ms: 1,
                    outcome: if *fate == 0 {
                        TaskOutcome::Failed("flaky".into())
                    } else {
                        TaskOutcome::Done(answer("h0", &t.task.job, t.task.index))
                    },
                })
                .collect();
            let mut out = store.complete(agent, reports, now).await.unwrap();
            out.ready.sort();
            outcomes.push(out);
        }
        assert_eq!(outcomes[0], outcomes[1], "step {step}: {agent}'s results");
        now += 400;
        if step % 20 == 19 {
            // Unreported leases run out.
            now += TTL;
            expire_both(&sqlite, &redis, now, step).await;
        }
        assert_eq!(view(&sqlite).await, view(&redis).await, "step {step}");
    }
    // The run must have reached every limit.
    assert!(multi > 20, "{multi} batches of several tasks");
    assert!(
        by_work > 0 && by_bytes > 0,
        "{by_work} by work, {by_bytes} by bytes"
    );
    assert!(overfilled > 0, "no batch used the overfill allowance");
}

/// Jobs with countdowns, expiries and result TTLs, some of each and some
/// without: what leases, the expiry sweep and the result purge decide.
async fn setup_timed(store: &dyn Store, rng: &mut Rng) {
    enrol_all(store, &["a", "b"]).await;
    for j in 0..10u64 {
        let timing = JobTiming {
            not_before_ms: if j % 3 == 0 {
                T0 + rng.below(20_000)
            } else {
                0
            },
            expires_ms: (j % 2 == 0).then(|| T0 + 5_000 + rng.below(30_000)),
            result_ttl_ms: (j % 4 != 3).then(|| 1 + rng.below(20_000)),
        };
        let tasks = (0..6)
            .map(|i| NewTask {
                input: vec![i as u8; 4],
                cost: Cost {
                    work: 1,
                    mem_bytes: 1,
                },
            })
            .collect();
        crate::store::conformance::add_timed_job(
            store,
            &format!("t{j}"),
            JobOptions::default(),
            timing,
            tasks,
        )
        .await;
    }
}

/// What a store shows of its jobs' times and results.
async fn timed_view(store: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    for j in store.list_jobs(100).await.unwrap() {
        let result = store.job_result(&j.id).await.unwrap().is_some();
        out.push(format!(
            "{} {:?} {:?} {:?} nb={:?} ex={:?} rex={:?} result={result}",
            j.id, j.state, j.progress, j.error, j.not_before_ms, j.expires_ms, j.result_expires_ms
        ));
    }
    out.sort();
    out
}

/// The two stores hold back, expire and purge alike: countdowns (the
/// not-before time of tasks, as backoff), `expires` (no task never leased
/// goes out past it; the sweep ends the job) and result TTLs.
#[tokio::test]
async fn redis_keeps_time_as_the_embedded_store_does() {
    let (_dir, sqlite, redis) = both_stores().await;
    setup_timed(&sqlite, &mut Rng(11)).await;
    setup_timed(&redis, &mut Rng(11)).await;
    let stores = [&sqlite as &dyn Store, &redis];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut now = T0;
    let (mut expired, mut purged, mut held_back) = (0, 0, 0);
    for step in 0..200 {
        let agent = ["a", "b"][rng.below(2) as usize];
        let q = query(agent, now, 1 + rng.below(4) as u32);
        let mut leased = Vec::new();
        for store in stores {
            let mut got = store.lease(q.clone()).await.unwrap();
            got.sort_by(|a, b| (&a.task.job, a.task.index).cmp(&(&b.task.job, b.task.index)));
            leased.push(got);
        }
        let keys = |l: &Vec<LeasedTask>| -> Vec<(String, u32)> {
            l.iter()
                .map(|t| (t.task.job.clone(), t.task.index))
                .collect()
        };
        assert_eq!(keys(&leased[0]), keys(&leased[1]), "step {step}: leased");
        let fates: Vec<u64> = leased[0].iter().map(|_| rng.below(5)).collect();
        for (store, got) in stores.into_iter().zip(&leased) {
            let reports: Vec<TaskReport> = got
                .iter()
                .zip(&fates)
                .filter(|(_, fate)| **fate != 1)
                .map(|(t, fate)| TaskReport {
                    task: t.task.clone(),
                    cpu_ms: 1,
                    outcome: if *fate == 0 {
                        TaskOutcome::Failed("flaky".into())
                    } else {
                        TaskOutcome::Done(answer("a", &t.task.job, t.task.index))
                    },
                })
                .collect();
            let out = store.complete(agent, reports, now).await.unwrap();
            for id in out.ready {
                store.finish_job(&id, Ok(vec![1, 2, 3]), now).await.unwrap();
            }
        }
        now += 300;
        if step % 10 == 9 {
            now += TTL;
            expire_both(&sqlite, &redis, now, step).await;
        }
        let mut a = sqlite.expire_jobs(now).await.unwrap();
        let mut b = redis.expire_jobs(now).await.unwrap();
        a.sort();
        b.sort();
        assert_eq!(a, b, "step {step}: expired jobs");
        expired += a.len();
        let a = sqlite.purge_expired_results(now).await.unwrap();
        let b = redis.purge_expired_results(now).await.unwrap();
        assert_eq!(a, b, "step {step}: purged results");
        purged += a;
        let view = timed_view(&sqlite).await;
        held_back += view
            .iter()
            .filter(|j| j.contains("Queued") && j.contains("nb=Some"))
            .count();
        assert_eq!(view, timed_view(&redis).await, "step {step}");
    }
    assert!(expired > 0, "no job expired");
    assert!(purged > 0, "no result was purged");
    assert!(held_back > 0, "no countdown held a job back");
}

/// What both stores show of workflows and their jobs.
async fn workflow_view(store: &dyn Store, workflows: u64) -> Vec<String> {
    let mut out = Vec::new();
    for w in 0..workflows {
        out.push(format!(
            "{:?}",
            store.workflow(&format!("w{w}")).await.unwrap()
        ));
    }
    out.push(format!("open {:?}", store.open_workflows().await.unwrap()));
    let mut jobs: Vec<String> = store
        .list_jobs(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|j| {
            format!(
                "{} {:?} {:?} {:?} {:?} {:?}",
                j.id, j.state, j.progress, j.error, j.workflow, j.schedule
            )
        })
        .collect();
    jobs.sort();
    out.extend(jobs);
    out
}

/// The two stores keep workflows (created whole, each waiting job released
/// once, failed or cancelled instead, finished once) and schedules (a tick
/// claimed once, only while active and due at that very tick) alike.
#[tokio::test]
async fn redis_keeps_workflows_and_schedules_as_the_embedded_store_does() {
    let (_dir, sqlite, redis) = both_stores().await;
    let stores = [&sqlite as &dyn Store, &redis];
    const WORKFLOWS: u64 = 4;
    for store in stores {
        enrol_all(store, &["a"]).await;
        for w in 0..WORKFLOWS {
            let steps: Vec<WorkflowStep> = (0..6)
                .map(|s| WorkflowStep {
                    name: format!("s{s}"),
                    job: format!("w{w}s{s}"),
                    needs: (s > 0).then(|| format!("s{}", s - 1)).into_iter().collect(),
                    body: serde_json::json!({"kernel": "fibonacci", "n": [s]}),
                })
                .collect();
            let jobs = steps
                .iter()
                .map(|s| NewJob {
                    module: None,
                    id: s.job.clone(),
                    kernel: "fibonacci".into(),
                    options: JobOptions::default(),
                    reduce_plan: Vec::new(),
                    created_ms: T0,
                    timing: JobTiming::default(),
                })
                .collect();
            store
                .create_workflow(NewWorkflow {
                    id: format!("w{w}"),
                    created_ms: T0,
                    steps,
                    jobs,
                })
                .await
                .unwrap();
        }
        store
            .create_schedule(NewSchedule {
                id: "s".into(),
                cron: "* * * * * *".into(),
                timezone: "UTC".into(),
                job: serde_json::json!({"kernel": "factorial", "n": 5}),
                created_ms: T0,
                next_run_ms: T0 + 1000,
            })
            .await
            .unwrap();
    }
    let mut rng = Rng(0x0dd_ba11);
    let mut now = T0;
    let (mut released, mut claimed) = (0, 0);
    for step in 0..300 {
        let job = format!("w{}s{}", rng.below(WORKFLOWS), rng.below(6));
        let op = rng.below(7);
        let tasks = 1 + rng.below(3) as usize;
        let state = [
            WorkflowState::Succeeded,
            WorkflowState::Failed,
            WorkflowState::Cancelled,
        ][rng.below(3) as usize];
        let next_run = store_next_run(&sqlite).await;
        let stale = rng.below(3) == 0;
        let mut answers = Vec::new();
        for store in stores {
            let answer = match op {
                0 | 1 => {
                    let t = (0..tasks)
                        .map(|i| NewTask {
                            input: vec![i as u8; 4],
                            cost: Cost {
                                work: 1,
                                mem_bytes: 1,
                            },
                        })
                        .collect();
                    format!(
                        "{:?}",
                        store.start_waiting_job(&job, vec![7], t).await.unwrap()
                    )
                }
                2 => format!(
                    "{:?}",
                    store.cancel_job(&job, now).await.unwrap().map(|j| j.state)
                ),
                3 => {
                    store
                        .finish_job(&job, Err("a need failed".into()), now)
                        .await
                        .unwrap();
                    String::new()
                }
                4 => {
                    let got = store.lease(query("a", now, 8)).await.unwrap();
                    let reports = got
                        .iter()
                        .map(|t| TaskReport {
                            task: t.task.clone(),
                            cpu_ms: 1,
                            outcome: TaskOutcome::Done(answer("a", &t.task.job, t.task.index)),
                        })
                        .collect();
                    let mut out = store.complete("a", reports, now).await.unwrap();
                    out.ready.sort();
                    for id in &out.ready {
                        store.finish_job(id, Ok(vec![1]), now).await.unwrap();
                    }
                    format!("{} {:?}", got.len(), out)
                }
                5 => {
                    let w = job.split('s').next().unwrap().to_string();
                    format!("{:?}", store.finish_workflow(&w, state, now).await.unwrap())
                }
                _ => {
                    let tick = if stale { next_run - 1000 } else { next_run };
                    let fired = NewJob {
                        module: None,
                        id: format!("f{step}"),
                        kernel: "factorial".into(),
                        options: JobOptions::default(),
                        reduce_plan: Vec::new(),
                        created_ms: now,
                        timing: JobTiming::default(),
                    };
                    let t = ScheduleTick {
                        schedule: "s".into(),
                        tick_ms: tick,
                        next_run_ms: tick + 1000,
                        now_ms: now,
                    };
                    format!("{:?}", store.claim_tick(t, fired).await.unwrap())
                }
            };
            answers.push(answer);
        }
        assert_eq!(answers[0], answers[1], "step {step}: op {op} on {job}");
        released += usize::from(op <= 1 && answers[0] == "true");
        claimed += usize::from(op == 6 && answers[0] == "true");
        now += 250;
        assert_eq!(
            workflow_view(&sqlite, WORKFLOWS).await,
            workflow_view(&redis, WORKFLOWS).await,
            "step {step}"
        );
        assert_eq!(
            sqlite.list_schedules().await.unwrap(),
            redis.list_schedules().await.unwrap(),
            "step {step}"
        );
    }
    assert!(released > 3, "{released} releases");
    assert!(claimed > 3, "{claimed} claims");
}

/// The schedule's next tick, as the embedded store has it.
async fn store_next_run(store: &SqliteStore) -> u64 {
    store.list_schedules().await.unwrap()[0].next_run_ms
}
