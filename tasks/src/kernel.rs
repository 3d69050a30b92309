//! The unit of work: a job is planned into tasks (each a range of the job's
//! items, never one per item), an agent runs a task's input into an output,
//! and the coordinator reduces the outputs, in task order, into the result.

use serde::{Deserialize, Serialize};

use crate::job::{JobError, JobSpec};
use crate::result::JobResult;
use crate::{factorial, fibonacci, matmul, wasm, wordcount};

/// Work a task is expected to take, so that the coordinator can size batches
/// and match tasks to agents that can hold them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cost {
    /// Roughly nanoseconds on one core of a modern x86_64; agents learn their
    /// own ratio to it, so only the relative sizes need to be right.
    pub work: u64,
    /// Peak bytes the task needs while it runs, inputs and outputs included.
    pub mem_bytes: u64,
}

impl Cost {
    /// The sum of two costs: work adds up, and so does memory held at once.
    pub fn plus(self, other: Cost) -> Cost {
        Cost {
            work: self.work.saturating_add(other.work),
            mem_bytes: self.mem_bytes.saturating_add(other.mem_bytes),
        }
    }
}

/// How much work the planner aims to put in one task: small enough that a
/// batch of a second or two holds several tasks, large enough that per-task
/// overhead (a row in the store, a lease) stays negligible.
pub const TARGET_TASK_WORK: u64 = 50_000_000;

/// Why a task could not produce an output.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    /// The input violates the kernel's own invariants (a corrupt or forged task).
    #[error("invalid task input: {0}")]
    InvalidInput(String),
    /// The outputs cannot be reduced: missing, extra or of the wrong kernel.
    #[error("cannot reduce results: {0}")]
    Reduce(String),
    /// An uploaded module failed the task: it trapped, ran out of fuel,
    /// grew past its memory or returned a bad output.
    #[error("{0}")]
    Module(String),
}

/// One task's input, as an agent receives it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum TaskInput {
    /// F(n) for each listed n.
    Fibonacci(fibonacci::FibonacciTask),
    /// The product of a range of integers.
    Factorial(factorial::FactorialTask),
    /// One tile of C = A × B.
    Matmul(matmul::MatmulTask),
    /// The word counts of one chunk of text.
    Wordcount(wordcount::WordcountTask),
    /// Consecutive items of a job, mapped by an uploaded module.
    Wasm(wasm::WasmTask),
}

/// One task's output, as an agent returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum TaskOutput {
    /// Decimal values, in the task's order.
    Fibonacci(fibonacci::FibonacciOutput),
    /// The range product.
    Factorial(factorial::FactorialOutput),
    /// The computed tile.
    Matmul(matmul::MatmulOutput),
    /// The chunk's counts, combined.
    Wordcount(wordcount::WordcountOutput),
    /// The items' outputs, JSON texts in order.
    Wasm(wasm::WasmOutput),
}

impl TaskInput {
    /// Runs the kernel. Pure and deterministic: the same input always gives
    /// the same output, which is what makes redundancy checks possible.
    ///
    /// A wasm task needs its module's bytes: see [`TaskInput::run_with_module`].
    pub fn run(&self) -> Result<TaskOutput, KernelError> {
        self.run_with_module(None, u64::MAX)
    }

    /// Runs the kernel; a wasm task with `module`'s bytes, its linear memory
    /// held to at most `memory_bytes` (what this agent can give it). A
    /// module's failure (a trap, out of fuel, a bad output) is the task's,
    /// with its reason.
    pub fn run_with_module(
        &self,
        module: Option<&[u8]>,
        memory_bytes: u64,
    ) -> Result<TaskOutput, KernelError> {
        Ok(match self {
            TaskInput::Fibonacci(t) => TaskOutput::Fibonacci(t.run()?),
            TaskInput::Factorial(t) => TaskOutput::Factorial(t.run()?),
            TaskInput::Matmul(t) => TaskOutput::Matmul(t.run()?),
            TaskInput::Wordcount(t) => TaskOutput::Wordcount(t.run()?),
            TaskInput::Wasm(t) => {
                let bytes = module.ok_or_else(|| {
                    KernelError::InvalidInput(format!(
                        "a wasm task needs the bytes of module {}",
                        t.module
                    ))
                })?;
                TaskOutput::Wasm(
                    t.run_with(bytes, &t.limits(memory_bytes))
                        .map_err(|e| KernelError::Module(e.to_string()))?,
                )
            }
        })
    }

