//! A job's tasks as its dashboard page lists them: a bounded sample of its
//! replicas, those worth a look first. A job may have a million tasks, so
//! each store reads only a few candidates (see [`super::Store::job_tasks`]);
//! which of them are shown, and in what order, is decided here, once for
//! both stores.

use serde::{Deserialize, Serialize};

/// How many replicas a job's page lists at most.
pub const TASK_ROWS: usize = 50;

/// Where one replica of a task stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to be leased (now, or after a retry's backoff or a countdown).
    Pending,
    /// Leased by an agent now.
    Leased,
    /// Its result came back (for a replicated job: its vote).
    Done,
    /// Out of attempts: it failed its job.
    Failed,
    /// Will not run: its job ended, or its task was decided without it.
    Cancelled,
}

/// One replica of a task (a job without redundancy has one per task).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TaskReplica {
    /// The task's index in its job.
    pub index: u32,
    /// Which replica (0 for the first; more when replicas disagree).
    pub replica: u32,
    /// Where it stands.
    pub state: TaskState,
    /// Attempts made (leases that used one up).
    pub attempts: u32,
    /// The agent that holds it (leased) or returned its result (done).
    pub agent: Option<String>,
    /// Why its last failed attempt failed, if one did (kept after a retry
    /// succeeds, as the history of the task).
    pub error: Option<String>,
    /// For a returned replica of a replicated job: whether its answer was
    /// the accepted one (`false`: outvoted, or no answer had a majority);
    /// `None` while its task is undecided, or without redundancy.
    pub agreed: Option<bool>,
}

/// The order a page lists replicas in: failures first, then what runs,
/// what waits, what is done and what will not run.
fn rank(r: &TaskReplica) -> u8 {
    match r.state {
        TaskState::Failed => 0,
        _ if r.error.is_some() => 1,
        TaskState::Leased => 2,
        TaskState::Pending => 3,
        TaskState::Done => 4,
        TaskState::Cancelled => 5,
    }
}

/// The replicas a page lists, from a store's candidates: each once, in
/// [`rank`] order then by task and replica, at most `limit`.
pub fn pick(mut candidates: Vec<TaskReplica>, limit: usize) -> Vec<TaskReplica> {
    candidates.sort_by_key(|r| (r.index, r.replica));
    candidates.dedup_by_key(|r| (r.index, r.replica));
    candidates.sort_by_key(|r| (rank(r), r.index, r.replica));
    candidates.truncate(limit);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(index: u32, state: TaskState, error: Option<&str>) -> TaskReplica {
        TaskReplica {
            index,
            replica: 0,
            state,
            attempts: 1,
            agent: None,
            error: error.map(String::from),
            agreed: None,
        }
    }

    #[test]
    fn failures_come_first_and_each_replica_once() {
        let rows = pick(
            vec![
                replica(0, TaskState::Done, None),
                replica(3, TaskState::Pending, Some("boom")),
                replica(2, TaskState::Leased, None),
                replica(5, TaskState::Failed, Some("out of attempts")),
                replica(2, TaskState::Leased, None),
                replica(1, TaskState::Cancelled, None),
            ],
            4,
        );
        let order: Vec<u32> = rows.iter().map(|r| r.index).collect();
        assert_eq!(order, [5, 3, 2, 0]);
    }
}
