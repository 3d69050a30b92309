//! The stored shape of a workflow (see `crate::workflows`): its steps with
//! their jobs and what each needs. Step states are their jobs' states.

use serde::{Deserialize, Serialize};

use super::NewJob;

/// A workflow's lifecycle.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowState {
    /// Some step has not finished.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed or expired (and the steps after it failed with it).
    Failed,
    /// Cancelled by a submitter, or steps were cancelled and none failed.
    Cancelled,
}

impl WorkflowState {
    /// The name the API and the stores use.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Running => "running",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }

    /// Parses [`WorkflowState::as_str`].
    pub fn parse(s: &str) -> Option<WorkflowState> {
        Some(match s {
            "running" => WorkflowState::Running,
            "succeeded" => WorkflowState::Succeeded,
            "failed" => WorkflowState::Failed,
            "cancelled" => WorkflowState::Cancelled,
            _ => return None,
        })
    }
}

/// One step as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkflowStep {
    /// Its name, unique in the workflow.
    pub name: String,
    /// Its job's id.
    pub job: String,
    /// The steps it needs: its `after` and those whose results it takes.
    pub needs: Vec<String>,
    /// Its job body as submitted, with `{"result_of":..}` in place.
    pub body: serde_json::Value,
}

/// A workflow about to be stored, with its steps' jobs.
#[derive(Clone, Debug)]
pub struct NewWorkflow {
    /// Its id.
    pub id: String,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its steps.
    pub steps: Vec<WorkflowStep>,
    /// `jobs[i]` is `steps[i]`'s job, stored in state `waiting`, without
    /// tasks (its reduce plan comes when it is released).
    pub jobs: Vec<NewJob>,
}

/// A stored workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowRecord {
    /// Its id.
    pub id: String,
    /// Its lifecycle state.
    pub state: WorkflowState,
    /// When it was submitted.
    pub created_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Its steps, in submission order.
    pub steps: Vec<WorkflowStep>,
}
