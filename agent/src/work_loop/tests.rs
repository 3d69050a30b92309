//! The work loop against a fake coordinator in memory.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::*;
use crate::executor::tests::fib_task;
use crate::executor::DutyCycle;
use musketeer_tasks::wasm::ModuleId;

/// A coordinator in memory: hands out its tasks, records every call.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

#[derive(Default)]
struct FakeState {
    tasks: VecDeque<LeasedTask>,
    leased: Vec<TaskRef>,
    leases: Vec<LeaseRequest>,
    uploads: Vec<Vec<TaskReport>>,
    heartbeats: Vec<Heartbeat>,
    released: Vec<TaskRef>,
    /// Fail this many lease calls as unreachable.
    lease_down: u32,
    /// Fail this many uploads as unreachable.
    upload_down: u32,
    unauthorized: bool,
    ttl_ms: u64,
    drain: bool,
    /// The modules it serves.
    modules: Vec<Vec<u8>>,
    /// Module downloads asked for.
    module_fetches: u32,
}

impl Fake {
    fn with_tasks(n: u32, indices_per_task: u64) -> Fake {
        let fake = Fake::default();
        {
            let mut s = fake.0.lock().unwrap();
            s.ttl_ms = 30_000;
            for i in 0..n {
                let ns = (0..indices_per_task)
                    .map(|k| (u64::from(i) + k) % 150)
                    .collect();
                s.tasks.push_back(fib_task(i, ns));
            }
        }
        fake
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    fn reported(&self) -> Vec<TaskRef> {
        self.state()
            .uploads
            .iter()
            .flatten()
            .map(|r| r.task.clone())
            .collect()
    }

    /// Resolves once `cond` holds for the fake's state.
    async fn until(&self, cond: impl Fn(&FakeState) -> bool) {
        while !cond(&self.state()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn unavailable() -> ClientError {
    ClientError::Unavailable("connection refused".into())
}

impl AgentApi for Fake {
    async fn lease(&self, req: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        let resp = {
            let mut s = self.state();
            s.leases.push(req.clone());
            if s.unauthorized {
                return Err(ClientError::Unauthorized("unknown agent".into()));
            }
            if s.lease_down > 0 {
                s.lease_down -= 1;
                return Err(unavailable());
            }
            let mut tasks = Vec::new();
            let mut work = 0u64;
            while let Some(t) = s.tasks.front() {
                let fits = tasks.is_empty() || work + t.cost.work <= req.max_work;
                if tasks.len() as u32 >= req.max_tasks || !fits {
                    break;
                }
                work += t.cost.work;
                let t = s.tasks.pop_front().unwrap();
                s.leased.push(t.task.clone());
                tasks.push(t);
            }
            LeaseResponse {
                tasks,
                lease_ttl_ms: s.ttl_ms,
            }
        };
        if resp.tasks.is_empty() && req.wait_ms > 0 {
            // Hold a little, as a long poll would, without slowing the tests.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(resp)
    }

    async fn results(&self, batch: &ResultBatch) -> Result<ResultAck, ClientError> {
        let mut s = self.state();
        if s.unauthorized {
            return Err(ClientError::Unauthorized("unknown agent".into()));
        }
        if s.upload_down > 0 {
            s.upload_down -= 1;
            return Err(unavailable());
        }
        s.uploads.push(batch.results.clone());
        Ok(ResultAck {
            accepted: batch.results.len() as u32,
            stale: 0,
        })
    }

    async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        let mut s = self.state();
        s.heartbeats.push(hb.clone());
        Ok(HeartbeatAck {
            lost: Vec::new(),
            drain: s.drain,
        })
    }

    async fn release(&self, r: &Release) -> Result<ReleaseAck, ClientError> {
        let mut s = self.state();
        s.released.extend(r.tasks.iter().cloned());
        Ok(ReleaseAck {
            released: r.tasks.len() as u32,
        })
    }

    async fn module(&self, id: &ModuleId) -> Result<Vec<u8>, ClientError> {
        let mut s = self.state();
        s.module_fetches += 1;
        s.modules
            .iter()
            .find(|m| ModuleId::of(m) == *id)
            .cloned()
            .ok_or_else(|| ClientError::Rejected {
                status: 404,
                code: "not_found".into(),
                message: format!("no module {id}"),
            })
    }
}

fn capacity(cpus: u32) -> Capacity {
    Capacity {
        cpus,
        memory_bytes: 1 << 30,
        queues: vec!["default".into()],
        ..Capacity::default()
    }
}

fn quick() -> Tuning {
    Tuning {
        max_tasks: 16,
        long_poll: Duration::from_millis(100),
        flush_after: Duration::from_millis(50),
        grace: Duration::from_millis(500),
        ..Tuning::default()
    }
}

/// Runs the loop until `stop_when` holds, with a deadline so a bug fails the test instead of hanging it.
async fn run_until(
    fake: &Fake,
    cpus: u32,
    max_cpu_percent: Option<u8>,
    tuning: Tuning,
    stop_when: impl Fn(&FakeState) -> bool,
) -> Result<WorkStats, ClientError> {
    let shutdown = fake.until(stop_when);
    tokio::time::timeout(
        Duration::from_secs(20),
        work(
            fake.clone(),
            capacity(cpus),
            Isolation::Threads(DutyCycle::new(max_cpu_percent)),
            tuning,
            shutdown,
        ),
    )
    .await
    .expect("the work loop finishes")
}

fn distinct(refs: &[TaskRef]) -> BTreeSet<TaskRef> {
    refs.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_runs_once_and_results_go_up_in_batches() {
    let fake = Fake::with_tasks(200, 40);
    let stats = run_until(&fake, 2, None, quick(), |s| {
        s.uploads.iter().map(Vec::len).sum::<usize>() == 200
    })
    .await
    .unwrap();
    assert_eq!(stats.done, 200);
    assert_eq!(stats.accepted, 200);
    let reported = fake.reported();
    assert_eq!(reported.len(), 200);
    assert_eq!(distinct(&reported).len(), 200, "a task was reported twice");
    let s = fake.state();
    assert!(s
        .uploads
        .iter()
        .flatten()
        .all(|r| matches!(r.outcome, TaskOutcome::Done(_))));
    // Many tasks per upload, never one request per task.
    assert!(
        s.uploads.len() < 60,
        "{} uploads for 200 tasks",
        s.uploads.len()
    );
    // Batches of up to 16, so at least 13 leases; prefetches ask for work at once.
    assert!(s.leases.len() >= 13);
    assert_eq!(s.leases[0].max_tasks, 2, "slow start: one task per core");
    assert!(s
        .leases
        .iter()
        .all(|l| l.max_tasks <= 16 && l.max_work >= 1));
    assert!(s.leases.iter().any(|l| l.max_tasks == 16));
    assert!(
        s.leases.iter().any(|l| l.wait_ms == 0),
        "no lease was a prefetch"
    );
    assert!(s.released.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_work_but_loses_nothing() {
    let fake = Fake::with_tasks(40, 10);
    {
        let mut s = fake.state();
        s.lease_down = 3;
        s.upload_down = 2;
    }
    let stats = run_until(&fake, 2, None, quick(), |s| {
        s.uploads.iter().map(Vec::len).sum::<usize>() == 40
    })
    .await
    .unwrap();
    assert_eq!(stats.done, 40);
    assert_eq!(distinct(&fake.reported()).len(), 40);
}

#[tokio::test]
async fn a_refused_credential_ends_the_loop() {
    let fake = Fake::with_tasks(5, 1);
    fake.state().unauthorized = true;
    let err = run_until(&fake, 1, None, quick(), |_| false)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_what_has_not_run() {
    let fake = Fake::with_tasks(100, 150);
    let tuning = Tuning {
        max_tasks: 100,
        ..quick()
    };
    // At 1% each task is followed by 99 times its length of rest, so most
    // of the batch is still queued when the first results come up.
    let stats = run_until(&fake, 1, Some(1), tuning, |s| !s.uploads.is_empty())
        .await
        .unwrap();
    let s = fake.state();
    let leased = distinct(&s.leased);
    let released = distinct(&s.released);
    let reported: BTreeSet<TaskRef> = s.uploads.iter().flatten().map(|r| r.task.clone()).collect();
    assert!(!released.is_empty(), "nothing was released");
    assert!(
        released.is_disjoint(&reported),
        "a task was both released and reported"
    );
    let accounted: BTreeSet<TaskRef> = released.union(&reported).cloned().collect();
    assert_eq!(
        accounted, leased,
        "every leased task is reported or released"
    );
    assert_eq!(stats.released as usize, released.len());
}

#[tokio::test]
async fn shutdown_when_idle_is_immediate() {
    let fake = Fake::with_tasks(0, 0);
    let started = Instant::now();
    let stats = run_until(&fake, 1, None, Tuning::default(), |s| !s.leases.is_empty())
        .await
        .unwrap();
    assert_eq!(stats, WorkStats::default());
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A loop state with no worker threads, to drive its handlers by hand.
fn bare_state(fake: &Fake) -> State<Fake> {
    let (tx, _rx) = mpsc::unbounded_channel();
    State::new(
        fake.clone(),
        capacity(2),
        quick(),
        Executor::start(0, DutyCycle::new(None), tx),
    )
}

#[tokio::test]
async fn lost_leases_are_neither_run_nor_reported() {
    let fake = Fake::default();
    let mut state = bare_state(&fake);
    let now = Instant::now();
    state.queue.extend((0..3).map(|i| fib_task(i, vec![1])));
    let finished = fib_task(7, vec![1]).task;
    state.push_report(
        now,
        TaskReport {
            task: finished.clone(),
            cpu_ms: 1,
            outcome: TaskOutcome::Done(vec![1]),
        },
    );
    let lost = vec![fib_task(1, vec![1]).task, finished];
    state.on_heartbeat_ack(HeartbeatAck { lost, drain: false });
    let left: Vec<u32> = state.queue.iter().map(|t| t.task.index).collect();
    assert_eq!(left, [0, 2]);
    assert!(state.pending.is_empty());
    assert_eq!(state.pending_bytes, 0);
}

#[tokio::test]
async fn a_draining_agent_leases_nothing_but_keeps_reporting_in() {
    let fake = Fake::default();
    let mut state = bare_state(&fake);
    let mut calls = JoinSet::new();
    state.on_heartbeat_ack(HeartbeatAck {
        lost: vec![],
        drain: true,
    });
    let now = Instant::now();
    state.maybe_lease(now, &mut calls);
    assert!(!state.leasing);
    state.heartbeat_due = now;
    state.maybe_heartbeat(now, &mut calls);
    assert!(state.heartbeating, "a draining agent still heartbeats");
    state.on_heartbeat_ack(HeartbeatAck {
        lost: vec![],
        drain: false,
    });
    assert!(!state.draining);
}

#[tokio::test]
async fn overdue_tasks_fail_and_their_late_output_is_dropped() {
    let fake = Fake::default();
    let mut state = bare_state(&fake);
    let now = Instant::now();
    let task = fib_task(0, vec![1]).task;
    state.running.insert(
        task.clone(),
        Running {
            kernel: Some("fibonacci"),
            cost: Cost {
                work: 10,
                mem_bytes: 100,
            },
            timeout: Some(Duration::from_secs(2)),
            deadline: Some(now),
        },
    );
    state.busy = 1;
    state.mem_busy = 100;
    state.expire_overdue(now);
    assert!(state.running.is_empty());
    assert_eq!(state.pending.len(), 1);
    assert!(
        matches!(&state.pending[0].outcome, TaskOutcome::Failed(m) if m.contains("ran past its timeout of 2 s"))
    );
    state.on_finished(
        now,
        Finished {
            task,
            kernel: Some("fibonacci"),
            wall: Duration::from_secs(3),
            cpu: Duration::from_secs(3),
            pause: Duration::ZERO,
            outcome: TaskOutcome::Done(vec![]),
        },
    );
    assert_eq!(state.pending.len(), 1, "the late output is dropped");
    assert_eq!((state.busy, state.mem_busy), (0, 0));
}

#[tokio::test]
async fn a_resting_worker_gets_no_task_until_its_rest_is_over() {
    let fake = Fake::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut state = State::new(
        fake.clone(),
        capacity(1),
        quick(),
        Executor::start(1, DutyCycle::new(Some(50)), tx),
    );
    let now = Instant::now();
    let task = fib_task(0, vec![1]);
    state.queue.push_back(task.clone());
    state.dispatch(now);
    assert_eq!((state.busy, state.running.len()), (1, 1));
    state.queue.push_back(fib_task(1, vec![1]));
    state.on_finished(
        now,
        Finished {
            task: task.task,
            kernel: Some("fibonacci"),
            wall: Duration::from_millis(100),
            cpu: Duration::from_millis(100),
            pause: Duration::from_millis(100),
            outcome: TaskOutcome::Done(vec![]),
        },
    );
    assert_eq!(
        state.pending.len(),
        1,
        "the result is not held back by the rest"
    );
    state.wake_rested(now);
    state.dispatch(now);
    assert_eq!((state.busy, state.queue.len()), (1, 1), "still resting");
    assert!(state.next_wake(now) <= now + Duration::from_millis(100));
    let later = now + Duration::from_millis(100);
    state.wake_rested(later);
    state.dispatch(later);
    assert_eq!((state.busy, state.queue.len()), (1, 0));
}

#[tokio::test]
async fn uploads_wait_for_a_batch_unless_idle() {
    let fake = Fake::default();
    let mut state = bare_state(&fake);
    let mut calls = JoinSet::new();
    let now = Instant::now();
    state.queue.push_back(fib_task(9, vec![1]));
    for i in 0..3 {
        state.push_report(
            now,
            TaskReport {
                task: fib_task(i, vec![1]).task,
                cpu_ms: 1,
                outcome: TaskOutcome::Done(vec![0; 10]),
            },
        );
    }
    state.maybe_upload(now, &mut calls);
    assert!(!state.uploading, "uploaded before the flush interval");
    state.maybe_upload(now + state.tuning.flush_after, &mut calls);
    assert!(state.uploading);
    assert!(state.pending.is_empty());
    let Some(Ok(Event::Uploaded(batch, Ok(ack)))) = calls.join_next().await else {
        panic!("an upload")
    };
    assert_eq!((batch.results.len(), ack.accepted), (3, 3));
}

#[test]
fn batches_hold_the_target_time_of_work_for_every_core() {
    let batch = Duration::from_millis(1500);
    assert_eq!(batch_work(batch, 4, 1.0), 6_000_000_000);
    assert_eq!(batch_work(batch, 4, 2.0), 3_000_000_000);
    assert_eq!(batch_work(batch, 1, 0.5), 3_000_000_000);
    assert_eq!(batch_work(batch, 0, 1.0), 1_500_000_000);
    assert_eq!(batch_work(batch, 1, 1e30), 1);
    assert!(batch_work(batch, 1, 0.0) >= 1);
}

#[test]
fn speed_follows_what_tasks_take() {
    let mut speed = Speed::default();
    assert_eq!(speed.ns_per_work(None), 1.0);
    // A kernel's first task sets its speed outright; later ones move it gradually.
    speed.observe(Some("matmul"), 1_000, Duration::from_micros(4));
    assert_eq!(speed.ns_per_work(Some("matmul")), 4.0);
    assert!((speed.ns_per_work(None) - 1.6).abs() < 1e-9);
    speed.observe(Some("matmul"), 1_000, Duration::from_micros(2));
    assert!((speed.ns_per_work(Some("matmul")) - 3.6).abs() < 1e-9);
    assert_eq!(
        speed.ns_per_work(Some("wordcount")),
        speed.ns_per_work(None)
    );
    // Tasks of no work teach nothing; absurd ratios are clamped.
    let before = speed.clone();
    speed.observe(Some("matmul"), 0, Duration::from_secs(1));
    assert_eq!(speed, before);
    speed.observe(Some("factorial"), 1, Duration::from_secs(100));
    assert_eq!(speed.ns_per_work(Some("factorial")), SPEED_CLAMP);
    assert_eq!(
        speed.estimate_ns(
            Some("matmul"),
            Cost {
                work: 10,
                mem_bytes: 0
            }
        ),
        36.0
    );
}

#[tokio::test]
async fn results_waiting_for_upload_keep_their_leases_alive() {
    let fake = Fake::default();
    let mut state = bare_state(&fake);
    let queued = fib_task(0, vec![1]);
    let done = fib_task(1, vec![1]);
    state.queue.push_back(queued.clone());
    state.push_report(
        Instant::now(),
        TaskReport {
            task: done.task.clone(),
            cpu_ms: 1,
            outcome: TaskOutcome::Done(vec![]),
        },
    );
    let held = state.held();
    assert!(held.contains(&queued.task));
    assert!(
        held.contains(&done.task),
        "a result not yet uploaded must still be renewed"
    );
}

#[tokio::test]
async fn a_hold_leases_and_starts_nothing_and_gives_frozen_tasks_back_in_time() {
    let fake = Fake::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    // Two threads, one busy: a free one that a held agent must leave idle.
    let mut state = State::new(
        fake.clone(),
        capacity(2),
        quick(),
        Executor::start(2, DutyCycle::new(None), tx),
    );
    state.hold_leases = Duration::from_secs(60);
    let mut calls = JoinSet::new();
    let now = Instant::now();
    state.queue.push_back(fib_task(1, vec![5]));
    let running = fib_task(0, vec![5]).task;
    state.running.insert(
        running.clone(),
        Running {
            kernel: Some("fibonacci"),
            cost: Cost {
                work: 10,
                mem_bytes: 0,
            },
            timeout: None,
            deadline: None,
        },
    );
    state.busy = 1;
    state.on_hold(now, Some(Hold::Paused), &mut calls);
    assert!(
        state.queue.is_empty(),
        "queued tasks are given back at once"
    );
    assert_eq!(state.releasing, 1);
    state.maybe_lease(now, &mut calls);
    assert!(!state.leasing, "a held agent leases nothing");
    state.queue.push_back(fib_task(2, vec![5]));
    state.dispatch(now);
    assert_eq!(state.queue.len(), 1, "a held agent starts nothing");
    state.heartbeat_due = now;
    state.maybe_heartbeat(now, &mut calls);
    assert!(state.heartbeating, "heartbeats go on, keeping the leases");
    state.give_back_frozen(now + Duration::from_secs(59), &mut calls);
    assert!(state.running.contains_key(&running), "kept within the time");
    assert_eq!(
        state.next_wake(now + Duration::from_secs(59)),
        now + Duration::from_secs(60)
    );
    state.give_back_frozen(now + Duration::from_secs(60), &mut calls);
    assert!(state.running.is_empty(), "given back after the time");
    assert!(state.abandoned.contains_key(&running));
    assert_eq!(state.releasing, 2);
    state.on_hold(now, None, &mut calls);
    assert!(state.held.is_none() && state.held_since.is_none());
    state.dispatch(now);
    assert!(
        state.queue.is_empty(),
        "starting again once the hold is lifted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_modules_are_fetched_once_and_a_missing_one_fails_its_task() {
    use crate::worker::tests::wasm_input;
    let primes = crate::bench::PRIMES_WASM;
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    {
        let mut s = fake.state();
        s.ttl_ms = 30_000;
        s.modules.push(primes.to_vec());
        for i in 0..6u32 {
            let mut t = fib_task(i, vec![1]);
            t.input = wasm_input(primes, &["0", "1"], 1 << 30);
            s.tasks.push_back(t);
        }
        let mut missing = fib_task(6, vec![1]);
        missing.input = wasm_input(b"\0asm not served", &["0"], 1 << 30);
        s.tasks.push_back(missing);
    }
    let tuning = Tuning {
        module_dir: Some(dir.path().join("modules")),
        ..quick()
    };
    let stats = run_until(&fake, 2, None, tuning, |s| {
        s.uploads.iter().map(Vec::len).sum::<usize>() == 7
    })
    .await
    .unwrap();
    assert_eq!((stats.done, stats.failed), (6, 1));
    let s = fake.state();
    for r in s.uploads.iter().flatten() {
        match &r.outcome {
            TaskOutcome::Done(bytes) => {
                let musketeer_tasks::TaskOutput::Wasm(w) =
                    musketeer_tasks::TaskOutput::decode(bytes).unwrap()
                else {
                    panic!("not a wasm output")
                };
                assert_eq!(w.outputs, ["168", "135"]);
            }
            TaskOutcome::Failed(why) => {
                assert_eq!(r.task.index, 6);
                assert!(
                    why.contains("could not fetch module") && why.contains("404"),
                    "{why}"
                );
            }
        }
    }
    assert_eq!(
        s.module_fetches, 2,
        "one download per module, the missing one included"
    );
    let cached = std::fs::read_dir(dir.path().join("modules"))
        .unwrap()
        .count();
    assert_eq!(cached, 1, "the module is cached in the state directory");
}
