//! Your own kernels: WebAssembly modules (ABI version 1, see SPEC.md's
//! "Your own kernels"), checked, run sandboxed and reduced.
//!
//! - [`id`]: [`ModuleId`], a module's content address.
//! - [`validate`](mod@validate): the ABI and the limits, checked at upload and before runs.
//! - [`abi`]: export names and reading a guest's output.
//! - [`limits`]: fuel, memory, tables, stack and output limits of a run.
//! - [`engine`]: running modules with wasmi ([`map_items`], [`reduce`], [`reduce_tree`]).
//! - [`sum`]: the exact decimal sum of `"reduce":"sum"`.
//! - [`kernel`]: the `wasm` job, its tasks, outputs, reduce and result.

pub mod abi;
pub mod engine;
pub mod id;
pub mod kernel;
pub mod limits;
pub mod sum;
pub mod validate;

#[cfg(test)]
mod tests;

pub use abi::{decode_output, OutputError};
pub use engine::{
    json_array, map_items, reduce, reduce_tree, Compiled, MapOutcome, ReduceOutcome, WasmError,
    Where, DEFAULT_FAN_IN,
};
pub use id::{ModuleId, ModuleIdError};
pub use kernel::{ReduceKind, WasmJob, WasmOutput, WasmReduce, WasmResult, WasmTask};
pub use limits::Limits;
pub use validate::{validate, ModuleError, ModuleInfo};