    /// The module a wasm task runs, if this is one.
    pub fn module(&self) -> Option<wasm::ModuleId> {
        match self {
            TaskInput::Wasm(t) => Some(t.module),
            _ => None,
        }
    }

    /// The module an encoded wasm task runs, read from its first bytes
    /// without decoding its items; `None` for other kernels.
    pub fn module_of_encoded(bytes: &[u8]) -> Option<wasm::ModuleId> {
        if crate::Kernel::of_encoded(bytes)? != crate::Kernel::Wasm {
            return None;
        }
        postcard::take_from_bytes::<wasm::ModuleId>(&bytes[1..])
            .ok()
            .map(|(id, _)| id)
    }

    /// The estimate the planner gave this input.
    pub fn cost(&self) -> Cost {
        match self {
            TaskInput::Fibonacci(t) => t.cost(),
            TaskInput::Factorial(t) => t.cost(),
            TaskInput::Matmul(t) => t.cost(),
            TaskInput::Wordcount(t) => t.cost(),
            TaskInput::Wasm(t) => t.cost(),
        }
    }

    /// The kernel's name, for metrics and per-kernel speed estimates.
    pub fn kernel(&self) -> &'static str {
        self.kind().name()
    }

    /// The compact encoding stored by the coordinator and sent to agents.
    pub fn encode(&self) -> Vec<u8> {
        crate::protocol::encode(self).expect("task inputs always encode")
    }

    /// Decodes [`TaskInput::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<TaskInput, KernelError> {
        postcard::from_bytes(bytes).map_err(|e| KernelError::InvalidInput(e.to_string()))
    }
}

impl TaskOutput {
    /// A wrong but well-formed version of this output (a changed digit, a
    /// product off by one, a matrix entry off by one, a count off by one),
    /// for the agent's hidden `--corrupt-results` test flag: it decodes and
    /// reduces, only its numbers are wrong, as a faulty volunteer's would be.
    pub fn falsified(self) -> TaskOutput {
        match self {
            TaskOutput::Fibonacci(mut f) => {
                // The last digit of the last value, kept a digit (and the value
                // free of a leading zero, since only the last digit changes
                // unless the value is a single digit, where 0 <-> 1 is fine).
                if let Some(last) = f.digits.pop() {
                    let d = last.to_digit(10).unwrap_or(0);
                    f.digits
                        .push(char::from_digit((d + 1) % 10, 10).unwrap_or('1'));
                }
                TaskOutput::Fibonacci(f)
            }
            TaskOutput::Factorial(mut f) => {
                match f.limbs.first_mut() {
                    Some(low) => *low ^= 1,
                    None => f.limbs.push(1),
                }
                TaskOutput::Factorial(f)
            }
            TaskOutput::Matmul(mut m) => {
                if let Some(x) = m.c.first_mut() {
                    *x += 1.0;
                }
                TaskOutput::Matmul(m)
            }
            TaskOutput::Wordcount(mut w) => {
                w.total_words += 1;
                match w.counts.first_mut() {
                    Some((_, n)) => *n += 1,
                    None => w.counts.push(("musketeer".into(), 1)),
                }
                TaskOutput::Wordcount(w)
            }
            TaskOutput::Wasm(mut w) => {
                // A JSON value still, but not the module's.
                match w.outputs.first_mut() {
                    Some(o) => *o = format!("[{o},1]"),
                    None => w.outputs.push("1".into()),
                }
                TaskOutput::Wasm(w)
            }
        }
    }

