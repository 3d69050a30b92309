//! The coordinator's state: jobs, tasks, leases, results, agents and tokens,
//! behind one trait so that the embedded store and a shared one can serve
//! the same coordinator. Every method is one atomic step, and the hot ones
//! (lease, complete) take whole batches, so a store pays one round trip or
//! one commit per batch, never one per task.

/// The `impl Store` of a store split by operation: every method delegates
/// to the function of the same name in the store's `agents`, `jobs`,
/// `leasing`, `modules` or `results` module, written once for both stores. Methods
/// only one store has (beyond the trait's defaults) go in the braces.
macro_rules! store_by_operation {
    ($store:ty { $($extra:tt)* }) => {
        #[async_trait::async_trait]
        impl Store for $store {
            async fn create_token(
                &self,
                id: &str,
                secret_hash: [u8; 32],
                role: TokenRole,
                now_ms: u64,
            ) -> StoreResult<()> {
                agents::create_token(self, id, secret_hash, role, now_ms).await
            }

            async fn token_by_hash(&self, secret_hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
                agents::token_by_hash(self, secret_hash).await
            }

            async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
                agents::list_tokens(self).await
            }

            async fn revoke_token(&self, id: &str) -> StoreResult<bool> {
                agents::revoke_token(self, id).await
            }

            async fn enrol_agent(
                &self,
                token_hash: [u8; 32],
                agent: NewAgent,
            ) -> StoreResult<Result<(), EnrolRefusal>> {
                agents::enrol_agent(self, token_hash, agent).await
            }

            async fn agent_auth(&self, id: &str) -> StoreResult<Option<AgentAuth>> {
                agents::agent_auth(self, id).await
            }

            async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
                agents::list_agents(self).await
            }

            async fn drain_agent(&self, id: &str) -> StoreResult<bool> {
                agents::drain_agent(self, id).await
            }

            async fn remove_agent(&self, id: &str, _now_ms: u64) -> StoreResult<bool> {
                agents::remove_agent(self, id, _now_ms).await
            }

            async fn begin_job(&self, job: NewJob) -> StoreResult<()> {
                jobs::begin_job(self, job).await
            }

            async fn add_tasks(&self, job_id: &str, tasks: Vec<NewTask>) -> StoreResult<()> {
                jobs::add_tasks(self, job_id, tasks).await
            }

            async fn seal_job(&self, job_id: &str) -> StoreResult<(u64, bool)> {
                jobs::seal_job(self, job_id).await
            }

            async fn abort_job(&self, job_id: &str) -> StoreResult<()> {
                jobs::abort_job(self, job_id).await
            }

            async fn abort_unsealed_jobs(&self) -> StoreResult<u64> {
                jobs::abort_unsealed_jobs(self).await
            }

            async fn job(&self, id: &str) -> StoreResult<Option<JobStatus>> {
                jobs::job(self, id).await
            }

            async fn list_jobs(&self, limit: u32) -> StoreResult<Vec<JobStatus>> {
                jobs::list_jobs(self, limit).await
            }

            async fn cancel_job(&self, id: &str, now_ms: u64) -> StoreResult<Option<JobStatus>> {
                jobs::cancel_job(self, id, now_ms).await
            }

            async fn job_outputs(&self, id: &str) -> StoreResult<(Vec<u8>, Vec<Vec<u8>>)> {
                jobs::job_outputs(self, id).await
            }

            async fn finish_job(
                &self,
                id: &str,
                result: Result<Vec<u8>, String>,
                now_ms: u64,
            ) -> StoreResult<()> {
                jobs::finish_job(self, id, result, now_ms).await
            }

            async fn job_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
                jobs::job_result(self, id).await
            }

            async fn jobs_to_reduce(&self) -> StoreResult<Vec<String>> {
                jobs::jobs_to_reduce(self).await
            }

            async fn lease(&self, q: LeaseQuery) -> StoreResult<Vec<LeasedTask>> {
                leasing::lease(self, q).await
            }

            async fn complete(
                &self,
                agent_id: &str,
                reports: Vec<TaskReport>,
                now_ms: u64,
            ) -> StoreResult<CompleteOutcome> {
                results::complete(self, agent_id, reports, now_ms).await
            }

            async fn heartbeat(
                &self,
                agent_id: &str,
                running: Vec<TaskRef>,
                now_ms: u64,
                ttl_ms: u64,
            ) -> StoreResult<HeartbeatAck> {
                leasing::heartbeat(self, agent_id, running, now_ms, ttl_ms).await
            }

            async fn release(&self, agent_id: &str, tasks: Vec<TaskRef>) -> StoreResult<u32> {
                leasing::release(self, agent_id, tasks).await
            }

            async fn expire_leases(&self, now_ms: u64) -> StoreResult<u32> {
                leasing::expire_leases(self, now_ms).await
            }

            async fn purge_finished_inputs(&self, now_ms: u64) -> StoreResult<u64> {
                jobs::purge_finished_inputs(self, now_ms).await
            }

            async fn retry_failed_tasks(
                &self,
                id: &str,
                now_ms: u64,
            ) -> StoreResult<Result<Retried, RetryRefusal>> {
                jobs::retry_failed_tasks(self, id, now_ms).await
            }

            async fn renew_all_leases(&self, now_ms: u64, ttl_ms: u64) -> StoreResult<u64> {
                leasing::renew_all_leases(self, now_ms, ttl_ms).await
            }

            async fn stats(&self) -> StoreResult<Stats> {
                jobs::stats(self).await
            }

            async fn put_module(&self, module: NewModule) -> StoreResult<bool> {
                modules::put_module(self, module).await
            }

            async fn module_bytes(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
                modules::module_bytes(self, id).await
            }

            async fn module(&self, id: &str) -> StoreResult<Option<ModuleRecord>> {
                modules::module(self, id).await
            }

            async fn list_modules(&self) -> StoreResult<Vec<ModuleRecord>> {
                modules::list_modules(self).await
            }

            async fn delete_module(&self, id: &str) -> StoreResult<ModuleDeletion> {
                modules::delete_module(self, id).await
            }

            async fn job_backlog(&self, id: &str, now_ms: u64) -> StoreResult<Option<Backlog>> {
                jobs::job_backlog(self, id, now_ms).await
            }

            async fn job_tasks(&self, id: &str, limit: usize) -> StoreResult<Option<Vec<TaskReplica>>> {
                let candidates = jobs::job_tasks(self, id, limit).await?;
                Ok(candidates.map(|c| task_list::pick(c, limit)))
            }

            async fn expire_jobs(&self, now_ms: u64) -> StoreResult<Vec<String>> {
                expiry::expire_jobs(self, now_ms).await
            }

            async fn purge_expired_results(&self, now_ms: u64) -> StoreResult<u64> {
                expiry::purge_expired_results(self, now_ms).await
            }

            async fn create_workflow(&self, wf: NewWorkflow) -> StoreResult<()> {
                workflows::create_workflow(self, wf).await
            }

            async fn workflow(&self, id: &str) -> StoreResult<Option<WorkflowRecord>> {
                workflows::workflow(self, id).await
            }

            async fn open_workflows(&self) -> StoreResult<Vec<String>> {
                workflows::open_workflows(self).await
            }

            async fn finish_workflow(
                &self,
                id: &str,
                state: WorkflowState,
                now_ms: u64,
            ) -> StoreResult<bool> {
                workflows::finish_workflow(self, id, state, now_ms).await
            }

            async fn start_waiting_job(
                &self,
                id: &str,
                reduce_plan: Vec<u8>,
                tasks: Vec<NewTask>,
            ) -> StoreResult<bool> {
                workflows::start_waiting_job(self, id, reduce_plan, tasks).await
            }

            async fn create_schedule(&self, s: NewSchedule) -> StoreResult<()> {
                schedules::create_schedule(self, s).await
            }

            async fn list_schedules(&self) -> StoreResult<Vec<ScheduleRecord>> {
                schedules::list_schedules(self).await
            }

            async fn pause_schedule(&self, id: &str, paused: bool, next_run_ms: Option<u64>) -> StoreResult<bool> {
                schedules::pause_schedule(self, id, paused, next_run_ms).await
            }

            async fn delete_schedule(&self, id: &str) -> StoreResult<bool> {
                schedules::delete_schedule(self, id).await
            }

            async fn claim_tick(&self, tick: ScheduleTick, job: NewJob) -> StoreResult<bool> {
                schedules::claim_tick(self, tick, job).await
            }

            async fn create_fired_job(&self, schedule: &str, job: NewJob) -> StoreResult<bool> {
                schedules::create_fired_job(self, schedule, job).await
            }

            $($extra)*
        }
    };
}

