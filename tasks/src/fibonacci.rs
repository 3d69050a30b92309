//! Fibonacci: exact F(n) by fast doubling, as decimal strings.

use serde::{Deserialize, Serialize};

use crate::job::JobError;
use crate::kernel::{Cost, JobPlan, KernelError};

/// The job body: `{"kernel":"fibonacci","n":[..]}` or `{"kernel":"fibonacci","range":{"start":a,"end":b}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FibonacciJob {
    /// Indices to compute, in the order results are wanted.
    pub n: Option<Vec<u64>>,
    /// Or a range of indices, end exclusive.
    pub range: Option<IndexRange>,
}

/// A half-open range of indices.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexRange {
    /// First index.
    pub start: u64,
    /// One past the last index.
    pub end: u64,
}

/// One task: a slice of the job's indices.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum FibonacciTask {
    /// These indices.
    List(Vec<u64>),
    /// Every index of the range.
    Range(IndexRange),
}

/// One task's values: decimal digits back to back, and where each ends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FibonacciOutput {
    /// All values' digits, concatenated (one allocation, not one per value).
    pub digits: String,
    /// `digits[ends[i-1]..ends[i]]` is the i-th value.
    pub ends: Vec<u64>,
}

/// How to reduce: concatenate the tasks' values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FibonacciReduce {
    /// How many values the job has.
    pub count: u64,
}

/// The result: every value, in input order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FibonacciResult {
    /// Same layout as [`FibonacciOutput`].
    pub values: FibonacciOutput,
}
