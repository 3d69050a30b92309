//! Musketeer's kernels and the types that the agent and the coordinator share.
//!
//! Pure code: nothing here touches the network, the disk or the clock, so
//! every kernel can be tested against an independent reference in-process.
//!
//! # Layout
//! - [`registry`]: the one table of kernels (name, wire tag) that job
//!   parsing, the agent and both stores derive theirs from.
//! - [`job`]: the job bodies a submitter posts, their options and limits.
//! - [`kernel`]: one job's plan (its tasks and how to reduce them), the
//!   task inputs an agent runs and the outputs it returns.
//! - [`fibonacci`], [`factorial`], [`matmul`], [`wordcount`]: one module per
//!   kernel, each with its split, its map and its reduce.
//! - [`result`]: an aggregated job result and its renderings (JSON, TSV, NPY).
//! - [`protocol`]: the messages agents and the coordinator exchange.
//! - [`token`]: the join token, which pins the coordinator's CA.
//! - [`wasm`]: the `wasm` kernel: uploaded WebAssembly modules, sandboxed.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod factorial;
pub mod fibonacci;
pub mod job;
pub mod kernel;
pub mod matmul;
pub mod protocol;
pub mod registry;
pub mod result;
pub mod samples;
pub mod size;
pub mod token;
pub mod wasm;
pub mod wordcount;

pub use job::{JobError, JobOptions, JobSpec};
pub use kernel::{Cost, JobPlan, KernelError, ReducePlan, TaskInput, TaskOutput};
pub use registry::Kernel;
pub use result::JobResult;