pub mod blobs;
#[cfg(test)]
pub mod conformance;
pub mod redis;
pub mod rules;
mod schedule;
pub mod sqlite;
pub mod task_list;
pub mod validation;
mod workflow;

use std::collections::BTreeMap;

use async_trait::async_trait;
use musketeer_tasks::protocol::{Capacity, HeartbeatAck, LeasedTask, TaskRef, TaskReport};
use musketeer_tasks::{Cost, JobOptions};
use serde::{Deserialize, Serialize};

pub use self::redis::RedisStore;
pub use rules::retry_backoff_ms;
pub use schedule::{NewSchedule, ScheduleRecord, ScheduleTick, LAST_JOBS};
pub use sqlite::SqliteStore;
pub use task_list::{TaskReplica, TaskState, TASK_ROWS};
pub use validation::Trust;
pub use workflow::{NewWorkflow, WorkflowRecord, WorkflowState, WorkflowStep};

/// A failure of the store itself (not of the caller's request).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database (SQLite or Redis) failed or could not be reached. The
    /// driver's error is kept as an opaque source, for the log: its type
    /// stays inside the adapter, and its text never reaches an API caller.
    #[error("{store} error: {source}")]
    Database {
        /// Which database: `SQLite` or `Redis`.
        store: &'static str,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database is out of room: a full disk under SQLite, or Redis at
    /// its `maxmemory`. The adapter decides; a write succeeds again once
    /// space is freed (see [`crate::space`]).
    #[error("{store} is out of space: {source}")]
    Full {
        /// Which database: `SQLite` or `Redis`.
        store: &'static str,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored bytes no longer decode: a bug or a damaged data directory.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A task input file could not be written or read.
    #[error("task input file: {0}")]
    Io(#[from] std::io::Error),
    /// The blocking worker that runs database calls died.
    #[error("store worker failed: {0}")]
    Worker(String),
    /// The store cannot be opened as configured.
    #[error("{0}")]
    Config(String),
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A job's lifecycle, as the API reports it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted; no task has been leased yet.
    Queued,
    /// At least one task has been leased.
    Running,
    /// Every task succeeded and the result is ready.
    Succeeded,
    /// A task ran out of attempts, or the reduce failed.
    Failed,
    /// Cancelled by a submitter.
    Cancelled,
    /// Its `expires` time came while tasks of it had never been leased.
    Expired,
    /// A workflow step's job, waiting for the steps it needs to succeed:
    /// it has no tasks until then.
    Waiting,
}

impl JobState {
    /// The name the API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
            JobState::Waiting => "waiting",
        }
    }

    /// Parses [`JobState::as_str`].
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "expired" => JobState::Expired,
            "waiting" => JobState::Waiting,
            _ => return None,
        })
    }

    /// Whether the job can still change.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Expired
        )
    }
}

