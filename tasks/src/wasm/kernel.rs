//! The `wasm` kernel: a job of items mapped by an uploaded module, planned
//! into tasks of consecutive items, reduced as values, an exact sum, or by
//! the module's own `musketeer_reduce`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::engine::{self, Compiled, WasmError};
use super::limits::{self, Limits};
use super::sum;
use super::ModuleId;
use crate::job::{JobError, MAX_TASKS_PER_JOB};
use crate::kernel::{
    Cost, JobPlan, KernelError, ReducePlan, TaskInput, TaskOutput, TARGET_TASK_WORK,
};
use crate::result::JobResult;

/// Most items in one job (a range of more would be a billion tasks' rows).
pub const MAX_ITEMS: u64 = 100_000_000;
/// Items per task when the job does not say and no cost is known yet: an
/// item of a real kernel (a Monte Carlo batch, a row of an image) is
/// milliseconds of interpretation, so this is a task of a second or so.
pub const DEFAULT_ITEMS_PER_TASK: u64 = 256;
/// Most items per task, whatever `items_per_task` asks.
pub const MAX_ITEMS_PER_TASK: u64 = 1_000_000;
/// Nanoseconds of one x86_64 core per unit of wasmi fuel (about one
/// WebAssembly instruction), as `musketeer bench` measures it: what turns a
/// measured fuel per item into [`Cost::work`].
pub const NS_PER_FUEL: f64 = 1.5;
/// Fuel the coordinator may spend measuring one job's items before it
/// plans the job (a sixth of a second of interpretation at most, in all).
pub const SAMPLE_FUEL: u64 = 100_000_000;
/// Items measured at most: the first, the middle and the last.
const SAMPLE_ITEMS: u64 = 3;
/// The [`Cost::work`] of one item whose cost is not known.
const UNKNOWN_ITEM_WORK: u64 = TARGET_TASK_WORK / DEFAULT_ITEMS_PER_TASK;
/// Memory a task is planned to need besides its items: the interpreter,
/// the compiled module and a modest linear memory.
const TASK_BASE_MEM: u64 = 32 << 20;

/// How a job's outputs become its result.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReduceKind {
    /// `{"values":[...]}`, one output per item, in input order.
    #[default]
    Values,
    /// `{"value":N}`, the exact sum of numeric outputs.
    Sum,
    /// `{"value":...}` from the module's `musketeer_reduce`, as a tree.
    Module,
}

/// A half-open range of integers, the items of a `range` job.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ItemRange {
    /// The first item.
    pub start: i64,
    /// One past the last item.
    pub end: i64,
}

/// The job body: `{"kernel":"wasm","module":"sha256:...","items":[...]}` or
/// `"range":{"start":A,"end":B}`, with `"reduce"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasmJob {
    /// The module, as `modules push` printed its id.
    pub module: ModuleId,
    /// The items, any JSON values.
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    /// Or the integers `start..end`.
    #[serde(default)]
    pub range: Option<ItemRange>,
    /// How to reduce; `values` unless given.
    #[serde(default)]
    pub reduce: ReduceKind,
}

/// One task's items.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum WasmItems {
    /// These JSON texts.
    List(Vec<String>),
    /// The integers of this range.
    Range(ItemRange),
}

/// One task: a module and consecutive items of its job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WasmTask {
    /// The module (first, so an agent can read it without decoding the items).
    pub module: ModuleId,
    /// The job's index of the first item, for messages.
    pub first_item: u64,
    /// The items.
    pub items: WasmItems,
    /// The fuel the whole task may burn (the same for every agent, so a
    /// task out of fuel is out of fuel everywhere).
    pub fuel: u64,
    /// The linear memory the module may grow to (an agent with less to give
    /// lowers it).
    pub memory_bytes: u64,
    /// The planner's estimate.
    pub cost: Cost,
}

/// One task's outputs, JSON texts in item order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WasmOutput {
    /// One per item.
    pub outputs: Vec<String>,
}

/// How to reduce a wasm job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WasmReduce {
    /// The module (the coordinator needs its bytes for [`ReduceKind::Module`]).
    pub module: ModuleId,
    /// Which reduce.
    pub kind: ReduceKind,
    /// How many items the job has.
    pub items: u64,
}

/// A wasm job's result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum WasmResult {
    /// Every output, in input order: `{"values":[...]}`.
    Values(Vec<String>),
    /// One value (a sum, or the module's reduce): `{"value":...}`.
    Value(String),
}

