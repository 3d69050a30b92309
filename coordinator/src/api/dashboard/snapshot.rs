//! What the dashboard shows, gathered in one read of the store: the
//! overview, agents, queues with why their jobs wait, a page of jobs, one
//! job's details and tasks, modules, workflows, schedules and the tokens.
//! The page gets it over server-sent events and draws it; nothing is
//! computed in the browser but layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::super::auth::Operator;
use super::super::{ApiError, AppState};
use crate::scheduler::why::{self, Why};
use crate::schedules::ScheduleView;
use crate::store::{
    AgentRecord, AgentState, JobStatus, ModuleRecord, TaskReplica, TokenRecord, TASK_ROWS,
};
use crate::workflows::{self, WorkflowView};

/// How many of the newest jobs the jobs page filters: the store keeps
/// every job; the page searches this many back.
pub const HISTORY_SCAN: u32 = 5_000;
/// Jobs on one page.
pub const PAGE_SIZE: usize = 25;
/// Open jobs whose reasons the queues page shows at most (each costs a
/// read of its backlog, once a second per open dashboard).
const WHY_PER_SNAPSHOT: usize = 20;
/// Workflows the workflows page shows at most, newest first (each costs a
/// read of it and of its steps' jobs).
const WORKFLOWS_PER_SNAPSHOT: usize = 20;
/// Workflow steps whose jobs one snapshot reads, about: the workflows
/// page stops at the workflow that passes it (a workflow has up to 1,000).
const STEP_READS_PER_SNAPSHOT: usize = 200;
/// Schedules the schedules page shows, and jobs of each (each a read).
const SCHEDULES_PER_SNAPSHOT: usize = 50;
/// See [`SCHEDULES_PER_SNAPSHOT`].
const JOBS_PER_SCHEDULE: usize = 5;

/// What the page asks for: the jobs page's filters and paging, and the
/// job it shows, if any.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct View {
    /// Only jobs in this state.
    pub state: Option<String>,
    /// Only jobs of this kernel.
    pub kernel: Option<String>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs whose id contains this.
    pub q: Option<String>,
    /// Jobs to skip (paging).
    pub offset: Option<usize>,
    /// The job whose page is open.
    pub job: Option<String>,
}

/// Counts for the overview.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// Agents active and seen within the online window.
    pub agents_online: u64,
    /// Online agents by architecture.
    pub agents_by_arch: BTreeMap<String, u64>,
    /// Cores of the online agents.
    pub cores: u64,
    /// Jobs by state.
    pub jobs_by_state: BTreeMap<String, u64>,
    /// Tasks waiting to be leased.
    pub tasks_pending: u64,
    /// Tasks leased now.
    pub tasks_leased: u64,
}

/// One queue: its open jobs, and why those wait.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// Open (queued or running) jobs in it.
    pub open_jobs: u64,
    /// Their tasks not yet done or failed.
    pub tasks_left: u64,
    /// The newest open jobs with their reasons.
    pub waiting: Vec<Why>,
}

/// A page of the job list.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct JobsPage {
    /// The jobs on this page, newest first.
    pub items: Vec<JobStatus>,
    /// Jobs that match the filters (among the newest [`HISTORY_SCAN`]).
    pub matching: u64,
    /// The offset of the first.
    pub offset: u64,
    /// Jobs per page.
    pub page_size: u64,
    /// Kernels and queues seen, for the filters' choices.
    pub kernels: Vec<String>,
    /// See `kernels`.
    pub queues: Vec<String>,
}

/// The open job's page.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    /// Its status and progress.
    pub status: JobStatus,
    /// Why its waiting tasks wait.
    pub why: Why,
    /// Up to [`TASK_ROWS`] replicas of its tasks, failures first (see
    /// [`crate::store::task_list`]); the counts are in `status` and `why`.
    pub tasks: Vec<TaskReplica>,
}

