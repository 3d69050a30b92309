//! Job bodies as a submitter posts them (`POST /v1/jobs`), with the options
//! every job carries and the limits that keep one job from sinking the cluster.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::registry::Kernel;
use crate::{factorial, fibonacci, matmul, wasm, wordcount};

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
/// Label keys under this prefix are the coordinator's own: it sets them on
/// every agent (from its id and architecture), so no agent can claim them.
pub const RESERVED_LABEL_PREFIX: &str = "musketeer.";
/// The label every agent carries with its id, which `agent` targets.
pub const AGENT_LABEL: &str = "musketeer.agent";
/// The label every agent carries with its architecture, which `arch` targets.
pub const ARCH_LABEL: &str = "musketeer.arch";
/// Most tasks one job may be planned into, whatever `items_per_task` asks:
/// each task is a row in the store and a lease, so a million is already a
/// long job of tiny tasks.
pub const MAX_TASKS_PER_JOB: u64 = 1_000_000;

/// What is wrong with a job body; every message says what to change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JobError {
    /// The body is not JSON, or not a JSON object.
    #[error("the body is not a valid JSON job: {0}")]
    Malformed(String),
    /// The `kernel` field is missing or names no kernel we have.
    #[error("unknown kernel {0:?}: use one of {kernels}", kernels = Kernel::names())]
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

    /// The HTTP status the API answers this error with: 400 for a body that
    /// is not JSON, 413 for a job past the limits, 422 for the rest.
    pub fn http_status(&self) -> u16 {
        match self {
            JobError::Malformed(_) => 400,
            JobError::TooLarge(_) => 413,
            JobError::UnknownKernel(_) | JobError::Invalid(_) => 422,
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
    /// Only the agent with this id (as `agents list` shows it) leases the
    /// job's tasks, as Celery routes a task to one named worker.
    pub agent: Option<String>,
    /// Only agents of this CPU architecture (as Rust names it: `x86_64`,
    /// `aarch64`, `arm`, ...) lease the job's tasks.
    pub arch: Option<String>,
    /// Fibonacci and wasm only: exactly this many items per task instead of
    /// about 50 ms of work each, the way Celery's `chunks` splits a list.
    pub items_per_task: Option<u64>,
    /// No task is leased until this many seconds after submission
    /// (Celery's `countdown`).
    pub countdown_s: Option<u64>,
    /// No task is leased before this time, RFC 3339 (Celery's `eta`).
    pub not_before: Option<String>,
    /// A job with tasks never leased by this time, RFC 3339, ends `expired`.
    pub expires: Option<String>,
    /// The result is deleted this many seconds after the job succeeded.
    pub result_ttl_s: Option<u64>,
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
            agent: None,
            arch: None,
            items_per_task: None,
            countdown_s: None,
            not_before: None,
            expires: None,
            result_ttl_s: None,
        }
    }
}

/// The longest delay or lifetime a job may ask for (a countdown, a result
/// TTL): a year; longer is almost surely a unit mistake.
pub const MAX_DELAY_S: u64 = 366 * 86_400;

/// The option keys, so they can be told apart from a kernel's own fields.
const OPTION_KEYS: [&str; 13] = [
    "queue",
    "priority",
    "max_attempts",
    "timeout_s",
    "redundancy",
    "labels",
    "agent",
    "arch",
    "items_per_task",
    "countdown_s",
    "not_before",
    "expires",
    "result_ttl_s",
];