/// A job about to be stored; its tasks follow with [`Store::add_tasks`].
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The job's id.
    pub id: String,
    /// The kernel's name.
    pub kernel: String,
    /// The options it was submitted with.
    pub options: JobOptions,
    /// The encoded [`musketeer_tasks::ReducePlan`].
    pub reduce_plan: Vec<u8>,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: u64,
    /// The WebAssembly module it runs (`sha256:<hex>`), if any: the store
    /// keeps the module while the job is unfinished.
    pub module: Option<String>,
    /// When it may start, expires, and how long its result is kept.
    pub timing: JobTiming,
}

/// A WebAssembly module about to be stored, validated already.
#[derive(Clone, Debug)]
pub struct NewModule {
    /// `sha256:<hex of the bytes>`.
    pub id: String,
    /// The module's bytes.
    pub bytes: Vec<u8>,
    /// Whether it exports `musketeer_reduce`.
    pub has_reduce: bool,
    /// When it was uploaded (ms since the Unix epoch).
    pub created_ms: u64,
}

/// A stored module as the API lists it (never its bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ModuleRecord {
    /// `sha256:<hex of the bytes>`.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was first uploaded (ms since the Unix epoch).
    pub created_ms: u64,
    /// Whether it exports `musketeer_reduce` (so `"reduce":"module"` works).
    pub has_reduce: bool,
    /// Whether an unfinished job uses it (then it cannot be deleted).
    pub in_use: bool,
}

