//! Factorial: n! as range products that the coordinator multiplies in a tree.

use serde::{Deserialize, Serialize};

use crate::job::JobError;
use crate::kernel::{Cost, JobPlan, KernelError};

/// The job body: `{"kernel":"factorial","n":20000}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FactorialJob {
    /// The n of n!.
    pub n: u64,
}

/// One task: the product of `lo..hi` (end exclusive).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialTask {
    /// First factor.
    pub lo: u64,
    /// One past the last factor.
    pub hi: u64,
}

/// One task's product, as little-endian u64 limbs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialOutput {
    /// The product's magnitude.
    pub limbs: Vec<u64>,
}

/// How to reduce: a balanced product tree of the range products.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialReduce {
    /// The n of n!.
    pub n: u64,
}

/// The result: `{"n":..,"digits":..,"value":".."}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialResult {
    /// The n of n!.
    pub n: u64,
    /// Decimal digits of n!.
    pub value: String,
}