/// An agent id or architecture name: short, and plain enough to be a label value.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

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
        if let Some(key) = self
            .labels
            .keys()
            .find(|k| k.starts_with(RESERVED_LABEL_PREFIX))
        {
            return bad(format!(
                "label {key:?} is reserved for the coordinator: use the `agent` or `arch` option to target an agent"
            ));
        }
        if let Some(a) = &self.agent {
            if !is_plain_name(a) {
                return bad(format!(
                    "`agent` is {a:?}: give an agent id as `musketeer-coordinator agents list` shows it"
                ));
            }
        }
        if let Some(a) = &self.arch {
            if !is_plain_name(a) {
                return bad(format!(
                    "`arch` is {a:?}: give an architecture as Rust names it, such as x86_64 or aarch64"
                ));
            }
        }
        if self.countdown_s.is_some() && self.not_before.is_some() {
            return bad(
                "`countdown_s` and `not_before` both say when the job may start: give one".into(),
            );
        }
        if let Some(c) = self.countdown_s {
            if c > MAX_DELAY_S {
                return bad(format!("`countdown_s` is {c}: use 0 to {MAX_DELAY_S}"));
            }
        }
        if let Some(t) = self.result_ttl_s {
            if t == 0 || t > MAX_DELAY_S {
                return bad(format!("`result_ttl_s` is {t}: use 1 to {MAX_DELAY_S}"));
            }
        }
        if self.items_per_task == Some(0) {
            return bad(
                "`items_per_task` is 0: use 1 or more, or leave it out to size tasks by work"
                    .into(),
            );
        }
        Ok(())
    }

    /// Every label an agent must carry: the job's own, plus the reserved
    /// ones that `agent` and `arch` stand for.
    pub fn required_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        if let Some(a) = &self.agent {
            labels.insert(AGENT_LABEL.to_string(), a.clone());
        }
        if let Some(a) = &self.arch {
            labels.insert(ARCH_LABEL.to_string(), a.clone());
        }
        labels
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
    /// An uploaded WebAssembly module mapped over items.
    Wasm(wasm::WasmJob),
}

impl JobSpec {
    /// The kernel's name as the API spells it.
    pub fn kernel(&self) -> &'static str {
        self.kind().name()
    }

    /// The module a wasm job runs (which must be stored before it is accepted).
    pub fn module(&self) -> Option<wasm::ModuleId> {
        match self {
            JobSpec::Wasm(j) => Some(j.module),
            _ => None,
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
            return Err(JobError::Invalid(format!(
                "missing field `kernel`: use one of {}",
                Kernel::names()
            )))
        }
        Some(Value::String(k)) => k.clone(),
        Some(other) => return Err(JobError::UnknownKernel(other.to_string())),
    };
    if Kernel::from_name(&kernel).is_none() {
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
    if options.items_per_task.is_some() && !matches!(spec, JobSpec::Fibonacci(_) | JobSpec::Wasm(_))
    {
        return Err(JobError::Invalid(format!(
            "`items_per_task` applies to fibonacci and wasm jobs only; {kernel} sizes its tasks by work: leave it out"
        )));
    }
    Ok((spec, options))
}

impl JobSpec {
    /// Plans the job as [`JobSpec::plan`] does, honouring the options that
    /// shape tasks (`items_per_task`), within [`MAX_TASKS_PER_JOB`].
    pub fn plan_with(&self, options: &JobOptions) -> Result<crate::kernel::JobPlan, JobError> {
        self.plan_measured(options, None)
    }

    /// Plans as [`JobSpec::plan_with`] does; a wasm job without
    /// `items_per_task` gets tasks of about [`crate::kernel::TARGET_TASK_WORK`]
    /// when `fuel_per_item`, a measured cost of its module's items (from
    /// earlier runs), is known.
    pub fn plan_measured(
        &self,
        options: &JobOptions,
        fuel_per_item: Option<u64>,
    ) -> Result<crate::kernel::JobPlan, JobError> {
        match (self, options.items_per_task) {
            (JobSpec::Wasm(j), k) => j.plan_sized(k, fuel_per_item),
            (JobSpec::Fibonacci(j), Some(k)) => {
                let items = j.item_count();
                let tasks = items.div_ceil(k);
                if tasks > MAX_TASKS_PER_JOB {
                    return Err(JobError::TooLarge(format!(
                        "{items} indices at {k} per task make {tasks} tasks; the limit is {MAX_TASKS_PER_JOB}: raise `items_per_task`"
                    )));
                }
                j.plan_in_chunks(Some(k))
            }
            _ => self.plan(),
        }
    }
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