/// What [`Store::delete_module`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleDeletion {
    /// The module is gone.
    Deleted,
    /// No module has this id.
    NotFound,
    /// Unfinished jobs use it (some of their ids); nothing changed.
    InUse(Vec<String>),
}

/// A job's times, resolved from its options at submission (see
/// [`crate::timing`]) into milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobTiming {
    /// No task is leased before this (0: at once). The one home of the
    /// rule is each task's not-before time, which retries' backoff uses too.
    pub not_before_ms: u64,
    /// Tasks never leased by then are not leased at all, and the job ends
    /// [`JobState::Expired`].
    pub expires_ms: Option<u64>,
    /// The result is deleted this long after the job succeeded.
    pub result_ttl_ms: Option<u64>,
}

/// A task about to be stored.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// The encoded [`musketeer_tasks::TaskInput`].
    pub input: Vec<u8>,
    /// The planner's estimate.
    pub cost: Cost,
}

impl NewTask {
    /// A job's plan as the store takes it: the encoded reduce plan, and the
    /// tasks (whether the job was submitted, is a workflow's step or a tick).
    pub fn from_plan(plan: musketeer_tasks::kernel::JobPlan) -> (Vec<u8>, Vec<NewTask>) {
        let tasks = plan
            .tasks
            .into_iter()
            .map(|(input, cost)| NewTask {
                input: input.encode(),
                cost,
            })
            .collect();
        (plan.reduce.encode(), tasks)
    }
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct JobStatus {
    /// The job's id.
    pub id: String,
    /// The kernel's name.
    pub kernel: String,
    /// Its lifecycle state.
    pub state: JobState,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: u8,
    /// Task counts.
    pub progress: Progress,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: u64,
    /// When its first task was leased.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// No task of it is leased before this (`countdown_s`, `not_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// When it expires if tasks of it were never leased (`expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// When its result is deleted (`result_ttl_s` after it succeeded); from
    /// then on `GET .../result` answers `410 result_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_expires_ms: Option<u64>,
    /// The workflow whose step it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The schedule whose tick made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

impl JobStatus {
    /// Whether the job's result was, or is due to be, deleted by `now_ms`.
    pub fn result_expired(&self, now_ms: u64) -> bool {
        self.result_expires_ms.is_some_and(|at| at <= now_ms)
    }
}

/// How far a job has come.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Progress {
    /// Tasks in the job.
    pub total: u64,
    /// Tasks whose result was accepted.
    pub done: u64,
    /// Tasks that ran out of attempts.
    pub failed: u64,
}

/// What the operator allowed an agent to do.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Leases work.
    Active,
    /// Finishes what it holds, leases nothing new.
    Draining,
    /// Its credential no longer works.
    Removed,
}

impl AgentState {
    /// The name the API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Draining => "draining",
            AgentState::Removed => "removed",
        }
    }

    /// Parses [`AgentState::as_str`].
    pub fn parse(s: &str) -> Option<AgentState> {
        Some(match s {
            "active" => AgentState::Active,
            "draining" => AgentState::Draining,
            "removed" => AgentState::Removed,
            _ => return None,
        })
    }
}

/// An agent about to be enrolled.
#[derive(Clone, Debug)]
pub struct NewAgent {
    /// Its id.
    pub id: String,
    /// SHA-256 of its credential's secret.
    pub secret_hash: [u8; 32],
    /// What it offers.
    pub capacity: Capacity,
    /// When (ms since the Unix epoch).
    pub now_ms: u64,
}

/// An agent as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AgentRecord {
    /// Its id.
    pub id: String,
    /// What it offers: `cpus`, `memory_bytes`, `arch`, `os`, `hostname`,
    /// `version`, `queues`, `labels`.
    #[schema(value_type = Object)]
    pub capacity: Capacity,
    /// What it may do.
    pub state: AgentState,
    /// The id of the join token it enrolled with.
    pub token_id: String,
    /// When it enrolled.
    pub enrolled_ms: u64,
    /// When it last called the coordinator.
    pub last_seen_ms: u64,
    /// Tasks it holds now.
    pub leased: u64,
    /// Credit: tasks whose results it returned and that were accepted (for
    /// a replicated job, only results that agreed with the majority).
    pub tasks_done: u64,
    /// Credit: CPU time of those tasks.
    pub cpu_ms: u64,
    /// Replicated results that agreed with the accepted answer.
    pub results_valid: u64,
    /// Replicated results the majority outvoted.
    pub results_invalid: u64,
    /// What validation makes of the agent (see [`validation`]).
    pub trust: Trust,
}