impl WasmItems {
    /// How many items.
    pub fn len(&self) -> u64 {
        match self {
            WasmItems::List(v) => v.len() as u64,
            WasmItems::Range(r) => r.end.saturating_sub(r.start).max(0) as u64,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items as JSON texts.
    pub fn texts(&self) -> Vec<String> {
        match self {
            WasmItems::List(v) => v.clone(),
            WasmItems::Range(r) => (r.start..r.end).map(|i| i.to_string()).collect(),
        }
    }
}

impl WasmJob {
    /// Item `i` as the module receives it, JSON text.
    fn item_text(&self, i: u64) -> Option<String> {
        match (&self.items, &self.range) {
            (Some(items), _) => items.get(i as usize).map(|v| v.to_string()),
            (None, Some(r)) => Some((r.start + i as i64).to_string()),
            (None, None) => None,
        }
    }

    /// The fuel one item of this job burns, measured with `module` on up
    /// to three of its items (first, middle, last) within [`SAMPLE_FUEL`]:
    /// fuel is deterministic, so it is what every agent's run will burn.
    /// An item that spends its share of the sample counts as that share (a
    /// lower bound, which still makes its tasks small). `None` when the
    /// sample cannot run at all: the tasks' own runs then give the reason.
    pub fn measure_fuel_per_item(&self, module: &[u8]) -> Option<u64> {
        let count = self.item_count();
        if count == 0 {
            return None;
        }
        let share = SAMPLE_FUEL / SAMPLE_ITEMS;
        let limits = Limits {
            fuel: share,
            ..Limits::default()
        };
        let compiled = Compiled::new(module, &limits).ok()?;
        let mut picks = vec![0, count / 2, count - 1];
        picks.dedup();
        let mut spent = 0;
        for &i in &picks {
            match compiled.map(&[self.item_text(i)?], i) {
                Ok(out) => spent += out.fuel_used,
                Err(WasmError::OutOfFuel { .. }) => spent += share,
                Err(_) => return None,
            }
        }
        Some(spent / picks.len() as u64)
    }

    /// How many items the job has.
    pub fn item_count(&self) -> u64 {
        match (&self.items, &self.range) {
            (Some(items), _) => items.len() as u64,
            (None, Some(r)) => r.end.saturating_sub(r.start).max(0) as u64,
            (None, None) => 0,
        }
    }

    /// Checks the job's shape.
    fn check(&self) -> Result<(), JobError> {
        match (&self.items, &self.range) {
            (Some(_), Some(_)) => Err(JobError::Invalid(
                "wasm: give either `items` or `range`, not both".into(),
            )),
            (None, None) => Err(JobError::Invalid(
                "wasm: give `items` (a list of JSON values) or `range` ({\"start\":A,\"end\":B})"
                    .into(),
            )),
            (None, Some(r)) if r.end < r.start => Err(JobError::Invalid(format!(
                "wasm: `range` ends ({}) before it starts ({})",
                r.end, r.start
            ))),
            _ if self.item_count() > MAX_ITEMS => Err(JobError::TooLarge(format!(
                "{} items; at most {MAX_ITEMS} per job",
                self.item_count()
            ))),
            _ => Ok(()),
        }
    }

    /// Plans the job into tasks of `items_per_task` items (the job's own,
    /// else as many as make [`TARGET_TASK_WORK`] at `fuel_per_item`, a
    /// measured cost of this module's items, else
    /// [`DEFAULT_ITEMS_PER_TASK`]).
    pub fn plan_sized(
        &self,
        items_per_task: Option<u64>,
        fuel_per_item: Option<u64>,
    ) -> Result<JobPlan, JobError> {
        self.check()?;
        let count = self.item_count();
        let item_work = match fuel_per_item {
            Some(f) => ((f as f64 * NS_PER_FUEL) as u64).max(1),
            None => UNKNOWN_ITEM_WORK,
        };
        let per_task = items_per_task
            .unwrap_or_else(|| match fuel_per_item {
                Some(_) => (TARGET_TASK_WORK / item_work).max(1),
                None => DEFAULT_ITEMS_PER_TASK,
            })
            .clamp(1, MAX_ITEMS_PER_TASK);
        let tasks = count.div_ceil(per_task);
        if tasks > MAX_TASKS_PER_JOB {
            return Err(JobError::TooLarge(format!(
                "{count} items at {per_task} per task make {tasks} tasks; the limit is {MAX_TASKS_PER_JOB}: raise `items_per_task`"
            )));
        }
        let mut plan = Vec::with_capacity(tasks as usize);
        let texts: Option<Vec<String>> = self.items.as_ref().map(|items| {
            items
                .iter()
                .map(|v| serde_json::to_string(v).expect("JSON values always serialise"))
                .collect()
        });
        for t in 0..tasks {
            let lo = t * per_task;
            let hi = (lo + per_task).min(count);
            let items = match (&texts, &self.range) {
                (Some(texts), _) => WasmItems::List(texts[lo as usize..hi as usize].to_vec()),
                (None, Some(r)) => WasmItems::Range(ItemRange {
                    start: r.start + lo as i64,
                    end: r.start + hi as i64,
                }),
                (None, None) => unreachable!("checked above"),
            };
            let input_bytes: u64 = match &items {
                WasmItems::List(v) => v.iter().map(|s| s.len() as u64).sum(),
                WasmItems::Range(r) => (r.end - r.start) as u64 * 20,
            };
            let cost = Cost {
                work: item_work.saturating_mul(hi - lo),
                mem_bytes: TASK_BASE_MEM + 4 * input_bytes,
            };
            let task = WasmTask {
                module: self.module,
                first_item: lo,
                items,
                fuel: limits::DEFAULT_FUEL,
                memory_bytes: limits::DEFAULT_MEMORY_BYTES,
                cost,
            };
            plan.push((TaskInput::Wasm(task), cost));
        }
        Ok(JobPlan {
            tasks: plan,
            reduce: ReducePlan::Wasm(WasmReduce {
                module: self.module,
                kind: self.reduce,
                items: count,
            }),
        })
    }

    /// Plans with the defaults (see [`WasmJob::plan_sized`]).
    pub fn plan(&self) -> Result<JobPlan, JobError> {
        self.plan_sized(None, None)
    }
}

impl WasmTask {
    /// The planner's estimate.
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// The limits this task runs under, given at most `memory_bytes` of
    /// linear memory on this agent (the task's own limit if it is lower).
    pub fn limits(&self, memory_bytes: u64) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: self.memory_bytes.min(memory_bytes),
            ..Limits::default()
        }
    }