/// Everything the dashboard shows.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// The coordinator's clock.
    pub now_ms: u64,
    /// Who is looking: `admin` (may act), `viewer` or `public`.
    pub role: String,
    /// Why the coordinator is degraded, if it is (out of space).
    pub degraded: Option<String>,
    /// The counts.
    pub overview: Overview,
    /// Results per second in 10 s buckets over the last hour, oldest first.
    pub throughput: Vec<f64>,
    /// Every agent.
    pub agents: Vec<AgentRecord>,
    /// Every queue with open jobs.
    pub queues: Vec<Queue>,
    /// The job list's page.
    pub jobs: JobsPage,
    /// The open job's page, if one is open and exists.
    pub job: Option<JobPage>,
    /// Stored WebAssembly modules, oldest first.
    pub modules: Vec<ModuleRecord>,
    /// The newest workflows, newest first: every running one and those of
    /// the jobs the jobs page scans, at most [`WORKFLOWS_PER_SNAPSHOT`].
    pub workflows: Vec<WorkflowView>,
    /// Every schedule, oldest first; to the public, each job body is only
    /// its kernel (a body may carry data, as `GET /v1/schedules` needs a token).
    pub schedules: Vec<ScheduleView>,
    /// Tokens (ids and roles, never secrets); not shown to the public.
    pub tokens: Option<Vec<TokenRecord>>,
}

fn role_name(op: Operator) -> &'static str {
    match op {
        Operator::Admin => "admin",
        Operator::Viewer => "viewer",
        Operator::Public => "public",
    }
}

/// Whether `job` passes the page's filters.
fn matches(job: &JobStatus, view: &View) -> bool {
    let eq = |want: &Option<String>, have: &str| {
        want.as_deref().is_none_or(|w| w.is_empty() || w == have)
    };
    eq(&view.state, job.state.as_str())
        && eq(&view.kernel, &job.kernel)
        && eq(&view.queue, &job.queue)
        && view.q.as_deref().is_none_or(|q| job.id.contains(q.trim()))
}

/// A schedule's job body as the public sees it: its kernel, not its
/// inputs.
fn kernel_only(job: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "kernel": job.get("kernel") })
}

