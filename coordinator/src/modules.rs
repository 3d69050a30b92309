//! Which module a wasm job runs, checked against the store before the job
//! is accepted, whether it comes submitted, as a workflow's step or as a
//! schedule's body: a job refused here never becomes tasks that every
//! agent would fail. And how a wasm job's tasks are sized: by the fuel
//! its items burn, measured on a sample before it is planned.

use std::sync::Arc;

use musketeer_tasks::job::{JobError, JobOptions, JobSpec};
use musketeer_tasks::wasm::ReduceKind;

use crate::store::{NewTask, Store, StoreError};

/// The module a job needs, and whether it reduces with it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleUse {
    /// The module's id, `sha256:<hex>`.
    pub id: String,
    /// Whether the job's reduce is the module's `musketeer_reduce`.
    pub reduces: bool,
}

impl ModuleUse {
    /// The module `spec` runs, if it is a wasm job.
    pub fn of(spec: &JobSpec) -> Option<ModuleUse> {
        match spec {
            JobSpec::Wasm(job) => Some(ModuleUse {
                id: job.module.to_string(),
                reduces: job.reduce == ReduceKind::Module,
            }),
            _ => None,
        }
    }
}

/// Why a job's module is refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// No module has that id.
    #[error(
        "no module {0} is stored: upload it first with \
         `musketeer-coordinator modules push FILE` (POST /v1/modules), \
         and give the id it prints"
    )]
    Unknown(String),
    /// The job reduces with a module that has no reduce.
    #[error(
        "module {0} does not export musketeer_reduce, which \"reduce\":\"module\" \
         needs: use \"values\" or \"sum\", or export one (musketeer_guest::reduce!)"
    )]
    NoReduce(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ModuleError {
    /// The API error code of a refusal (a store failure has its own).
    pub fn code(&self) -> &'static str {
        match self {
            ModuleError::Unknown(_) => "unknown_module",
            ModuleError::NoReduce(_) => "invalid_job",
            ModuleError::Store(_) => "store_error",
        }
    }
}

/// Checks that `module` is stored and has what the job asks of it.
pub async fn check(store: &dyn Store, module: &ModuleUse) -> Result<(), ModuleError> {
    let Some(record) = store.module(&module.id).await? else {
        return Err(ModuleError::Unknown(module.id.clone()));
    };
    if module.reduces && !record.has_reduce {
        return Err(ModuleError::NoReduce(module.id.clone()));
    }
    Ok(())
}

/// Plans a job into what the store takes (see [`NewTask::from_plan`]); a
/// wasm job that does not say `items_per_task` gets tasks sized by its
/// items' fuel, measured on a sample with its module (fuel is the same on
/// every agent). Call it on a blocking thread: planning and measuring are
/// CPU work, and the module's bytes are read from the store from there.
pub fn plan(
    store: &Arc<dyn Store>,
    spec: &JobSpec,
    options: &JobOptions,
) -> Result<(Vec<u8>, Vec<NewTask>), JobError> {
    let fuel_per_item = match spec {
        JobSpec::Wasm(job) if options.items_per_task.is_none() => {
            let id = job.module.to_string();
            match tokio::runtime::Handle::current().block_on(store.module_bytes(&id)) {
                Ok(Some(bytes)) => job.measure_fuel_per_item(&bytes),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(module = %id, "cannot read the module to size its tasks: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    spec.plan_measured(options, fuel_per_item)
        .map(NewTask::from_plan)
}