    /// The compact encoding agents upload and the coordinator stores.
    pub fn encode(&self) -> Vec<u8> {
        crate::protocol::encode(self).expect("task outputs always encode")
    }

    /// Decodes [`TaskOutput::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<TaskOutput, KernelError> {
        postcard::from_bytes(bytes).map_err(|e| KernelError::Reduce(e.to_string()))
    }
}

/// Everything the coordinator needs to reduce a job's outputs, small enough
/// to keep in the job's record (the inputs themselves live with the tasks).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum ReducePlan {
    /// Concatenate the values of `count` indices, in task order.
    Fibonacci(fibonacci::FibonacciReduce),
    /// Multiply the range products in a balanced tree.
    Factorial(factorial::FactorialReduce),
    /// Place each tile in the result matrix.
    Matmul(matmul::MatmulReduce),
    /// Merge the chunks' counts, then sort and cut to `top`.
    Wordcount(wordcount::WordcountReduce),
    /// Values, an exact sum, or the module's own reduce.
    Wasm(wasm::WasmReduce),
}

/// A job split into tasks, with the plan to reduce their outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    /// The tasks, in the order their outputs are reduced.
    pub tasks: Vec<(TaskInput, Cost)>,
    /// How to reduce the outputs.
    pub reduce: ReducePlan,
}

impl JobSpec {
    /// Validates the spec against the limits and splits it into tasks of
    /// about [`TARGET_TASK_WORK`] each.
    pub fn plan(&self) -> Result<JobPlan, JobError> {
        match self {
            JobSpec::Fibonacci(j) => j.plan(),
            JobSpec::Factorial(j) => j.plan(),
            JobSpec::Matmul(j) => j.plan(),
            JobSpec::Wordcount(j) => j.plan(),
            JobSpec::Wasm(j) => j.plan(),
        }
    }
}

impl ReducePlan {
    /// Reduces the outputs of every task of the job, given in task order.
    ///
    /// A wasm job reduced by its module needs the module's bytes: see
    /// [`ReducePlan::module_needed`] and [`ReducePlan::reduce_with_module`].
    pub fn reduce(&self, outputs: Vec<TaskOutput>) -> Result<JobResult, KernelError> {
        self.reduce_with_module(outputs, None, &wasm::Limits::default())
    }

    /// The module whose bytes [`ReducePlan::reduce_with_module`] needs: a
    /// wasm job with `"reduce":"module"`.
    pub fn module_needed(&self) -> Option<wasm::ModuleId> {
        match self {
            ReducePlan::Wasm(r) if r.kind == wasm::ReduceKind::Module => Some(r.module),
            _ => None,
        }
    }

    /// Reduces as [`ReducePlan::reduce`] does; a `"reduce":"module"` job
    /// calls `musketeer_reduce` from `module`'s bytes as a tree
    /// ([`wasm::reduce_tree`]) within `limits` (the coordinator's own).
    pub fn reduce_with_module(
        &self,
        outputs: Vec<TaskOutput>,
        module: Option<&[u8]>,
        limits: &wasm::Limits,
    ) -> Result<JobResult, KernelError> {
        match self {
            ReducePlan::Fibonacci(r) => r.reduce(outputs),
            ReducePlan::Factorial(r) => r.reduce(outputs),
            ReducePlan::Matmul(r) => r.reduce(outputs),
            ReducePlan::Wordcount(r) => r.reduce(outputs),
            ReducePlan::Wasm(r) => r.reduce(outputs, module, limits),
        }
    }

    /// The compact encoding kept in the job's record.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("reduce plans always encode")
    }

    /// Decodes [`ReducePlan::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<ReducePlan, KernelError> {
        postcard::from_bytes(bytes).map_err(|e| KernelError::Reduce(e.to_string()))
    }
}
