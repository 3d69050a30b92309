//! Job bodies as a submitter posts them (`POST /v1/jobs`), with the options
//! every job carries and the limits that keep one job from sinking the cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{factorial, fibonacci, matmul, wordcount};

/// The queue a job goes to when it names none.
pub const DEFAULT_QUEUE: &str = "default";
/// Priority of a job that names none; 9 runs first, 0 last.
pub const DEFAULT_PRIORITY: u8 = 5;
/// How often a task is tried before its job fails, unless the job says.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// More attempts than this is a runaway retry loop, not resilience.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Agreement among more agents than this buys nothing but cost.
pub const MAX_REDUNDANCY: u32 = 16;
/// A day: a longer per-task timeout is almost surely a unit mistake.
pub const MAX_TIMEOUT_S: u64 = 86_400;

/// What is wrong with a job body; every message says what to change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JobError {
    /// The body is not JSON, or not a JSON object.
    #[error("the body is not a valid JSON job: {0}")]
    Malformed(String),
    /// The `kernel` field is missing or names no kernel we have.
    #[error("unknown kernel {0:?}: use one of fibonacci, factorial, matmul, wordcount")]
    UnknownKernel(String),
    /// A field has the wrong type, is missing, or is not known.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The job is well formed but larger than this coordinator accepts.
    #[error("job too large: {0}")]
    TooLarge(String),
}

impl JobError {
    /// The machine-readable code of the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Malformed(_) => "malformed_json",
            JobError::UnknownKernel(_) => "unknown_kernel",
            JobError::Invalid(_) => "invalid_job",
            JobError::TooLarge(_) => "job_too_large",
        }
    }
}

/// Options every job carries, whatever its kernel.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JobOptions {
    /// Only agents serving this queue lease the job's tasks.
    pub queue: String,
    /// 0..=9; tasks of higher-priority jobs are leased first.
    pub priority: u8,
    /// Tries per task before the job fails with the last reason.
    pub max_attempts: u32,
    /// Per task: an agent stops a task that runs longer and reports it failed.
    pub timeout_s: Option<u64>,
    /// How many distinct agents must return the same answer.
    pub redundancy: u32,
    /// An agent must carry every one of these labels to lease the job's tasks.
    pub labels: BTreeMap<String, String>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            queue: DEFAULT_QUEUE.to_string(),
            priority: DEFAULT_PRIORITY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout_s: None,
            redundancy: 1,
            labels: BTreeMap::new(),
        }
    }
}

/// The option keys, so they can be told apart from a kernel's own fields.
const OPTION_KEYS: [&str; 6] = [
    "queue",
    "priority",
    "max_attempts",
    "timeout_s",
    "redundancy",
    "labels",
];

impl JobOptions {
    /// Checks ranges that serde's types cannot express.
    pub fn validate(&self) -> Result<(), JobError> {
        let bad = |m: String| Err(JobError::Invalid(m));
        if self.queue.is_empty() || self.queue.len() > 64 {
            return bad("`queue` must be 1 to 64 characters".into());
        }
        if self.priority > 9 {
            return bad(format!("`priority` is {}: use 0 to 9", self.priority));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return bad(format!(
                "`max_attempts` is {}: use 1 to {MAX_ATTEMPTS_LIMIT}",
                self.max_attempts
            ));
        }
        if let Some(t) = self.timeout_s {
            if t == 0 || t > MAX_TIMEOUT_S {
                return bad(format!("`timeout_s` is {t}: use 1 to {MAX_TIMEOUT_S}"));
            }
        }
        if self.redundancy == 0 || self.redundancy > MAX_REDUNDANCY {
            return bad(format!(
                "`redundancy` is {}: use 1 to {MAX_REDUNDANCY}",
                self.redundancy
            ));
        }
        Ok(())
    }
}

/// A job's kernel and its inputs, as posted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kernel", rename_all = "lowercase")]
pub enum JobSpec {
    /// Exact Fibonacci numbers of a list or a range of indices.
    Fibonacci(fibonacci::FibonacciJob),
    /// Exact n!, split into range products.
    Factorial(factorial::FactorialJob),
    /// A dense f64 matrix product, tiled.
    Matmul(matmul::MatmulJob),
    /// Word frequencies of a text, mapped over chunks and merged.
    Wordcount(wordcount::WordcountJob),
}

impl JobSpec {
    /// The kernel's name as the API spells it.
    pub fn kernel(&self) -> &'static str {
        match self {
            JobSpec::Fibonacci(_) => "fibonacci",
            JobSpec::Factorial(_) => "factorial",
            JobSpec::Matmul(_) => "matmul",
            JobSpec::Wordcount(_) => "wordcount",
        }
    }
}

/// Parses a `POST /v1/jobs` body into the kernel's spec and the job options.
///
/// Unknown fields are refused rather than ignored, so that a typo such as
/// `"priorty"` is an error the submitter sees, not a silent default.
pub fn parse_job(body: &[u8]) -> Result<(JobSpec, JobOptions), JobError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| JobError::Malformed(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(JobError::Malformed("expected a JSON object".into()));
    };
    let kernel = match fields.get("kernel") {
        None => {
            return Err(JobError::Invalid(
                "missing field `kernel`: use one of fibonacci, factorial, matmul, wordcount".into(),
            ))
        }
        Some(Value::String(k)) => k.clone(),
        Some(other) => return Err(JobError::UnknownKernel(other.to_string())),
    };
    if !["fibonacci", "factorial", "matmul", "wordcount"].contains(&kernel.as_str()) {
        return Err(JobError::UnknownKernel(kernel));
    }
    let mut options = Map::new();
    for key in OPTION_KEYS {
        if let Some(v) = fields.remove(key) {
            options.insert(key.to_string(), v);
        }
    }
    let options: JobOptions = serde_json::from_value(Value::Object(options))
        .map_err(|e| JobError::Invalid(e.to_string()))?;
    options.validate()?;
    let spec: JobSpec = serde_json::from_value(Value::Object(fields))
        .map_err(|e| JobError::Invalid(format!("{kernel}: {e}")))?;
    Ok((spec, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_and_parse() {
        let (spec, opts) = parse_job(br#"{"kernel":"factorial","n":10,"priority":9}"#).unwrap();
        assert_eq!(spec.kernel(), "factorial");
        assert_eq!(opts.priority, 9);
        assert_eq!(opts.queue, "default");
        assert_eq!(opts.max_attempts, 3);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert!(matches!(parse_job(b"{"), Err(JobError::Malformed(_))));
        assert!(matches!(parse_job(b"[1]"), Err(JobError::Malformed(_))));
        assert_eq!(
            parse_job(br#"{"kernel":"sort"}"#),
            Err(JobError::UnknownKernel("sort".into()))
        );
        let e = parse_job(br#"{"kernel":"factorial","n":10,"priorty":1}"#).unwrap_err();
        assert!(e.to_string().contains("priorty"), "{e}");
        let e = parse_job(br#"{"kernel":"factorial","n":10,"priority":12}"#).unwrap_err();
        assert!(e.to_string().contains("priority"), "{e}");
        let e = parse_job(br#"{"n":10}"#).unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
    }
}