/// What authenticating an agent needs.
#[derive(Clone, Debug)]
pub struct AgentAuth {
    /// SHA-256 of its credential's secret.
    pub secret_hash: [u8; 32],
    /// What it may do.
    pub state: AgentState,
}

/// What a token opens.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// A join token: enrols agents, and nothing else.
    #[default]
    Join,
    /// A viewer token: reads everything the admin can, changes nothing,
    /// enrols no agent.
    Viewer,
}

impl TokenRole {
    /// The name the API and the stores use.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Join => "join",
            TokenRole::Viewer => "viewer",
        }
    }

    /// Parses [`TokenRole::as_str`]; a token stored before roles existed
    /// (no role) is a join token.
    pub fn parse(s: Option<&str>) -> Option<TokenRole> {
        match s {
            None | Some("join") => Some(TokenRole::Join),
            Some("viewer") => Some(TokenRole::Viewer),
            Some(_) => None,
        }
    }
}

/// A token as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TokenRecord {
    /// The token's id.
    pub id: String,
    /// What it opens.
    pub role: TokenRole,
    /// When it was made.
    pub created_ms: u64,
    /// Whether it still enrols agents.
    pub revoked: bool,
    /// How many agents enrolled with it.
    pub uses: u64,
}

/// Why an enrolment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrolRefusal {
    /// No token has this secret.
    UnknownToken,
    /// The token was revoked.
    RevokedToken,
    /// The token is not a join token (a viewer token).
    NotAJoinToken,
}

/// One agent's request for work, with everything matching needs.
#[derive(Clone, Debug)]
pub struct LeaseQuery {
    /// Who asks.
    pub agent_id: String,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Labels it carries.
    pub labels: BTreeMap<String, String>,
    /// Memory a single task may need at most.
    pub mem_bytes: u64,
    /// Work wanted in total.
    pub max_work: u64,
    /// Tasks wanted at most.
    pub max_tasks: u32,
    /// Input bytes in one batch at most (the first task is always granted).
    pub max_bytes: u64,
    /// Now (ms since the Unix epoch).
    pub now_ms: u64,
    /// How long the leases last unless renewed.
    pub ttl_ms: u64,
    /// The agent's current capacity, recorded with the lease (limits can
    /// change when an agent restarts).
    pub capacity: Capacity,
}

/// What a batch of results did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompleteOutcome {
    /// Reports recorded.
    pub accepted: u32,
    /// Reports for leases no longer held.
    pub stale: u32,
    /// Jobs whose every task is now done: ready to reduce.
    pub ready: Vec<String>,
    /// Tasks put back in the queue to retry.
    pub requeued: u32,
}

/// What [`Store::retry_failed_tasks`] did to a failed job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retried {
    /// Replicas queued again (every replica of each task not done).
    pub requeued: u64,
    /// Whether every task was done already (its reduce had failed): the
    /// job is ready to reduce again.
    pub ready: bool,
}

/// Why [`Store::retry_failed_tasks`] refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryRefusal {
    /// No sealed job has this id.
    NotFound,
    /// The job is not failed (it is in this state).
    NotFailed(JobState),
    /// The job is a workflow's step: the workflow failed with it and does
    /// not come back.
    WorkflowStep,
    /// Its inputs are no longer kept (past [`rules::FAILED_JOB_RETENTION_MS`],
    /// or never all stored).
    InputsGone,
    /// Its `expires` time has passed.
    Expired,
    /// The WebAssembly module it runs was deleted (this id).
    ModuleGone(String),
}

impl RetryRefusal {
    /// What the API tells the admin, with what to do instead.
    pub fn message(&self, id: &str) -> String {
        match self {
            RetryRefusal::NotFound => format!("no job {id}"),
            RetryRefusal::NotFailed(state) => format!(
                "job {id} is {}: only a failed job's tasks can be retried",
                state.as_str()
            ),
            RetryRefusal::WorkflowStep => format!(
                "job {id} is a step of a workflow, which failed with it: submit the workflow again"
            ),
            RetryRefusal::InputsGone => format!(
                "the inputs of job {id} are no longer kept (a failed job keeps them for {} h): \
                 resubmit the job",
                rules::FAILED_JOB_RETENTION_MS / 3_600_000
            ),
            RetryRefusal::Expired => {
                format!("job {id} is past its expires time: resubmit the job with a later one")
            }
            RetryRefusal::ModuleGone(module) => format!(
                "job {id} runs module {module}, which was deleted: upload the same module again \
                 (its id stays the same), then retry"
            ),
        }
    }
}