    /// Runs the task with `module`'s bytes within `limits`.
    pub fn run_with(&self, module: &[u8], limits: &Limits) -> Result<WasmOutput, WasmError> {
        if !self.module.matches(module) {
            return Err(WasmError::Engine(format!(
                "the bytes given are not module {}",
                self.module
            )));
        }
        let compiled = Compiled::new(module, limits)?;
        let outcome = compiled.map(&self.items.texts(), self.first_item)?;
        Ok(WasmOutput {
            outputs: outcome.outputs,
        })
    }
}

impl WasmReduce {
    /// Reduces the tasks' outputs, given in task order; `module` holds the
    /// module's bytes when the reduce is the module's own.
    pub fn reduce(
        &self,
        outputs: Vec<TaskOutput>,
        module: Option<&[u8]>,
        limits: &Limits,
    ) -> Result<JobResult, KernelError> {
        let mut values = Vec::with_capacity(self.items as usize);
        for (i, o) in outputs.into_iter().enumerate() {
            match o {
                TaskOutput::Wasm(w) => values.extend(w.outputs),
                other => {
                    return Err(KernelError::Reduce(format!(
                        "output {i} is not a wasm output: {}",
                        other.kind()
                    )))
                }
            }
        }
        if values.len() as u64 != self.items {
            return Err(KernelError::Reduce(format!(
                "the outputs hold {} values; the job has {} items",
                values.len(),
                self.items
            )));
        }
        let result = match self.kind {
            ReduceKind::Values => WasmResult::Values(values),
            ReduceKind::Sum => {
                let total = sum::exact_sum(values.iter().map(String::as_str))
                    .map_err(|(i, e)| KernelError::Reduce(format!("the output of item {i} {e}")))?;
                WasmResult::Value(total)
            }
            ReduceKind::Module => {
                let Some(bytes) = module else {
                    return Err(KernelError::Reduce(format!(
                        "\"reduce\":\"module\" needs the bytes of module {}",
                        self.module
                    )));
                };
                if !self.module.matches(bytes) {
                    return Err(KernelError::Reduce(format!(
                        "the bytes given are not module {}",
                        self.module
                    )));
                }
                let out = engine::reduce_tree(bytes, &values, engine::DEFAULT_FAN_IN, limits)
                    .map_err(|e| KernelError::Reduce(format!("musketeer_reduce failed: {e}")))?;
                WasmResult::Value(out.output)
            }
        };
        Ok(JobResult::Wasm(result))
    }
}

impl WasmResult {
    /// Writes `{"values":[...]}` or `{"value":...}`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> &'static str {
        match self {
            WasmResult::Values(values) => {
                out.reserve(values.iter().map(|v| v.len() + 1).sum::<usize>() + 16);
                out.extend_from_slice(b"{\"values\":");
                out.extend_from_slice(engine::json_array(values).as_bytes());
                out.push(b'}');
            }
            WasmResult::Value(v) => {
                out.reserve(v.len() + 16);
                out.extend_from_slice(b"{\"value\":");
                out.extend_from_slice(v.as_bytes());
                out.push(b'}');
            }
        }
        "application/json"
    }
}
