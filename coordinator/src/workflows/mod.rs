//! Workflows: graphs of jobs (Celery's chain, group and chord), kept in the
//! store so that any coordinator, or one restarted after a SIGKILL, carries
//! them on.
//!
//! - [`graph`]: the body of `POST /v1/workflows`, checked whole before
//!   anything is stored (names, `after`, cycles, size, `result_of`);
//! - [`inputs`]: where a step's job takes another step's result, and how
//!   the value is fed in on the coordinator (no round trip through a client).
//!
//! Submission stores the workflow and every step's job at once, each job in
//! state `waiting` (one atomic store call). From then on the workflow moves
//! by [`advance`], which any coordinator may run at any time: a waiting
//! step whose needs all succeeded is planned from its body with their
//! results in place and released (`waiting` -> `queued`, with its tasks, in
//! one store call that only a waiting job passes, so two coordinators
//! cannot release it twice); a merge of word counts is reduced here at
//! once; a step one of whose needs failed, was cancelled or expired fails
//! with that reason. `advance` runs after a submission and, for every open
//! workflow, every [`SWEEP`].

pub mod graph;
pub mod inputs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use musketeer_tasks::job::parse_job;
use musketeer_tasks::JobResult;
use serde::Serialize;
use serde_json::Value;

pub use graph::{parse_workflow, PlannedStep, WorkflowError, MAX_STEPS};

use crate::modules::{self, ModuleError};
use crate::scheduler::Scheduler;
use crate::store::{
    JobState, JobStatus, NewJob, NewTask, NewWorkflow, Progress, StoreError, StoreResult,
    WorkflowRecord, WorkflowState, WorkflowStep,
};

/// How often every open workflow is advanced: the most a step waits, past
/// the end of what it needs, before it is released.
pub const SWEEP: Duration = Duration::from_millis(500);

/// Why a workflow was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The caller's workflow is wrong.
    #[error(transparent)]
    Invalid(#[from] WorkflowError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An accepted workflow: its id and each step's job id.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowSubmitted {
    /// The workflow's id.
    pub id: String,
    /// Each step's job id, by step name.
    pub steps: BTreeMap<String, String>,
}