/// Counts for metrics and the dashboard.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Jobs per state.
    pub jobs: BTreeMap<String, u64>,
    /// Tasks waiting to be leased.
    pub tasks_pending: u64,
    /// Tasks leased now.
    pub tasks_leased: u64,
    /// Agents per state.
    pub agents: BTreeMap<String, u64>,
}

/// How many of a job's waiting tasks [`Store::job_backlog`] reads the memory
/// estimates of: enough for any job a person looks at, bounded so that
/// asking about a million-task job stays one cheap read.
pub const BACKLOG_SCAN: u64 = 1000;

/// What a job has waiting, for explaining why it waits
/// ([`crate::scheduler::why`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: u8,
    /// Every label an agent must carry, the reserved `musketeer.agent` and
    /// `musketeer.arch` included.
    pub labels: BTreeMap<String, String>,
    /// Tasks (replicas) that could be leased now.
    pub leasable: u64,
    /// Tasks waiting out a retry backoff.
    pub retrying: u64,
    /// When the first of those may be leased again.
    pub retry_at_ms: Option<u64>,
    /// Tasks leased now.
    pub leased: u64,
    /// The smallest and largest memory estimate of the first
    /// [`BACKLOG_SCAN`] waiting tasks (0 when none waits).
    pub mem_min: u64,
    /// See `mem_min`.
    pub mem_max: u64,
    /// Tasks of other jobs in its queue, of a higher priority, that could
    /// be leased now: they go first.
    pub ahead: u64,
}

