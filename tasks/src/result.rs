//! An aggregated job result, kept encoded by the coordinator and rendered on
//! request as JSON (every kernel), TSV (word count) or NPY (matmul).

use serde::{Deserialize, Serialize};

use crate::{factorial, fibonacci, matmul, wordcount};

/// A rendering that the job's kernel does not offer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("format {format:?} is not available for {kernel} results: use {offered}")]
pub struct FormatError {
    /// The format asked for.
    pub format: String,
    /// The job's kernel.
    pub kernel: &'static str,
    /// The formats this kernel offers.
    pub offered: &'static str,
}

/// A finished job's result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum JobResult {
    /// See [`fibonacci::FibonacciResult`].
    Fibonacci(fibonacci::FibonacciResult),
    /// See [`factorial::FactorialResult`].
    Factorial(factorial::FactorialResult),
    /// See [`matmul::MatmulResult`].
    Matmul(matmul::MatmulResult),
    /// See [`wordcount::WordcountResult`].
    Wordcount(wordcount::WordcountResult),
}

impl JobResult {
    /// The compact encoding the coordinator stores.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("results always encode")
    }

    /// Decodes [`JobResult::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<JobResult, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Renders the result in `format` (`json`, `tsv`, `npy`), with the
    /// content type to serve it under.
    pub fn render(&self, format: &str) -> Result<(Vec<u8>, &'static str), FormatError> {
        let (kernel, offered) = match self {
            JobResult::Fibonacci(_) => ("fibonacci", "json"),
            JobResult::Factorial(_) => ("factorial", "json"),
            JobResult::Matmul(_) => ("matmul", "json or npy"),
            JobResult::Wordcount(_) => ("wordcount", "json or tsv"),
        };
        let mut out = Vec::new();
        let content_type = match (format, self) {
            ("json", JobResult::Fibonacci(r)) => r.write_json(&mut out),
            ("json", JobResult::Factorial(r)) => r.write_json(&mut out),
            ("json", JobResult::Matmul(r)) => r.write_json(&mut out),
            ("json", JobResult::Wordcount(r)) => r.write_json(&mut out),
            ("npy", JobResult::Matmul(r)) => r.write_npy(&mut out),
            ("tsv", JobResult::Wordcount(r)) => r.write_tsv(&mut out),
            _ => {
                return Err(FormatError {
                    format: format.to_string(),
                    kernel,
                    offered,
                })
            }
        };
        Ok((out, content_type))
    }
}