/// One step as `GET /v1/workflows/{id}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StepView {
    /// Its job's id.
    pub job: String,
    /// Its job's state (`waiting` until what it needs has succeeded).
    pub state: JobState,
    /// The steps it needs: its `after` and those whose results it takes.
    pub needs: Vec<String>,
    /// Its job's task counts.
    pub progress: Progress,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A workflow as `GET /v1/workflows/{id}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowView {
    /// Its id.
    pub id: String,
    /// `running` until every step has finished.
    pub state: WorkflowState,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: u64,
    /// When its last step finished.
    pub finished_ms: Option<u64>,
    /// Every step, by name.
    pub steps: BTreeMap<String, StepView>,
}

/// Submits a workflow: checks it whole, stores it with every step's job
/// waiting, and releases the steps that need nothing.
pub async fn submit(
    scheduler: &Arc<Scheduler>,
    body: &[u8],
) -> Result<WorkflowSubmitted, SubmitError> {
    let steps = parse_workflow(body)?;
    let now = scheduler.now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let mut stored = Vec::with_capacity(steps.len());
    let mut jobs = Vec::with_capacity(steps.len());
    for s in &steps {
        if let Some(module) = &s.module {
            modules::check(scheduler.store.as_ref(), module)
                .await
                .map_err(|e| match e {
                    ModuleError::Store(e) => SubmitError::Store(e),
                    e => SubmitError::Invalid(WorkflowError::Step {
                        step: s.name.clone(),
                        message: e.to_string(),
                    }),
                })?;
        }
    }
    for s in steps {
        let timing =
            crate::timing::job_timing(&s.options, now).map_err(|e| WorkflowError::Step {
                step: s.name.clone(),
                message: e.to_string(),
            })?;
        let mut options = s.options;
        options.labels = options.required_labels();
        let job = uuid::Uuid::now_v7().to_string();
        jobs.push(NewJob {
            id: job.clone(),
            kernel: s.kernel,
            options,
            // Planned when released: its inputs may be other steps' results.
            reduce_plan: Vec::new(),
            created_ms: now,
            // In use from now: a waiting step keeps its module.
            module: s.module.map(|m| m.id),
            timing,
        });
        stored.push(WorkflowStep {
            name: s.name,
            job,
            needs: s.needs,
            body: Value::Object(s.body),
        });
    }
    let submitted = WorkflowSubmitted {
        id: id.clone(),
        steps: stored
            .iter()
            .map(|s| (s.name.clone(), s.job.clone()))
            .collect(),
    };
    scheduler
        .store
        .create_workflow(NewWorkflow {
            id: id.clone(),
            created_ms: now,
            steps: stored,
            jobs,
        })
        .await?;
    tracing::info!(workflow = %id, steps = submitted.steps.len(), "workflow accepted");
    // Accepted: a failure from here on is the sweep's to retry.
    if let Err(e) = advance(scheduler, &id).await {
        tracing::warn!(workflow = %id, "cannot start the workflow yet: {e}");
    }
    Ok(submitted)
}

/// Every step's state.
pub async fn status(scheduler: &Scheduler, id: &str) -> StoreResult<Option<WorkflowView>> {
    let Some(wf) = scheduler.store.workflow(id).await? else {
        return Ok(None);
    };
    let jobs = step_jobs(scheduler, &wf).await?;
    Ok(Some(view(&wf, &jobs)))
}

fn view(wf: &WorkflowRecord, jobs: &HashMap<String, JobStatus>) -> WorkflowView {
    WorkflowView {
        id: wf.id.clone(),
        state: wf.state,
        created_ms: wf.created_ms,
        finished_ms: wf.finished_ms,
        steps: wf
            .steps
            .iter()
            .map(|s| {
                let job = jobs.get(&s.name);
                (
                    s.name.clone(),
                    StepView {
                        job: s.job.clone(),
                        state: job.map(|j| j.state).unwrap_or(JobState::Failed),
                        needs: s.needs.clone(),
                        progress: job.map(|j| j.progress).unwrap_or_default(),
                        error: match job {
                            Some(j) => j.error.clone(),
                            None => Some("its job is gone from the store".into()),
                        },
                    },
                )
            })
            .collect(),
    }
}

/// Cancels every step that has not finished, and the workflow.
pub async fn cancel(scheduler: &Scheduler, id: &str) -> StoreResult<Option<WorkflowView>> {
    let Some(wf) = scheduler.store.workflow(id).await? else {
        return Ok(None);
    };
    let now = scheduler.now_ms();
    for s in &wf.steps {
        scheduler.store.cancel_job(&s.job, now).await?;
    }
    scheduler
        .store
        .finish_workflow(id, WorkflowState::Cancelled, now)
        .await?;
    scheduler.store.purge_finished_inputs(now).await?;
    status(scheduler, id).await
}

/// The jobs of a workflow's steps, by step name (a vanished job is absent).
async fn step_jobs(
    scheduler: &Scheduler,
    wf: &WorkflowRecord,
) -> StoreResult<HashMap<String, JobStatus>> {
    let mut jobs = HashMap::new();
    for s in &wf.steps {
        if let Some(j) = scheduler.store.job(&s.job).await? {
            jobs.insert(s.name.clone(), j);
        }
    }
    Ok(jobs)
}

/// Workflows being advanced in this process: the sweep and a submission
/// must not plan the same step twice at once (it would be harmless, as a
/// job is released once, but wasted).
fn advancing() -> &'static Mutex<HashSet<String>> {
    static ADVANCING: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    ADVANCING.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Takes `id` out of [`advancing`] when dropped.
struct Advancing(String);

impl Drop for Advancing {
    fn drop(&mut self) {
        advancing()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// Why a step did not run, from the first of its needs that did not succeed.
fn blocked_reason(step: &str, need: &str, job: Option<&JobStatus>) -> String {
    let what = match job {
        None => "is gone from the store".to_string(),
        Some(j) => match (j.state, &j.error) {
            (JobState::Failed, Some(e)) => format!("failed: {e}"),
            (JobState::Cancelled, _) => "was cancelled".to_string(),
            (JobState::Expired, _) => "expired before it ran".to_string(),
            (s, _) => format!("ended {}", s.as_str()),
        },
    };
    format!("step {need:?} {what}; step {step:?} did not run")
}

/// Moves a workflow on as far as it can now: releases the steps whose
/// needs succeeded, fails those whose needs did not, and finishes the
/// workflow when every step has.
pub async fn advance(scheduler: &Arc<Scheduler>, id: &str) -> StoreResult<()> {
    if !advancing()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string())
    {
        return Ok(());
    }
    let _guard = Advancing(id.to_string());
    let Some(wf) = scheduler.store.workflow(id).await? else {
        return Ok(());
    };
    if wf.state != WorkflowState::Running {
        return Ok(());
    }
    let mut jobs = step_jobs(scheduler, &wf).await?;
    // Failures flow down the graph within one pass, however long the chain.
    loop {
        let mut changed = false;
        for s in &wf.steps {
            if jobs.get(&s.name).map(|j| j.state) != Some(JobState::Waiting) {
                continue;
            }
            let blocked = s.needs.iter().find(|n| {
                let j = jobs.get(n.as_str());
                j.is_none_or(|j| j.state.is_finished() && j.state != JobState::Succeeded)
            });
            if let Some(need) = blocked {
                let reason = blocked_reason(&s.name, need, jobs.get(need.as_str()));
                fail_step(scheduler, s, reason).await?;
                changed = true;
            } else if s
                .needs
                .iter()
                .all(|n| jobs.get(n.as_str()).map(|j| j.state) == Some(JobState::Succeeded))
            {
                release(scheduler, &wf, s).await?;
                changed = true;
            } else {
                continue;
            }
            match scheduler.store.job(&s.job).await? {
                Some(j) => jobs.insert(s.name.clone(), j),
                None => jobs.remove(&s.name),
            };
        }
        if !changed {
            break;
        }
    }
    let states: Vec<JobState> = wf
        .steps
        .iter()
        .map(|s| {
            jobs.get(&s.name)
                .map(|j| j.state)
                .unwrap_or(JobState::Failed)
        })
        .collect();
    if states.iter().all(|s| s.is_finished()) {
        let state = if states.iter().all(|&s| s == JobState::Succeeded) {
            WorkflowState::Succeeded
        } else if states
            .iter()
            .any(|&s| matches!(s, JobState::Failed | JobState::Expired))
        {
            WorkflowState::Failed
        } else {
            WorkflowState::Cancelled
        };
        if scheduler
            .store
            .finish_workflow(id, state, scheduler.now_ms())
            .await?
        {
            tracing::info!(workflow = %id, state = state.as_str(), "workflow finished");
        }
    }
    Ok(())
}

async fn fail_step(scheduler: &Scheduler, s: &WorkflowStep, reason: String) -> StoreResult<()> {
    tracing::info!(job = %s.job, step = %s.name, "{reason}");
    scheduler
        .store
        .finish_job(&s.job, Err(reason), scheduler.now_ms())
        .await
}

/// Plans a step whose needs succeeded, with their results in place, and
/// releases its job; or, for a merge, reduces it here.
async fn release(
    scheduler: &Arc<Scheduler>,
    wf: &WorkflowRecord,
    s: &WorkflowStep,
) -> StoreResult<()> {
    let Value::Object(body) = &s.body else {
        return fail_step(scheduler, s, "its job body is not an object".into()).await;
    };
    let kernel = body
        .get("kernel")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let refs = match inputs::references(kernel, body) {
        Ok(refs) => refs,
        Err(e) => return fail_step(scheduler, s, e).await,
    };
    let job_of: HashMap<&str, &str> = wf
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.job.as_str()))
        .collect();
    let mut results: Vec<(String, JobResult)> = Vec::new();
    for (_, name) in &refs {
        if results.iter().any(|(n, _)| n == name) {
            continue;
        }
        let job = job_of.get(name.as_str()).copied().unwrap_or_default();
        let Some(bytes) = scheduler.store.job_result(job).await? else {
            let why = format!("the result of step {name:?} is gone (its `result_ttl_s` ran out before step {:?} could use it)", s.name);
            return fail_step(scheduler, s, why).await;
        };
        match JobResult::decode(&bytes) {
            Ok(r) => results.push((name.clone(), r)),
            Err(e) => {
                let why = format!("the result of step {name:?} does not decode: {e}");
                return fail_step(scheduler, s, why).await;
            }
        }
    }
    let merge = refs
        .iter()
        .any(|(slot, _)| slot.shape == inputs::Shape::Merge);
    let body = body.clone();
    let kernel = kernel.to_string();
    let store = scheduler.store.clone();
    // Substituting, planning and encoding a big job is CPU work.
    let planned = tokio::task::spawn_blocking(move || -> Result<Planned, String> {
        if merge {
            let top = body
                .get("top")
                .and_then(Value::as_u64)
                .unwrap_or(musketeer_tasks::wordcount::WordcountOptions::default().top as u64);
            let merged = inputs::merge_counts(results, top as usize)?;
            return Ok(Planned::Result(merged.encode()));
        }
        let results: HashMap<String, JobResult> = results.into_iter().collect();
        let body = inputs::substitute(&kernel, &body, &results)?;
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let (spec, options) = parse_job(&bytes).map_err(|e| e.to_string())?;
        let (reduce, tasks) = modules::plan(&store, &spec, &options).map_err(|e| e.to_string())?;
        Ok(Planned::Job(reduce, tasks))
    })
    .await
    .map_err(|e| StoreError::Worker(e.to_string()))?;
    match planned {
        Err(why) => fail_step(scheduler, s, format!("its inputs do not make a job: {why}")).await,
        Ok(Planned::Result(bytes)) => {
            tracing::info!(job = %s.job, step = %s.name, "merge step reduced");
            scheduler
                .store
                .finish_job(&s.job, Ok(bytes), scheduler.now_ms())
                .await
        }
        Ok(Planned::Job(reduce, tasks)) => {
            let n = tasks.len();
            if scheduler
                .store
                .start_waiting_job(&s.job, reduce, tasks)
                .await?
            {
                tracing::info!(job = %s.job, step = %s.name, tasks = n, "workflow step released");
                scheduler.signal_work();
            }
            Ok(())
        }
    }
}

/// What a released step comes to.
enum Planned {
    /// A job: its reduce plan and tasks.
    Job(Vec<u8>, Vec<NewTask>),
    /// A result computed here (a merge).
    Result(Vec<u8>),
}

/// Advances every open workflow every [`SWEEP`], in the background.
pub fn start(scheduler: &Arc<Scheduler>) {
    let weak = Arc::downgrade(scheduler);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(scheduler) = weak.upgrade() else {
                return;
            };
            match scheduler.store.open_workflows().await {
                Ok(ids) => {
                    for id in ids {
                        if let Err(e) = advance(&scheduler, &id).await {
                            tracing::warn!(workflow = %id, "cannot advance the workflow: {e}");
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot list open workflows: {e}"),
            }
        }
    });
}