/// Gathers the snapshot for `op` looking at `view`.
pub async fn gather(st: &AppState, op: Operator, view: &View) -> Result<Snapshot, ApiError> {
    let s = &st.scheduler;
    let store = &s.store;
    let now = s.now_ms();
    let stats = store.stats().await?;
    let agents = store.list_agents().await?;
    let history = store.list_jobs(HISTORY_SCAN).await?;

    let online: Vec<&AgentRecord> = agents
        .iter()
        .filter(|a| {
            a.state == AgentState::Active
                && now.saturating_sub(a.last_seen_ms) <= why::ONLINE_WINDOW_MS
        })
        .collect();
    let mut overview = Overview {
        agents_online: online.len() as u64,
        cores: online.iter().map(|a| a.capacity.cpus as u64).sum(),
        jobs_by_state: stats.jobs.clone(),
        tasks_pending: stats.tasks_pending,
        tasks_leased: stats.tasks_leased,
        ..Overview::default()
    };
    for a in &online {
        *overview
            .agents_by_arch
            .entry(a.capacity.arch.clone())
            .or_default() += 1;
    }

    let mut queues: BTreeMap<String, Queue> = BTreeMap::new();
    let mut explained = 0;
    for j in history.iter().filter(|j| !j.state.is_finished()) {
        let q = queues.entry(j.queue.clone()).or_insert_with(|| Queue {
            name: j.queue.clone(),
            open_jobs: 0,
            tasks_left: 0,
            waiting: Vec::new(),
        });
        q.open_jobs += 1;
        q.tasks_left += j
            .progress
            .total
            .saturating_sub(j.progress.done + j.progress.failed);
        if explained < WHY_PER_SNAPSHOT {
            if let Some(b) = store.job_backlog(&j.id, now).await? {
                let w = why::explain(j, &b, &agents, now);
                if w.waiting > 0 {
                    q.waiting.push(w);
                    explained += 1;
                }
            }
        }
    }

    let mut kernels: Vec<String> = history.iter().map(|j| j.kernel.clone()).collect();
    kernels.sort();
    kernels.dedup();
    let mut queue_names: Vec<String> = history.iter().map(|j| j.queue.clone()).collect();
    queue_names.sort();
    queue_names.dedup();
    let matching: Vec<&JobStatus> = history.iter().filter(|j| matches(j, view)).collect();
    let offset = view.offset.unwrap_or(0).min(matching.len());
    let jobs = JobsPage {
        items: matching
            .iter()
            .skip(offset)
            .take(PAGE_SIZE)
            .map(|j| (*j).clone())
            .collect(),
        matching: matching.len() as u64,
        offset: offset as u64,
        page_size: PAGE_SIZE as u64,
        kernels,
        queues: queue_names,
    };

    let job = match view.job.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => match (store.job(id).await?, store.job_backlog(id, now).await?) {
            (Some(status), Some(b)) => Some(JobPage {
                why: why::explain(&status, &b, &agents, now),
                tasks: store.job_tasks(id, TASK_ROWS).await?.unwrap_or_default(),
                status,
            }),
            _ => None,
        },
        None => None,
    };
    // Workflow ids are UUIDv7s: newest sorts last.
    let mut workflow_ids: Vec<String> = store.open_workflows().await?;
    workflow_ids.extend(history.iter().filter_map(|j| j.workflow.clone()));
    workflow_ids.sort_unstable_by(|a, b| b.cmp(a));
    workflow_ids.dedup();
    let mut workflows = Vec::new();
    let mut steps_read = 0;
    for id in workflow_ids.iter().take(WORKFLOWS_PER_SNAPSHOT) {
        // Each step is a read of its job: stop once the budget is spent.
        if steps_read >= STEP_READS_PER_SNAPSHOT {
            break;
        }
        if let Some(w) = workflows::status(s, id).await? {
            steps_read += w.steps.len();
            workflows.push(w);
        }
    }
    let mut schedules =
        crate::schedules::list_some(s, SCHEDULES_PER_SNAPSHOT, JOBS_PER_SCHEDULE).await?;
    if op == Operator::Public {
        for sc in &mut schedules {
            sc.job = kernel_only(&sc.job);
        }
    }
    let tokens = match op {
        Operator::Public => None,
        _ => Some(store.list_tokens().await?),
    };
    Ok(Snapshot {
        now_ms: now,
        role: role_name(op).into(),
        degraded: st.space.degraded().map(|d| d.message()),
        overview,
        throughput: s.throughput.per_second(now),
        agents,
        queues: queues.into_values().collect(),
        jobs,
        job,
        modules: store.list_modules().await?,
        workflows,
        schedules,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobState, Progress};

    fn job(id: &str, state: JobState, kernel: &str, queue: &str) -> JobStatus {
        JobStatus {
            id: id.into(),
            kernel: kernel.into(),
            state,
            queue: queue.into(),
            priority: 5,
            progress: Progress::default(),
            error: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            not_before_ms: None,
            expires_ms: None,
            result_expires_ms: None,
            workflow: None,
            schedule: None,
        }
    }

    #[test]
    fn the_public_sees_a_schedules_kernel_not_its_inputs() {
        let body = serde_json::json!({"kernel": "wordcount", "text": "private words"});
        assert_eq!(
            kernel_only(&body),
            serde_json::json!({"kernel": "wordcount"})
        );
    }

    #[test]
    fn filters_combine_and_empty_ones_match_all() {
        let j = job("0192-abcd", JobState::Failed, "matmul", "gpu");
        assert!(matches(&j, &View::default()));
        let v = View {
            state: Some("failed".into()),
            kernel: Some("matmul".into()),
            queue: Some(String::new()),
            q: Some(" abc ".into()),
            ..View::default()
        };
        assert!(matches(&j, &v));
        assert!(!matches(
            &j,
            &View {
                kernel: Some("fibonacci".into()),
                ..v.clone()
            }
        ));
        assert!(!matches(
            &j,
            &View {
                q: Some("zzz".into()),
                ..v
            }
        ));
    }
}
