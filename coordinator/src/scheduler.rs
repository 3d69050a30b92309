//! The scheduler sits between the HTTP layer and the store: it holds idle
//! agents' lease calls open until work arrives (long-poll), takes in results
//! and starts the reduce of every job whose tasks are all done, and returns
//! expired leases to the queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use musketeer_tasks::protocol::{LeasedTask, TaskOutcome, TaskReport};
use musketeer_tasks::wasm::{Limits, ReduceKind};
use musketeer_tasks::{ReducePlan, TaskOutput};
use tokio::sync::Notify;
use tokio::time::Instant;

pub mod matching;
pub mod throughput;
pub mod why;

use crate::clock::{Clock, SystemClock};
use crate::store::rules::MAX_REPORTED_CPU_MS;
use crate::store::{
    CompleteOutcome, LeaseQuery, NewJob, NewTask, Retried, RetryRefusal, Store, StoreResult,
};

/// The longest an agent's lease call is held open: below common proxy and
/// load-balancer idle timeouts (60 s), so long-polls survive them.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(25);

/// How often an empty long-poll looks again even if nobody signalled work:
/// retries whose backoff ran out are not signalled.
const REPOLL: Duration = Duration::from_secs(1);

/// How often a coordinator on a shared store asks whether another one
/// added work: the delay before an idle agent on this coordinator hears of it.
const EPOCH_POLL: Duration = Duration::from_millis(50);

/// How often jobs that are done but unreduced are looked for again.
const REDUCE_SWEEP: Duration = Duration::from_secs(10);

/// What a module's `musketeer_reduce` may use on the coordinator, for a
/// whole job's reduce tree: fuel for about ten seconds of interpretation,
/// and linear memory well below the coordinator's own (which serves every
/// job at once). A reduce past them fails its job with the reason.
pub fn reduce_limits() -> Limits {
    Limits {
        fuel: 10_000_000_000,
        memory_bytes: 128 << 20,
        ..Limits::default()
    }
}

/// Counters for `/metrics`; monotonic since start.
#[derive(Default)]
pub struct Counters {
    /// Jobs accepted.
    pub jobs_submitted: AtomicU64,
    /// Tasks handed to agents.
    pub tasks_leased: AtomicU64,
    /// Results recorded (success or failure).
    pub results_accepted: AtomicU64,
    /// Results ignored because their lease was gone.
    pub results_stale: AtomicU64,
    /// Tasks put back to retry after a failure.
    pub tasks_retried: AtomicU64,
    /// Leases that ran out before their result came.
    pub leases_expired: AtomicU64,
    /// Jobs reduced.
    pub jobs_reduced: AtomicU64,
}

/// Forgets a job that was begun but not sealed, unless disarmed: an upload
/// that failed, or whose handler was dropped because the client hung up,
/// must leave neither a job nor tasks that agents would run.
pub struct UnsealedJob {
    store: Arc<dyn Store>,
    id: Option<String>,
}

impl UnsealedJob {
    /// Guards job `id`.
    pub fn new(store: Arc<dyn Store>, id: &str) -> UnsealedJob {
        UnsealedJob {
            store,
            id: Some(id.to_string()),
        }
    }

    /// The job was sealed: keep it.
    pub fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for UnsealedJob {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.abort_job(&id).await {
                    tracing::error!(job = %id, "cannot drop an unfinished job: {e}");
                }
            });
        }
    }
}

