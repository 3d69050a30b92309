//! The work loop: lease batches of tasks, keep every core busy, upload the
//! results in batches, renew leases, and stop cleanly.
//!
//! One async task owns all the state; network calls run as spawned tasks
//! whose answers come back as events, and the executor's threads report
//! finished tasks on a channel, so nothing here ever waits on one call while
//! another could proceed:
//!
//! - **Batches.** The loop learns how many real nanoseconds one unit of
//!   [`Cost::work`] takes here ([`Speed`]) and asks for about
//!   [`Tuning::batch`] of work for all cores at once (one task per core
//!   until the first task has been timed).
//! - **Prefetch.** When the queued work drops below one batch, the next
//!   batch is leased while the current one runs; only a fully idle agent
//!   long-polls.
//! - **Results** are uploaded together, at most one upload in flight, after
//!   [`Tuning::flush_after`] or as soon as the agent has nothing else to do.
//! - **Outages** (unreachable, 5xx) are retried with backoff and logged once;
//!   finished results stay buffered until the coordinator is back. Only a
//!   refused credential or an untrusted server ends the loop with an error.
//! - **Holds** (the volunteer's pause, schedule or battery, see
//!   [`crate::volunteer`]) stop leasing and dispatching and give queued
//!   tasks back at once; running tasks stay leased (heartbeats go on) while
//!   their workers are frozen, for [`Link::hold_leases`], then are given
//!   back too.
//! - **Shutdown** releases queued tasks at once, gives running ones
//!   [`Tuning::grace`] to finish and upload, and releases the rest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use musketeer_tasks::protocol::{
    Capacity, Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse, LeasedTask, Release,
    ReleaseAck, ResultAck, ResultBatch, TaskOutcome, TaskRef, TaskReport,
};
use musketeer_tasks::Cost;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{AgentApi, Backoff, ClientError, Outage};
use crate::executor::{kernel_of, Executor, Finished, Isolation};
use crate::modules::{Fetch, ModuleCache, Modules, FETCH_TIMEOUT};
use crate::volunteer::Hold;

/// Weight of the newest observation in the speed estimate: enough to follow
/// a host that gets busier within a few batches, not so much that one odd
/// task swings the batch size.
const SPEED_ALPHA: f64 = 0.2;
/// Observed speeds are kept within this factor of the planner's estimate, so
/// that one absurd measurement (a task of almost no work) cannot ask for a
/// batch of millions of tasks or of none.
const SPEED_CLAMP: f64 = 1000.0;
/// After a long poll that brought nothing, wait this long before the next
/// one, so that a coordinator that answers at once (instead of holding the
/// long poll) is not hammered.
const EMPTY_LEASE_PAUSE: Duration = Duration::from_millis(500);
/// After the grace period, how long the final release and upload may take
/// before the agent exits anyway.
const FINAL_CALLS: Duration = Duration::from_secs(3);
/// A guess at the bytes a report adds to an upload besides its output.
const REPORT_OVERHEAD: usize = 64;

/// Timings and sizes of the work loop.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Lease about this much work for all cores at once: long enough that a
    /// lease round trip is small beside it, short enough that the tail of a
    /// job is spread over many agents.
    pub batch: Duration,
    /// At most this many tasks per lease.
    pub max_tasks: u32,
    /// How long an idle agent's lease call may wait for work.
    pub long_poll: Duration,
    /// Upload finished results at least this often.
    pub flush_after: Duration,
    /// Upload at once when the buffered results reach this many bytes.
    pub max_upload_bytes: usize,
    /// On shutdown, how long running tasks may still finish.
    pub grace: Duration,
    /// The lease time-to-live assumed until the coordinator states one.
    pub default_lease_ttl: Duration,
    /// Where wasm tasks' modules are cached; `None` keeps them in memory.
    pub module_dir: Option<std::path::PathBuf>,
    /// Most bytes of modules the cache keeps.
    pub module_cache_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            batch: Duration::from_millis(1500),
            max_tasks: 256,
            long_poll: Duration::from_secs(20),
            flush_after: Duration::from_millis(150),
            max_upload_bytes: 8 << 20,
            grace: Duration::from_secs(5),
            default_lease_ttl: Duration::from_secs(30),
            module_dir: None,
            module_cache_bytes: crate::modules::DEFAULT_CACHE_BYTES,
        }
    }
}

/// How fast this host runs work: real nanoseconds per [`Cost::work`] unit,
/// per kernel and overall.
#[derive(Clone, Debug, PartialEq)]
pub struct Speed {
    overall: f64,
    kernels: HashMap<&'static str, f64>,
    observed: u64,
}