/// The coordinator's state. Implementations must make each method atomic:
/// a crash between two calls may lose neither an accepted job nor an
/// accepted result, and may count nothing twice.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a token's hash and what it opens.
    async fn create_token(
        &self,
        id: &str,
        secret_hash: [u8; 32],
        role: TokenRole,
        now_ms: u64,
    ) -> StoreResult<()>;
    /// The token whose secret has this hash, revoked or not.
    async fn token_by_hash(&self, secret_hash: [u8; 32]) -> StoreResult<Option<TokenRecord>>;
    /// Lists tokens, newest last.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Revokes a token; false if there is none with that id.
    async fn revoke_token(&self, id: &str) -> StoreResult<bool>;

    /// Trades a valid join token for a new agent, atomically.
    async fn enrol_agent(
        &self,
        token_hash: [u8; 32],
        agent: NewAgent,
    ) -> StoreResult<Result<(), EnrolRefusal>>;
    /// What authenticating an agent needs.
    async fn agent_auth(&self, id: &str) -> StoreResult<Option<AgentAuth>>;
    /// Lists agents.
    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>>;
    /// Marks an agent draining; false if unknown or removed.
    async fn drain_agent(&self, id: &str) -> StoreResult<bool>;
    /// Removes an agent: its credential stops working and its leases return
    /// to the queue. False if unknown.
    async fn remove_agent(&self, id: &str, now_ms: u64) -> StoreResult<bool>;

    /// Stores a job with no tasks yet, invisible to the API until sealed.
    async fn begin_job(&self, job: NewJob) -> StoreResult<()>;
    /// Appends tasks to an unsealed job; they can be leased at once.
    async fn add_tasks(&self, job_id: &str, tasks: Vec<NewTask>) -> StoreResult<()>;
    /// Declares the job's task list complete and shows it to the API;
    /// returns the number of tasks, and whether they are all done already
    /// (agents start on a streamed job's first chunks before its upload ends).
    async fn seal_job(&self, job_id: &str) -> StoreResult<(u64, bool)>;
    /// Forgets an unsealed job (its upload failed) and its tasks.
    async fn abort_job(&self, job_id: &str) -> StoreResult<()>;
    /// Removes every unsealed job: after a crash, uploads in flight are
    /// gone and their submitters never got an id.
    async fn abort_unsealed_jobs(&self) -> StoreResult<u64>;

    /// One job's status.
    async fn job(&self, id: &str) -> StoreResult<Option<JobStatus>>;
    /// The newest jobs, up to `limit`.
    async fn list_jobs(&self, limit: u32) -> StoreResult<Vec<JobStatus>>;
    /// Cancels a job that has not finished; returns its status after. A
    /// failed job stays failed, but the inputs and outputs it kept for a
    /// retry are deleted at once (an operator out of space cancels).
    async fn cancel_job(&self, id: &str, now_ms: u64) -> StoreResult<Option<JobStatus>>;
    /// The reduce plan and every task's output, in task order.
    async fn job_outputs(&self, id: &str) -> StoreResult<(Vec<u8>, Vec<Vec<u8>>)>;
    /// Records the reduced result (or why the reduce failed) and finishes the
    /// job. Idempotent, first call wins: with a shared store two coordinators
    /// may reduce the same job, and the later call must change nothing.
    async fn finish_job(
        &self,
        id: &str,
        result: Result<Vec<u8>, String>,
        now_ms: u64,
    ) -> StoreResult<()>;
    /// The encoded [`musketeer_tasks::JobResult`] of a succeeded job.
    async fn job_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Jobs whose tasks are all done but whose result was never stored
    /// (the coordinator died while reducing).
    async fn jobs_to_reduce(&self) -> StoreResult<Vec<String>>;

    /// Leases a batch of matching tasks, highest priority first. A job with
    /// `redundancy` N has N replicas of each task, and no agent ever gets
    /// two replicas of one task; first replicas go out before second ones.
    async fn lease(&self, query: LeaseQuery) -> StoreResult<Vec<LeasedTask>>;
    /// Records a batch of results; each is accepted once, from the lease
    /// holder. For a replicated job a result is a vote, judged by
    /// [`validation::judge`]: a task is done when a majority agrees (or a
    /// trusted agent's answer stands alone), and credit and trust follow.
    async fn complete(
        &self,
        agent_id: &str,
        reports: Vec<TaskReport>,
        now_ms: u64,
    ) -> StoreResult<CompleteOutcome>;
    /// Renews the agent's leases; reports those it no longer holds.
    async fn heartbeat(
        &self,
        agent_id: &str,
        running: Vec<TaskRef>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> StoreResult<HeartbeatAck>;
    /// Returns leased tasks to the queue without using up an attempt.
    async fn release(&self, agent_id: &str, tasks: Vec<TaskRef>) -> StoreResult<u32>;
    /// Returns expired leases to the queue; returns how many.
    async fn expire_leases(&self, now_ms: u64) -> StoreResult<u32>;
    /// Deletes the inputs (and outputs) of cancelled and expired jobs, and
    /// of failed ones once they are past [`rules::FAILED_JOB_RETENTION_MS`]
    /// by `now_ms` (a cancelled 1 GiB upload must not hold the disk forever);
    /// returns how many jobs.
    async fn purge_finished_inputs(&self, now_ms: u64) -> StoreResult<u64>;
    /// Retries a failed job (atomically for the job's own records): every replica of each task
    /// not done (failed, cancelled by the failure, or with votes the failure
    /// discarded) is queued again with its attempts reset; done tasks and
    /// their outputs stay; the job's error and failure count are cleared and
    /// it is `running` again (`queued` if it never started), to finish as
    /// any job does. Refused, changing nothing, unless the job is failed,
    /// not a workflow's step, not past `expires`, its module still stored,
    /// and its inputs still kept (see [`Store::purge_finished_inputs`]).
    async fn retry_failed_tasks(
        &self,
        id: &str,
        now_ms: u64,
    ) -> StoreResult<Result<Retried, RetryRefusal>>;

    /// Gives every lease at least `ttl_ms` from now: after a restart, so
    /// that the coordinator's own downtime costs no task an attempt while
    /// the agents reconnect and renew.
    async fn renew_all_leases(&self, now_ms: u64, ttl_ms: u64) -> StoreResult<u64>;

    /// Counts for metrics and the dashboard.
    async fn stats(&self) -> StoreResult<Stats>;

    /// Stores a module under its id; true if it is new, false if these
    /// bytes were stored already (content-addressed: the id is their digest).
    async fn put_module(&self, module: NewModule) -> StoreResult<bool>;
    /// A module's bytes.
    async fn module_bytes(&self, id: &str) -> StoreResult<Option<Vec<u8>>>;
    /// A module's record.
    async fn module(&self, id: &str) -> StoreResult<Option<ModuleRecord>>;
    /// Every module, oldest first.
    async fn list_modules(&self) -> StoreResult<Vec<ModuleRecord>>;
    /// Forgets a module, atomically refused while an unfinished job (one
    /// being submitted included) uses it.
    async fn delete_module(&self, id: &str) -> StoreResult<ModuleDeletion>;
    /// What job `id` has waiting and what stands before it in its queue,
    /// as of `now_ms`; `None` for an unknown or unsealed job.
    async fn job_backlog(&self, id: &str, now_ms: u64) -> StoreResult<Option<Backlog>>;
    /// Up to `limit` replicas of job `id`'s tasks, as [`task_list::pick`]
    /// orders them, from bounded candidates: its failed replica, up to
    /// `limit` leased and `limit` pending ones (which of many is each
    /// store's own cheapest choice), and every replica of its first `limit`
    /// tasks. `None` for an unknown or unsealed job.
    async fn job_tasks(&self, id: &str, limit: usize) -> StoreResult<Option<Vec<TaskReplica>>>;

    /// Ends, as [`JobState::Expired`], every unfinished job past its
    /// `expires` time that still has a task never leased (its other tasks
    /// are cancelled and its inputs deleted); returns their ids.
    async fn expire_jobs(&self, now_ms: u64) -> StoreResult<Vec<String>>;
    /// Deletes the results whose TTL ran out by `now_ms`; returns how many.
    async fn purge_expired_results(&self, now_ms: u64) -> StoreResult<u64>;

    /// Stores a workflow and every step's job, in state `waiting` and
    /// visible at once, in one atomic step.
    async fn create_workflow(&self, wf: NewWorkflow) -> StoreResult<()>;
    /// A stored workflow.
    async fn workflow(&self, id: &str) -> StoreResult<Option<WorkflowRecord>>;
    /// The ids of workflows still running, oldest first.
    async fn open_workflows(&self) -> StoreResult<Vec<String>>;
    /// Finishes a running workflow; the first call wins (true).
    async fn finish_workflow(
        &self,
        id: &str,
        state: WorkflowState,
        now_ms: u64,
    ) -> StoreResult<bool>;
    /// Makes a waiting job `queued` with its reduce plan and tasks, in one
    /// atomic step that only a waiting job passes: false if it was not
    /// (released already, failed or cancelled).
    async fn start_waiting_job(
        &self,
        id: &str,
        reduce_plan: Vec<u8>,
        tasks: Vec<NewTask>,
    ) -> StoreResult<bool>;

    /// Stores a schedule.
    async fn create_schedule(&self, s: NewSchedule) -> StoreResult<()>;
    /// Every schedule, oldest first.
    async fn list_schedules(&self) -> StoreResult<Vec<ScheduleRecord>>;
    /// Pauses or resumes a schedule, moving its next tick if one is given
    /// and later than the stored one (a pause keeps it, and a resume never
    /// moves back over a tick claimed meanwhile); false if unknown.
    async fn pause_schedule(
        &self,
        id: &str,
        paused: bool,
        next_run_ms: Option<u64>,
    ) -> StoreResult<bool>;
    /// Deletes a schedule; false if unknown.
    async fn delete_schedule(&self, id: &str) -> StoreResult<bool>;
    /// Claims a tick, once however many coordinators try: only while the
    /// schedule is active and its next tick is still `tick.tick_ms` (then
    /// moved to `tick.next_run_ms`), recording `job`'s id as its newest and
    /// creating `job` in state `waiting` with the schedule's id (on Redis
    /// in a second step: see [`Store::create_fired_job`]). True if claimed.
    async fn claim_tick(&self, tick: ScheduleTick, job: NewJob) -> StoreResult<bool>;
    /// Creates a claimed tick's job, `waiting`, unless it exists (its
    /// claimer may have died between the claim and the creation); true if
    /// this call created it.
    async fn create_fired_job(&self, schedule: &str, job: NewJob) -> StoreResult<bool>;

    /// For a store that several coordinators share: a number that changes
    /// whenever tasks may have become leasable anywhere (including retries
    /// whose backoff ran out by `now_ms`), so that a coordinator wakes its
    /// long-polls for work another one added. `None` for a store only this
    /// process writes, whose changes the scheduler sees itself.
    async fn work_epoch(&self, _now_ms: u64) -> StoreResult<Option<u64>> {
        Ok(None)
    }
}