/// See the module documentation.
pub struct Scheduler {
    /// Where all state lives.
    pub store: Arc<dyn Store>,
    /// Woken whenever tasks become leasable, so long-polls answer at once.
    work_ready: Notify,
    /// How long a lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// Jobs being reduced now: a job whose last results arrive twice (a
    /// retry racing a restart) must still be reduced once.
    reducing: Mutex<HashSet<String>>,
    /// Metrics.
    pub counters: Counters,
    /// Results per second over the last hour, for the dashboard.
    pub throughput: throughput::Throughput,
    /// Lease latency, task CPU time and job duration, for `/metrics`.
    pub histograms: crate::metrics::Histograms,
    /// How often an empty long-poll looks again unasked, in ms: [`REPOLL`],
    /// or never (until its wait ends) when the store reports every change
    /// through [`Store::work_epoch`].
    repoll_ms: AtomicU64,
    /// The time every lease, result and expiry is stamped with.
    clock: Arc<dyn Clock>,
    /// Agents that said they are shutting down, and when: a long poll of
    /// theirs begun before then ends empty instead of leasing tasks into an
    /// answer the agent no longer reads. A poll begun later (the agent
    /// started again) clears the mark.
    stopping: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Scheduler {
    /// A scheduler over `store`.
    pub fn new(store: Arc<dyn Store>, lease_ttl: Duration) -> Arc<Scheduler> {
        Scheduler::with_clock(store, lease_ttl, Arc::new(SystemClock))
    }

    /// A scheduler over `store` that reads the time from `clock`.
    pub fn with_clock(
        store: Arc<dyn Store>,
        lease_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            store,
            work_ready: Notify::new(),
            lease_ttl,
            reducing: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            throughput: throughput::Throughput::default(),
            histograms: crate::metrics::Histograms::default(),
            repoll_ms: AtomicU64::new(REPOLL.as_millis() as u64),
            clock,
            stopping: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Records that `agent_id` is shutting down, and wakes its long polls
    /// so that they end now.
    pub fn agent_stopping(&self, agent_id: &str) {
        if let Ok(mut stopping) = self.stopping.lock() {
            stopping.insert(agent_id.to_string(), Instant::now());
        }
        self.work_ready.notify_waiters();
    }

    /// Whether `agent_id` said it stops after a poll of its began at `began`.
    fn stopped_since(&self, agent_id: &str, began: Instant) -> bool {
        let Ok(mut stopping) = self.stopping.lock() else {
            return false;
        };
        match stopping.get(agent_id) {
            Some(&at) if at >= began => true,
            Some(_) => {
                // A poll from after the stop: the agent runs again.
                stopping.remove(agent_id);
                false
            }
            None => false,
        }
    }

    /// Why job `id` waits, now (see [`why`]); `None` if there is no such job.
    pub async fn why(&self, id: &str) -> StoreResult<Option<why::Why>> {
        let now = self.now_ms();
        let Some(job) = self.store.job(id).await? else {
            return Ok(None);
        };
        let Some(backlog) = self.store.job_backlog(id, now).await? else {
            return Ok(None);
        };
        let agents = self.store.list_agents().await?;
        Ok(Some(why::explain(&job, &backlog, &agents, now)))
    }

    /// The scheduler's clock now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Starts the background work: lease expiry, and the reduce of jobs a
    /// previous run left finished but unreduced.
    pub async fn start(self: &Arc<Self>) -> StoreResult<()> {
        // On a full disk the coordinator still starts, read-only: what
        // these writes tidy up can wait (unsealed jobs stay invisible, and
        // the sweep below purges inputs again).
        use crate::space::unless_full;
        let dropped = unless_full(
            "dropping cut-off uploads",
            self.store.abort_unsealed_jobs().await,
        )?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "dropped uploads that were cut off by the last shutdown"
            );
        }
        let ttl = self.lease_ttl.as_millis() as u64;
        let renewed = unless_full(
            "renewing leases",
            self.store.renew_all_leases(self.now_ms(), ttl).await,
        )?;
        unless_full(
            "purging the inputs of finished jobs",
            self.store.purge_finished_inputs(self.now_ms()).await,
        )?;
        if renewed > 0 {
            tracing::info!(
                renewed,
                "leases from before the restart renewed while agents reconnect"
            );
        }
        for id in self.store.jobs_to_reduce().await? {
            self.spawn_reduce(id);
        }
        if let Some(epoch) = self.store.work_epoch(self.now_ms()).await? {
            self.watch_epoch(epoch);
        }
        let me = self.clone();
        tokio::spawn(async move {
            // A quarter of the TTL: an expired lease waits at most that long
            // beyond its deadline before its task is offered again.
            let period =
                (me.lease_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            let mut tick = tokio::time::interval(period);
            let mut last_sweep = Instant::now();
            loop {
                tick.tick().await;
                // A reduce that failed in the store (disk full, say) is tried
                // again here rather than leaving its job running forever.
                if last_sweep.elapsed() >= REDUCE_SWEEP {
                    last_sweep = Instant::now();
                    match me.store.jobs_to_reduce().await {
                        Ok(ids) => ids.into_iter().for_each(|id| me.spawn_reduce(id)),
                        Err(e) => tracing::error!("cannot list jobs to reduce: {e}"),
                    }
                    if let Err(e) = me.store.purge_finished_inputs(me.now_ms()).await {
                        tracing::error!("cannot purge the inputs of finished jobs: {e}");
                    }
                }
                me.sweep_expired().await;
                match me.store.expire_leases(me.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(expired = n, "returned expired leases to the queue");
                        me.counters
                            .leases_expired
                            .fetch_add(n as u64, Ordering::Relaxed);
                        me.work_ready.notify_waiters();
                    }
                    Err(e) => tracing::error!("lease expiry failed: {e}"),
                }
            }
        });
        Ok(())
    }