impl Default for Speed {
    fn default() -> Self {
        // The planner's unit is a nanosecond on one modern x86_64 core.
        Speed {
            overall: 1.0,
            kernels: HashMap::new(),
            observed: 0,
        }
    }
}

impl Speed {
    /// Learns from a task of `work` units that took `elapsed`.
    pub fn observe(&mut self, kernel: Option<&'static str>, work: u64, elapsed: Duration) {
        if work == 0 {
            return;
        }
        self.observed += 1;
        let ratio = (elapsed.as_nanos() as f64 / work as f64).clamp(1.0 / SPEED_CLAMP, SPEED_CLAMP);
        self.overall += SPEED_ALPHA * (ratio - self.overall);
        if let Some(k) = kernel {
            self.kernels
                .entry(k)
                .and_modify(|r| *r += SPEED_ALPHA * (ratio - *r))
                .or_insert(ratio);
        }
    }

    /// Whether any task has been timed yet.
    pub fn is_measured(&self) -> bool {
        self.observed > 0
    }

    /// Nanoseconds per work unit for `kernel`, or overall when it is not known yet.
    pub fn ns_per_work(&self, kernel: Option<&str>) -> f64 {
        kernel
            .and_then(|k| self.kernels.get(k))
            .copied()
            .unwrap_or(self.overall)
    }

    /// The expected real time of a task of `cost`, in nanoseconds.
    pub fn estimate_ns(&self, kernel: Option<&str>, cost: Cost) -> f64 {
        cost.work as f64 * self.ns_per_work(kernel)
    }
}

/// `max_work` for a lease: [`Tuning::batch`] of time on every core, in work units.
pub fn batch_work(batch: Duration, cpus: u32, ns_per_work: f64) -> u64 {
    let ns = batch.as_nanos() as f64 * f64::from(cpus.max(1));
    (ns / ns_per_work.max(f64::MIN_POSITIVE)).clamp(1.0, (u64::MAX / 2) as f64) as u64
}

/// What came of the work loop.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkStats {
    /// Tasks that produced an output.
    pub done: u64,
    /// Tasks that failed (their reports say why).
    pub failed: u64,
    /// Reports the coordinator accepted.
    pub accepted: u64,
    /// Leases given back unfinished.
    pub released: u64,
}

/// What the loop is doing, for `musketeer status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Tasks on a worker now (frozen ones included).
    pub running: Vec<TaskRef>,
    /// Tasks leased and waiting for a worker.
    pub queued: usize,
    /// Results waiting for upload.
    pub pending_upload: usize,
    /// So far in this run.
    pub stats: WorkStats,
}

/// The loop's link to the volunteer's controls.
#[derive(Clone, Debug)]
pub struct Link {
    /// Whether tasks must not run now, and why.
    pub hold: watch::Receiver<Option<Hold>>,
    /// How long frozen tasks keep their leases.
    pub hold_leases: Duration,
    /// Where the loop shows what it does.
    pub snapshot: Arc<Mutex<Snapshot>>,
}

impl Default for Link {
    /// Never held.
    fn default() -> Link {
        Link {
            hold: watch::channel(None).1,
            hold_leases: crate::volunteer::DEFAULT_HOLD_LEASES,
            snapshot: Arc::default(),
        }
    }
}

/// The modules of wasm tasks: cached as `tuning` says, fetched from `api`.
/// Fetches run on this runtime; the worker threads that need a module wait
/// for theirs.
fn modules_for<A: AgentApi>(api: &A, tuning: &Tuning) -> Modules {
    let cache = match &tuning.module_dir {
        Some(dir) => ModuleCache::in_dir(dir, tuning.module_cache_bytes),
        None => ModuleCache::in_memory(tuning.module_cache_bytes),
    };
    let runtime = tokio::runtime::Handle::current();
    let api = api.clone();
    let fetch: Fetch = Box::new(move |id| {
        let api = api.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(api.module(&id).await);
        });
        match rx.recv_timeout(FETCH_TIMEOUT) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                crate::process_pool::seconds(FETCH_TIMEOUT)
            )),
        }
    });
    Modules::new(cache, Some(fetch))
}

/// A network call's answer, back in the loop.
#[derive(Debug)]
enum Event {
    Leased(Result<LeaseResponse, ClientError>),
    Uploaded(ResultBatch, Result<ResultAck, ClientError>),
    Heartbeat(Result<HeartbeatAck, ClientError>),
    Released(usize, Result<ReleaseAck, ClientError>),
}