    #[test]
    fn agent_and_arch_become_reserved_labels() {
        let (_, opts) = parse_job(
            br#"{"kernel":"factorial","n":10,"agent":"a1b2","arch":"aarch64","labels":{"gpu":"yes"}}"#,
        )
        .unwrap();
        let labels = opts.required_labels();
        assert_eq!(labels[AGENT_LABEL], "a1b2");
        assert_eq!(labels[ARCH_LABEL], "aarch64");
        assert_eq!(labels["gpu"], "yes");
        let e = parse_job(br#"{"kernel":"factorial","n":10,"labels":{"musketeer.agent":"x"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        let e = parse_job(br#"{"kernel":"factorial","n":10,"agent":"a b"}"#).unwrap_err();
        assert!(e.to_string().contains("agents list"), "{e}");
        let e = parse_job(br#"{"kernel":"factorial","n":10,"arch":""}"#).unwrap_err();
        assert!(e.to_string().contains("x86_64"), "{e}");
    }

    #[test]
    fn items_per_task_splits_fibonacci_exactly() {
        let (spec, opts) = parse_job(
            br#"{"kernel":"fibonacci","range":{"start":0,"end":1000},"items_per_task":7}"#,
        )
        .unwrap();
        let plan = spec.plan_with(&opts).unwrap();
        assert_eq!(plan.tasks.len(), 143);
        let (spec, opts) =
            parse_job(br#"{"kernel":"fibonacci","n":[1,2,3,4,5],"items_per_task":2}"#).unwrap();
        assert_eq!(spec.plan_with(&opts).unwrap().tasks.len(), 3);
        // Without the option, the same job is one task of a few nanoseconds.
        let (spec, opts) = parse_job(br#"{"kernel":"fibonacci","n":[1,2,3,4,5]}"#).unwrap();
        assert_eq!(spec.plan_with(&opts).unwrap().tasks.len(), 1);
    }

    #[test]
    fn time_options_are_checked() {
        let (_, o) =
            parse_job(br#"{"kernel":"factorial","n":10,"countdown_s":5,"result_ttl_s":60}"#)
                .unwrap();
        assert_eq!((o.countdown_s, o.result_ttl_s), (Some(5), Some(60)));
        let e = parse_job(
            br#"{"kernel":"factorial","n":10,"countdown_s":5,"not_before":"2026-12-01T00:00:00Z"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("give one"), "{e}");
        let e = parse_job(br#"{"kernel":"factorial","n":10,"result_ttl_s":0}"#).unwrap_err();
        assert!(e.to_string().contains("result_ttl_s"), "{e}");
        let e = parse_job(br#"{"kernel":"factorial","n":10,"countdown_s":99999999}"#).unwrap_err();
        assert!(e.to_string().contains("countdown_s"), "{e}");
    }

    #[test]
    fn items_per_task_is_checked() {
        let e = parse_job(br#"{"kernel":"factorial","n":10,"items_per_task":2}"#).unwrap_err();
        assert!(
            e.to_string().contains("fibonacci and wasm jobs only"),
            "{e}"
        );
        let e = parse_job(br#"{"kernel":"fibonacci","n":[1],"items_per_task":0}"#).unwrap_err();
        assert!(e.to_string().contains("items_per_task"), "{e}");
        let (spec, opts) = parse_job(
            br#"{"kernel":"fibonacci","range":{"start":0,"end":2000000},"items_per_task":1}"#,
        )
        .unwrap();
        let e = spec.plan_with(&opts).unwrap_err();
        assert!(matches!(e, JobError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("raise `items_per_task`"), "{e}");
    }
}