    /// Ends the jobs whose `expires` came with tasks never leased, and
    /// deletes the results whose TTL ran out: every tick of the lease
    /// expiry, so either happens within a quarter of the lease TTL (at most
    /// 5 s) of its time; the API answers `410` for an expired result from
    /// its time on, whether or not its bytes are gone yet.
    async fn sweep_expired(&self) {
        let now = self.now_ms();
        match self.store.expire_jobs(now).await {
            Ok(ids) => {
                for id in &ids {
                    tracing::info!(job = %id, "job expired with tasks never leased");
                }
            }
            Err(e) => tracing::error!("cannot expire jobs: {e}"),
        }
        match self.store.purge_expired_results(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(results = n, "expired results deleted"),
            Err(e) => tracing::error!("cannot delete expired results: {e}"),
        }
    }

    /// On a shared store: wakes this coordinator's long-polls whenever any
    /// coordinator made tasks leasable. One cheap read per [`EPOCH_POLL`]
    /// replaces every idle agent's own re-poll of the store (10,000 idle
    /// agents would otherwise cost 10,000 lease queries a second).
    fn watch_epoch(self: &Arc<Self>, mut epoch: u64) {
        self.repoll_ms
            .store(MAX_LEASE_WAIT.as_millis() as u64, Ordering::Relaxed);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EPOCH_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                match me.store.work_epoch(me.now_ms()).await {
                    Ok(Some(now)) if now != epoch => {
                        epoch = now;
                        me.work_ready.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("cannot read the shared store's work epoch: {e}");
                        // The store may have lost the epoch (restarted):
                        // look again rather than miss work.
                        me.work_ready.notify_waiters();
                        tokio::time::sleep(REPOLL).await;
                    }
                }
            }
        });
    }

    /// Says that tasks became leasable.
    pub fn signal_work(&self) {
        self.work_ready.notify_waiters();
    }

    /// Stores a whole planned job and makes it visible; returns its task count.
    pub async fn submit(self: &Arc<Self>, job: NewJob, tasks: Vec<NewTask>) -> StoreResult<u64> {
        let id = job.id.clone();
        // Also when this future is dropped mid-way (the client hung up), and
        // before the job is begun: a begin cut short (Redis out of memory
        // between its writes) leaves pieces too.
        let guard = UnsealedJob::new(self.store.clone(), &id);
        self.store.begin_job(job).await?;
        let result = async {
            let mut batch = Vec::new();
            let mut bytes = 0;
            for task in tasks {
                bytes += task.input.len();
                batch.push(task);
                // Bounded transactions: a huge job must not hold the writer
                // (and every agent's lease) for one giant commit.
                if bytes > 32 << 20 || batch.len() >= 4096 {
                    self.store
                        .add_tasks(&id, std::mem::take(&mut batch))
                        .await?;
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                self.store.add_tasks(&id, batch).await?;
            }
            self.seal(&id).await
        }
        .await;
        if result.is_ok() {
            guard.disarm();
        }
        result
    }

    /// Seals a job whose tasks are all stored; returns its task count.
    pub async fn seal(self: &Arc<Self>, id: &str) -> StoreResult<u64> {
        let (total, ready) = self.store.seal_job(id).await?;
        self.counters.jobs_submitted.fetch_add(1, Ordering::Relaxed);
        self.signal_work();
        if ready {
            self.spawn_reduce(id.to_string());
        }
        Ok(total)
    }

    /// Retries a failed job's tasks (see [`Store::retry_failed_tasks`]):
    /// wakes the agents for the tasks queued again, or reduces the job
    /// again at once if every task was done (its reduce had failed).
    pub async fn retry_failed_tasks(
        self: &Arc<Self>,
        id: &str,
    ) -> StoreResult<Result<Retried, RetryRefusal>> {
        let out = self.store.retry_failed_tasks(id, self.now_ms()).await?;
        if let Ok(retried) = &out {
            tracing::info!(job = %id, requeued = retried.requeued, "failed job retried");
            self.signal_work();
            if retried.ready {
                self.spawn_reduce(id.to_string());
            }
        }
        Ok(out)
    }

    /// Leases a batch, waiting up to `wait` for work to appear.
    pub async fn lease(
        &self,
        mut query: LeaseQuery,
        wait: Duration,
    ) -> StoreResult<Vec<LeasedTask>> {
        let began = Instant::now();
        let deadline = began + wait.min(MAX_LEASE_WAIT);
        loop {
            // Registered before looking, so a signal sent between the look
            // and the wait is not missed.
            let notified = self.work_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopped_since(&query.agent_id, began) {
                return Ok(Vec::new());
            }
            query.now_ms = self.now_ms();
            let asked = Instant::now();
            let granted = self.store.lease(query.clone()).await?;
            if !granted.is_empty() {
                self.histograms
                    .lease_latency
                    .observe(asked.elapsed().as_secs_f64());
            }
            if !granted.is_empty() || Instant::now() >= deadline {
                tracing::debug!(agent = %query.agent_id, tasks = granted.len(), "lease granted");
                self.counters
                    .tasks_leased
                    .fetch_add(granted.len() as u64, Ordering::Relaxed);
                return Ok(granted);
            }
            let repoll = Duration::from_millis(self.repoll_ms.load(Ordering::Relaxed));
            let _ = tokio::time::timeout_at(deadline.min(Instant::now() + repoll), notified).await;
        }
    }

    /// Records a batch of results and reduces the jobs they finish.
    pub async fn complete(
        self: &Arc<Self>,
        agent_id: &str,
        mut reports: Vec<TaskReport>,
    ) -> StoreResult<CompleteOutcome> {
        // Decode outputs here, off the store's lock: one that does not decode
        // is the agent's failure, not a result.
        let me = self.clone();
        reports = tokio::task::spawn_blocking(move || {
            for r in &mut reports {
                // The one clamp of an agent's CPU figure: the stores take it as is.
                r.cpu_ms = r.cpu_ms.min(MAX_REPORTED_CPU_MS);
                if let TaskOutcome::Done(bytes) = &r.outcome {
                    match TaskOutput::decode(bytes) {
                        Ok(output) => me
                            .histograms
                            .task_cpu
                            .of(output.kind())
                            .observe(r.cpu_ms as f64 / 1000.0),
                        Err(e) => {
                            r.outcome = TaskOutcome::Failed(format!(
                                "the agent returned an output that does not decode: {e}"
                            ))
                        }
                    }
                }
            }
            reports
        })
        .await
        .map_err(|e| crate::store::StoreError::Worker(e.to_string()))?;
        let outcome = self
            .store
            .complete(agent_id, reports, self.now_ms())
            .await?;
        tracing::debug!(agent = %agent_id, accepted = outcome.accepted, stale = outcome.stale, ready = outcome.ready.len(), "results recorded");
        let c = &self.counters;
        c.results_accepted
            .fetch_add(outcome.accepted as u64, Ordering::Relaxed);
        self.throughput.add(self.now_ms(), outcome.accepted as u64);
        c.results_stale
            .fetch_add(outcome.stale as u64, Ordering::Relaxed);
        c.tasks_retried
            .fetch_add(outcome.requeued as u64, Ordering::Relaxed);
        if outcome.requeued > 0 {
            self.signal_work();
        }
        for id in &outcome.ready {
            self.spawn_reduce(id.clone());
        }
        Ok(outcome)
    }

    /// Reduces a job's outputs into its result, in the background.
    pub fn spawn_reduce(self: &Arc<Self>, id: String) {
        if !self
            .reducing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone())
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = me.reduce(&id).await;
            match result {
                Ok(()) => {
                    me.counters.jobs_reduced.fetch_add(1, Ordering::Relaxed);
                    if let Ok(Some(job)) = me.store.job(&id).await {
                        if let (Some(h), Some(end)) = (
                            me.histograms.job_duration.named(&job.kernel),
                            job.finished_ms,
                        ) {
                            h.observe(end.saturating_sub(job.created_ms) as f64 / 1000.0);
                        }
                    }
                    tracing::info!(job = %id, ms = started.elapsed().as_millis() as u64, "job reduced");
                }
                Err(e) => match me.store.job(&id).await {
                    // Another coordinator sharing the store reduced it first.
                    Ok(Some(s)) if s.state.is_finished() => {
                        tracing::debug!(job = %id, "job already finished elsewhere: {e}")
                    }
                    _ => tracing::error!(job = %id, "reduce failed in the store: {e}"),
                },
            }
            me.reducing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    async fn reduce(&self, id: &str) -> StoreResult<()> {
        let (plan, outputs) = self.store.job_outputs(id).await?;
        let result = match ReducePlan::decode(&plan) {
            Ok(plan) => self.reduce_outputs(plan, outputs).await?,
            Err(e) => Err(e.to_string()),
        };
        self.store.finish_job(id, result, self.now_ms()).await
    }

    /// Reduces decoded outputs on a blocking thread (a big merge, or a
    /// module's reduce tree, is CPU work): `Err` is why the job failed.
    async fn reduce_outputs(
        &self,
        plan: ReducePlan,
        outputs: Vec<Vec<u8>>,
    ) -> StoreResult<Result<Vec<u8>, String>> {
        // A module's own reduce needs its bytes, which the store keeps while
        // the job is unfinished.
        let module = match &plan {
            ReducePlan::Wasm(r) if r.kind == ReduceKind::Module => {
                let id = r.module.to_string();
                match self.store.module_bytes(&id).await? {
                    Some(bytes) => Some(bytes),
                    None => return Ok(Err(format!("module {id} is no longer stored"))),
                }
            }
            _ => None,
        };
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let outputs = outputs
                .iter()
                .map(|o| TaskOutput::decode(o))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let result = match &plan {
                ReducePlan::Wasm(r) => r.reduce(outputs, module.as_deref(), &reduce_limits()),
                plan => plan.reduce(outputs),
            };
            result.map(|r| r.encode()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| crate::store::StoreError::Worker(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