/// A task handed to the executor.
#[derive(Clone, Debug)]
struct Running {
    kernel: Option<&'static str>,
    cost: Cost,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

/// Where shutdown stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Working.
    No,
    /// Queued tasks released; running ones may finish until the deadline.
    Grace(Instant),
    /// Unfinished tasks released; last calls may complete until the deadline.
    Final(Instant),
}

/// Works for the coordinator behind `api` until `shutdown` resolves (then
/// stops cleanly and returns the stats) or the coordinator refuses the
/// credential or cannot be trusted (an error).
pub async fn work<A: AgentApi>(
    api: A,
    capacity: Capacity,
    isolation: Isolation,
    tuning: Tuning,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkStats, ClientError> {
    work_linked(api, capacity, isolation, tuning, Link::default(), shutdown).await
}

/// [`work`], held back by the volunteer's controls and showing what it does
/// through `link`.
pub async fn work_linked<A: AgentApi>(
    api: A,
    capacity: Capacity,
    isolation: Isolation,
    tuning: Tuning,
    link: Link,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkStats, ClientError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let modules = Arc::new(modules_for(&api, &tuning));
    let executor =
        Executor::with_isolation(capacity.cpus.max(1) as usize, isolation, done_tx, modules);
    let mut state = State::new(api, capacity, tuning, executor);
    state.hold_leases = link.hold_leases;
    let mut hold = link.hold;
    // A sender gone means no more changes: stop asking.
    let mut hold_live = true;
    let mut calls: JoinSet<Event> = JoinSet::new();
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;
    let initial = *hold.borrow_and_update();
    state.on_hold(Instant::now(), initial, &mut calls);
    loop {
        let now = Instant::now();
        state.step(now, &mut calls);
        state.publish(&link.snapshot);
        if state.finished(now) {
            break;
        }
        let wake = state.next_wake(now);
        tokio::select! {
            // Answers first: a lease that has come back must be seen (and its
            // tasks queued, or released) before a shutdown is acted on.
            biased;
            Some(finished) = done_rx.recv() => state.on_finished(Instant::now(), finished),
            Some(joined) = calls.join_next() => match joined {
                Ok(event) => state.on_event(Instant::now(), event, &mut calls)?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            },
            changed = hold.changed(), if hold_live => match changed {
                Ok(()) => {
                    let h = *hold.borrow_and_update();
                    state.on_hold(Instant::now(), h, &mut calls);
                }
                Err(_) => hold_live = false,
            },
            () = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                state.begin_stop(Instant::now(), &mut calls);
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    // A long poll still open is abandoned: the agent cannot wait the poll out
    // on shutdown. If its answer did arrive, give the tasks back.
    let mut late = Vec::new();
    while let Some(joined) = calls.try_join_next() {
        if let Ok(Event::Leased(Ok(resp))) = joined {
            late.extend(resp.tasks.into_iter().map(|t| t.task));
        }
    }
    calls.abort_all();
    if !late.is_empty() {
        let release = Release {
            tasks: late,
            stopping: true,
        };
        if let Ok(Ok(ack)) = tokio::time::timeout(FINAL_CALLS, state.api.release(&release)).await {
            state.stats.released += u64::from(ack.released);
        }
    }
    if !state.pending.is_empty() {
        tracing::warn!(
            "{} finished results could not be uploaded; the coordinator will hand those tasks out again",
            state.pending.len()
        );
    }
    // Dropping `calls` aborts a lease still waiting; dropping the executor
    // lets each worker exit once its current task is done.
    Ok(state.stats)
}

/// Everything the loop knows, and how each event changes it.
struct State<A> {
    api: A,
    capacity: Capacity,
    tuning: Tuning,
    executor: Executor,
    speed: Speed,
    stats: WorkStats,

    /// Leased, not yet handed to a worker.
    queue: VecDeque<LeasedTask>,
    /// Handed to a worker, result not yet in.
    running: HashMap<TaskRef, Running>,
    /// Tasks whose result is no longer wanted (lost lease, timed out, released)
    /// but whose worker is still on them, with the memory they hold.
    abandoned: HashMap<TaskRef, u64>,
    /// Worker threads busy, abandoned tasks and resting workers included.
    busy: usize,
    /// When each resting worker (see [`DutyCycle`]) is free again: a task
    /// handed to it before then would wait, its timeout already running.
    resting: Vec<Instant>,
    /// Memory the busy workers' tasks hold, as their costs say.
    mem_busy: u64,

    /// Results waiting for upload.
    pending: Vec<TaskReport>,
    pending_bytes: usize,
    /// When the oldest waiting result finished.
    pending_since: Option<Instant>,
    /// At most this many reports per upload (halved when one is too large).
    upload_limit: usize,
    uploading: bool,
    upload_not_before: Instant,
    upload_backoff: Backoff,

    leasing: bool,
    /// The lease in flight may wait [`Tuning::long_poll`] for work.
    long_polling: bool,
    lease_not_before: Instant,
    lease_backoff: Backoff,
    /// The last lease came back empty: do not prefetch until idle again.
    cluster_empty: bool,
    lease_ttl: Duration,

    heartbeating: bool,
    heartbeat_due: Instant,
    /// The coordinator asked this agent to lease nothing new.
    draining: bool,

    releasing: usize,
    stop: Stop,
    outage: Outage,

    /// Why tasks must not run now, if they must not.
    held: Option<Hold>,
    /// Since when they must not.
    held_since: Option<Instant>,
    /// How long frozen tasks keep their leases.
    hold_leases: Duration,
}

impl<A: AgentApi> State<A> {
    fn new(api: A, capacity: Capacity, tuning: Tuning, executor: Executor) -> Self {
        let now = Instant::now();
        let lease_ttl = tuning.default_lease_ttl;
        State {
            api,
            capacity,
            upload_limit: tuning.max_tasks.max(1) as usize,
            tuning,
            executor,
            speed: Speed::default(),
            stats: WorkStats::default(),
            queue: VecDeque::new(),
            running: HashMap::new(),
            abandoned: HashMap::new(),
            busy: 0,
            resting: Vec::new(),
            mem_busy: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            uploading: false,
            upload_not_before: now,
            upload_backoff: Backoff::default(),
            leasing: false,
            long_polling: false,
            lease_not_before: now,
            lease_backoff: Backoff::default(),
            cluster_empty: false,
            lease_ttl,
            heartbeating: false,
            heartbeat_due: now + lease_ttl / 3,
            draining: false,
            releasing: 0,
            stop: Stop::No,
            outage: Outage::default(),
            held: None,
            held_since: None,
            hold_leases: crate::volunteer::DEFAULT_HOLD_LEASES,
        }
    }

    fn cpus(&self) -> usize {
        self.executor.threads()
    }

    /// Does whatever is due now: hand out tasks, expire overdue ones, lease,
    /// upload, renew leases, move shutdown along.
    fn step(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        self.wake_rested(now);
        self.expire_overdue(now);
        self.give_back_frozen(now, calls);
        self.dispatch(now);
        self.advance_stop(now, calls);
        self.maybe_lease(now, calls);
        self.maybe_upload(now, calls);
        self.maybe_heartbeat(now, calls);
    }

    /// Whether the loop is done: stopping, with nothing left worth waiting for.
    fn finished(&self, now: Instant) -> bool {
        match self.stop {
            Stop::No => false,
            Stop::Grace(_) => {
                self.running.is_empty()
                    && self.pending.is_empty()
                    && !self.uploading
                    && self.releasing == 0
                    // The stopping release ended any long poll (a prefetch
                    // answers at once anyway): wait for its answer, to give
                    // back what it brought. A coordinator that does not end
                    // the poll costs the grace period at most.
                    && !self.leasing
            }
            Stop::Final(deadline) => {
                now >= deadline
                    || ((self.pending.is_empty() || self.outage.is_down())
                        && !self.uploading
                        && self.releasing == 0)
            }
        }
    }

    /// When something becomes due, at the latest.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(3600);
        let mut consider = |t: Instant| {
            if t > now && t < wake {
                wake = t;
            }
        };
        consider(self.heartbeat_due);
        consider(self.lease_not_before);
        consider(self.upload_not_before);
        for &t in &self.resting {
            consider(t);
        }
        if let Some(since) = self.pending_since {
            consider(since + self.tuning.flush_after);
        }
        for r in self.running.values() {
            if let Some(d) = r.deadline {
                consider(d);
            }
        }
        match self.stop {
            Stop::Grace(d) | Stop::Final(d) => consider(d),
            Stop::No => {}
        }
        if let Some(since) = self.held_since.filter(|_| !self.running.is_empty()) {
            consider(since + self.hold_leases);
        }
        wake
    }

    /// Hands queued tasks to idle workers, as long as their memory fits.
    fn dispatch(&mut self, now: Instant) {
        if self.stop != Stop::No || self.held.is_some() {
            return;
        }
        while self.busy < self.cpus() {
            let Some(next) = self.queue.front() else {
                break;
            };
            let mem = next.cost.mem_bytes;
            // A task larger than the limit still runs alone: the coordinator
            // matched it to this agent, and refusing it would stall it forever.
            if self.mem_busy > 0 && self.mem_busy.saturating_add(mem) > self.capacity.memory_bytes {
                break;
            }
            let task = self.queue.pop_front().expect("front exists");
            let timeout = task.timeout_ms.map(Duration::from_millis);
            // Worker processes are killed at their timeout by the executor,
            // which then reports why; threads cannot be, so the loop gives up
            // on them itself.
            let deadline = if self.executor.enforces_timeouts() {
                None
            } else {
                timeout.map(|t| now + t)
            };
            self.running.insert(
                task.task.clone(),
                Running {
                    kernel: kernel_of(&task.input),
                    cost: task.cost,
                    timeout,
                    deadline,
                },
            );
            self.busy += 1;
            self.mem_busy += mem;
            self.executor.submit(task);
        }
    }

    /// Counts workers whose rest is over as free again.
    fn wake_rested(&mut self, now: Instant) {
        let before = self.resting.len();
        self.resting.retain(|&t| t > now);
        self.busy = self.busy.saturating_sub(before - self.resting.len());
    }

    /// Fails running tasks past their timeout. Their worker stays busy until
    /// the kernel returns (a thread cannot be stopped safely), and the late
    /// output is dropped.
    fn expire_overdue(&mut self, now: Instant) {
        let overdue: Vec<TaskRef> = self
            .running
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| d <= now))
            .map(|(t, _)| t.clone())
            .collect();
        for task in overdue {
            let r = self.running.remove(&task).expect("listed above");
            let secs = r.timeout.unwrap_or_default().as_secs_f64();
            let why = format!(
                "ran past its timeout of {}",
                crate::process_pool::seconds(r.timeout.unwrap_or_default())
            );
            tracing::warn!(
                "task {}#{} {why}; its worker thread is busy until the kernel returns",
                task.job,
                task.index
            );
            self.abandoned.insert(task.clone(), r.cost.mem_bytes);
            self.stats.failed += 1;
            self.push_report(
                now,
                TaskReport {
                    task,
                    cpu_ms: (secs * 1000.0) as u64,
                    outcome: TaskOutcome::Failed(why),
                },
            );
        }
    }

    /// Queued work, in expected nanoseconds.
    fn queued_ns(&self) -> f64 {
        self.queue
            .iter()
            .map(|t| self.speed.estimate_ns(kernel_of(&t.input), t.cost))
            .sum()
    }

    /// Memory the queued tasks will need, as their costs say.
    fn queued_mem(&self) -> u64 {
        self.queue.iter().map(|t| t.cost.mem_bytes).sum()
    }

    fn maybe_lease(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        if self.leasing
            || self.draining
            || self.held.is_some()
            || self.stop != Stop::No
            || now < self.lease_not_before
        {
            return;
        }
        let cpus = self.cpus() as u32;
        let idle = self.queue.is_empty() && self.busy < self.cpus();
        // Slow start: until one task has been timed, the estimate may be off
        // by a large factor, and a full batch could take far longer than
        // planned while other agents go without. So hold one task per core
        // and one queued behind it, no more, until the first one is timed.
        let measured = self.speed.is_measured();
        let slow_start_room = (2 * cpus).saturating_sub((self.queue.len() + self.busy) as u32);
        let batch_ns = self.tuning.batch.as_nanos() as f64 * f64::from(cpus);
        let wait = if idle {
            self.tuning.long_poll
        } else if !self.cluster_empty
            && self.queued_ns() < batch_ns
            && (measured || slow_start_room > 0)
            // Leased inputs are held in memory too: under a tight --memory,
            // prefetch only while what is held leaves room for more.
            && self.queued_mem().saturating_add(self.mem_busy) < self.capacity.memory_bytes
        {
            Duration::ZERO
        } else {
            return;
        };
        let max_tasks = if measured {
            self.tuning.max_tasks
        } else if idle {
            (self.cpus() - self.busy) as u32
        } else {
            slow_start_room
        };
        let max_tasks = max_tasks.clamp(1, self.tuning.max_tasks.max(1));
        let req = LeaseRequest {
            max_work: batch_work(
                self.tuning.batch,
                self.cpus() as u32,
                self.speed.ns_per_work(None),
            ),
            max_tasks,
            wait_ms: wait.as_millis() as u64,
            capacity: self.capacity.clone(),
        };
        tracing::debug!(max_work = req.max_work, wait_ms = req.wait_ms, "leasing");
        self.leasing = true;
        self.long_polling = !wait.is_zero();
        let api = self.api.clone();
        calls.spawn(async move { Event::Leased(api.lease(&req).await) });
    }

    fn maybe_upload(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        if self.uploading || self.pending.is_empty() || now < self.upload_not_before {
            return;
        }
        let nothing_else_to_do = self.queue.is_empty() && self.running.is_empty();
        let due = nothing_else_to_do
            || self.stop != Stop::No
            || self.pending_bytes >= self.tuning.max_upload_bytes
            || self.pending.len() >= self.upload_limit
            || self
                .pending_since
                .is_some_and(|t| now >= t + self.tuning.flush_after);
        if !due {
            return;
        }
        let take = self.pending.len().min(self.upload_limit);
        let results: Vec<TaskReport> = self.pending.drain(..take).collect();
        tracing::debug!("uploading {} results", results.len());
        self.pending_bytes = self.pending.iter().map(report_size).sum();
        self.pending_since = if self.pending.is_empty() {
            None
        } else {
            Some(now)
        };
        self.uploading = true;
        let api = self.api.clone();
        calls.spawn(async move {
            let batch = ResultBatch { results };
            let result = api.results(&batch).await;
            Event::Uploaded(batch, result)
        });
    }

    /// Every lease held: queued, running, or finished with the result still
    /// waiting for upload (abandoned ones are not wanted). The waiting ones
    /// matter: behind a slow upload to a busy coordinator, results can wait
    /// longer than a lease lives, and a lease that lapses then costs the
    /// task an attempt although its result is in hand.
    fn held(&self) -> Vec<TaskRef> {
        self.queue
            .iter()
            .map(|t| t.task.clone())
            .chain(self.running.keys().cloned())
            .chain(self.pending.iter().map(|r| r.task.clone()))
            .collect()
    }

    fn maybe_heartbeat(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        if self.heartbeating || now < self.heartbeat_due {
            return;
        }
        self.heartbeat_due = now + self.lease_ttl / 3;
        // Sent even when no lease is held: an idle agent learns this way that
        // it was asked to drain (and when that is lifted), which its empty
        // lease answers cannot tell it.
        let running = self.held();
        self.heartbeating = true;
        let api = self.api.clone();
        calls.spawn(async move { Event::Heartbeat(api.heartbeat(&Heartbeat { running }).await) });
    }

    fn release(&mut self, tasks: Vec<TaskRef>, calls: &mut JoinSet<Event>) {
        if tasks.is_empty() {
            return;
        }
        self.send_release(
            Release {
                tasks,
                stopping: false,
            },
            calls,
        );
    }

    fn send_release(&mut self, release: Release, calls: &mut JoinSet<Event>) {
        self.releasing += 1;
        let api = self.api.clone();
        calls.spawn(async move {
            let n = release.tasks.len();
            Event::Released(n, api.release(&release).await)
        });
    }

    /// The volunteer's controls changed: hold (lease and start nothing, give
    /// queued tasks back, keep running ones frozen) or go on.
    fn on_hold(&mut self, now: Instant, hold: Option<Hold>, calls: &mut JoinSet<Event>) {
        if hold == self.held {
            return;
        }
        let was = std::mem::replace(&mut self.held, hold);
        match (was, hold) {
            (None, Some(h)) => {
                self.held_since = Some(now);
                let queued: Vec<TaskRef> = self.queue.drain(..).map(|t| t.task).collect();
                tracing::info!(
                    "{}: freezing {} running tasks (keeping their leases for up to {}), giving back {} queued",
                    h.describe(),
                    self.running.len(),
                    crate::process_pool::seconds(self.hold_leases),
                    queued.len()
                );
                self.release(queued, calls);
            }
            (Some(_), Some(h)) => tracing::info!("still holding: now {}", h.describe()),
            (Some(h), None) => {
                self.held_since = None;
                tracing::info!(
                    "no longer {}: resuming {} tasks",
                    h.describe(),
                    self.running.len()
                );
            }
            (None, None) => {}
        }
    }

    /// Held for longer than the leases are kept: gives the frozen tasks
    /// back, so that other agents can do them. Their workers finish them
    /// after the hold, and those results are dropped.
    fn give_back_frozen(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        let Some(since) = self.held_since else {
            return;
        };
        if self.running.is_empty() || now < since + self.hold_leases {
            return;
        }
        let frozen: Vec<TaskRef> = self.running.keys().cloned().collect();
        tracing::info!(
            "held for {}: giving back the leases of {} frozen tasks",
            crate::process_pool::seconds(self.hold_leases),
            frozen.len()
        );
        for task in &frozen {
            let r = self.running.remove(task).expect("listed above");
            self.abandoned.insert(task.clone(), r.cost.mem_bytes);
        }
        self.release(frozen, calls);
    }

    /// Shows what the loop does in `snapshot`.
    fn publish(&self, snapshot: &Mutex<Snapshot>) {
        if let Ok(mut s) = snapshot.lock() {
            s.running.clear();
            s.running.extend(self.running.keys().cloned());
            s.running.sort();
            s.queued = self.queue.len();
            s.pending_upload = self.pending.len();
            s.stats = self.stats.clone();
        }
    }

    /// Shutdown asked: lease nothing more, give queued tasks back at once.
    fn begin_stop(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        if self.stop != Stop::No {
            return;
        }
        let queued: Vec<TaskRef> = self.queue.drain(..).map(|t| t.task).collect();
        tracing::info!(
            "stopping: releasing {} queued tasks, giving {} running up to {:.1}s",
            queued.len(),
            self.running.len(),
            self.tuning.grace.as_secs_f64()
        );
        self.stop = Stop::Grace(now + self.tuning.grace);
        // Sent even with nothing queued: it tells the coordinator to end
        // our open long poll now, so no task is leased into an answer the
        // agent would abandon on its way out.
        self.send_release(
            Release {
                tasks: queued,
                stopping: true,
            },
            calls,
        );
    }

    /// Past the grace period: give back what still runs and allow the last
    /// calls a moment.
    fn advance_stop(&mut self, now: Instant, calls: &mut JoinSet<Event>) {
        let Stop::Grace(deadline) = self.stop else {
            return;
        };
        if now < deadline {
            return;
        }
        let unfinished: Vec<TaskRef> = self.running.keys().cloned().collect();
        if !unfinished.is_empty() {
            tracing::info!("releasing {} tasks still running", unfinished.len());
        }
        for task in &unfinished {
            let r = self.running.remove(task).expect("listed above");
            self.abandoned.insert(task.clone(), r.cost.mem_bytes);
        }
        self.release(unfinished, calls);
        self.stop = Stop::Final(now + FINAL_CALLS);
    }

    fn push_report(&mut self, now: Instant, report: TaskReport) {
        self.pending_bytes += report_size(&report);
        self.pending_since.get_or_insert(now);
        self.pending.push(report);
    }

    /// A worker finished a task.
    fn on_finished(&mut self, now: Instant, f: Finished) {
        if f.pause.is_zero() {
            self.busy = self.busy.saturating_sub(1);
        } else {
            self.resting.push(now + f.pause);
        }
        if let Some(mem) = self.abandoned.remove(&f.task) {
            self.mem_busy = self.mem_busy.saturating_sub(mem);
            tracing::debug!(
                "dropping the result of {}#{}: no longer wanted",
                f.task.job,
                f.task.index
            );
            return;
        }
        let Some(r) = self.running.remove(&f.task) else {
            return;
        };
        self.mem_busy = self.mem_busy.saturating_sub(r.cost.mem_bytes);
        self.speed
            .observe(f.kernel.or(r.kernel), r.cost.work, f.wall + f.pause);
        match &f.outcome {
            TaskOutcome::Done(_) => self.stats.done += 1,
            TaskOutcome::Failed(why) => {
                self.stats.failed += 1;
                tracing::warn!("task {}#{} failed: {why}", f.task.job, f.task.index);
            }
        }
        self.push_report(
            now,
            TaskReport {
                task: f.task,
                cpu_ms: f.cpu.as_millis() as u64,
                outcome: f.outcome,
            },
        );
    }

    /// A network call came back.
    fn on_event(
        &mut self,
        now: Instant,
        event: Event,
        calls: &mut JoinSet<Event>,
    ) -> Result<(), ClientError> {
        match event {
            Event::Leased(result) => {
                self.leasing = false;
                let resp = match self.check(result, "leasing tasks")? {
                    Some(resp) => resp,
                    None => {
                        self.lease_not_before = now + self.lease_backoff.next_delay();
                        return Ok(());
                    }
                };
                self.lease_backoff.reset();
                if resp.lease_ttl_ms > 0 {
                    self.lease_ttl = Duration::from_millis(resp.lease_ttl_ms);
                    self.heartbeat_due = self.heartbeat_due.min(now + self.lease_ttl / 3);
                }
                if resp.tasks.is_empty() {
                    // After an empty prefetch the next lease waits for idle
                    // workers anyway, and is a long poll: no pause needed.
                    self.cluster_empty = true;
                    if self.long_polling {
                        self.lease_not_before = now + EMPTY_LEASE_PAUSE;
                    }
                    return Ok(());
                }
                self.cluster_empty = false;
                tracing::debug!("leased {} tasks", resp.tasks.len());
                if self.stop != Stop::No || self.held.is_some() {
                    let refs = resp.tasks.into_iter().map(|t| t.task).collect();
                    self.release(refs, calls);
                } else {
                    self.queue.extend(resp.tasks);
                }
            }
            Event::Uploaded(batch, result) => {
                self.uploading = false;
                match result {
                    Err(ClientError::Rejected { status: 413, .. }) if batch.results.len() > 1 => {
                        self.upload_limit = (batch.results.len() / 2).max(1);
                        tracing::debug!(
                            "results too large for one upload: sending {} at a time",
                            self.upload_limit
                        );
                        self.requeue_reports(now, batch);
                    }
                    Err(ClientError::Rejected { message, .. }) => {
                        // Retrying the same bytes cannot help; the coordinator
                        // hands the tasks out again when their leases expire.
                        tracing::error!(
                            "the coordinator refused {} results, dropping them: {message}",
                            batch.results.len()
                        );
                    }
                    result => match self.check(result, "uploading results")? {
                        Some(ack) => {
                            self.upload_backoff.reset();
                            self.stats.accepted += u64::from(ack.accepted);
                            if ack.stale > 0 {
                                tracing::debug!("{} results were stale", ack.stale);
                            }
                        }
                        None => {
                            self.upload_not_before = now + self.upload_backoff.next_delay();
                            self.requeue_reports(now, batch);
                        }
                    },
                }
            }
            Event::Heartbeat(result) => {
                self.heartbeating = false;
                if let Some(ack) = self.check(result, "renewing leases")? {
                    self.on_heartbeat_ack(ack);
                }
            }
            Event::Released(n, result) => {
                self.releasing -= 1;
                match result {
                    Ok(_) => self.stats.released += n as u64,
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => tracing::warn!(
                        "could not release {n} tasks ({e}); the coordinator will reclaim them when their leases expire"
                    ),
                }
            }
        }
        Ok(())
    }

    /// Sorts a call's result: the answer, `None` for an error worth retrying
    /// (logged once per outage), or the error that ends the loop.
    fn check<T>(
        &mut self,
        result: Result<T, ClientError>,
        what: &str,
    ) -> Result<Option<T>, ClientError> {
        match result {
            Ok(v) => {
                self.outage.recovered();
                Ok(Some(v))
            }
            Err(e) if e.is_fatal() => Err(e),
            Err(e) => {
                self.outage.failed(what, &e);
                Ok(None)
            }
        }
    }

    /// Puts an upload that failed back in front of the buffer.
    fn requeue_reports(&mut self, now: Instant, batch: ResultBatch) {
        self.pending.splice(0..0, batch.results);
        self.pending_bytes = self.pending.iter().map(report_size).sum();
        self.pending_since = Some(self.pending_since.map_or(now, |t| t.min(now)));
    }

    fn on_heartbeat_ack(&mut self, ack: HeartbeatAck) {
        if !ack.lost.is_empty() {
            let lost: HashSet<TaskRef> = ack.lost.into_iter().collect();
            tracing::info!(
                "{} leases were lost (expired or cancelled); dropping those tasks",
                lost.len()
            );
            self.queue.retain(|t| !lost.contains(&t.task));
            self.pending.retain(|r| !lost.contains(&r.task));
            self.pending_bytes = self.pending.iter().map(report_size).sum();
            for task in lost {
                if let Some(r) = self.running.remove(&task) {
                    self.abandoned.insert(task, r.cost.mem_bytes);
                }
            }
        }
        if ack.drain != self.draining {
            self.draining = ack.drain;
            if ack.drain {
                tracing::info!(
                    "the coordinator asked this agent to drain: finishing {} tasks, leasing no more",
                    self.queue.len() + self.running.len()
                );
            } else {
                tracing::info!("drain lifted: leasing again");
            }
        }
    }
}

fn report_size(r: &TaskReport) -> usize {
    REPORT_OVERHEAD
        + match &r.outcome {
            TaskOutcome::Done(bytes) => bytes.len(),
            TaskOutcome::Failed(why) => why.len(),
        }
}

#[cfg(test)]
mod tests;
