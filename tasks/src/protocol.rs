//! The agent protocol: what agents and the coordinator say to each other
//! under `/v1/agent/`. Control messages are JSON; the two bulk messages (a
//! lease of tasks, a batch of results) are postcard, because they carry text
//! chunks and matrices that JSON would inflate and slow down.
//!
//! | call | request | response |
//! |---|---|---|
//! | `POST /v1/agent/enrol` | [`EnrolRequest`] (JSON, no auth) | [`EnrolResponse`] |
//! | `POST /v1/agent/lease` | [`LeaseRequest`] (JSON) | [`LeaseResponse`] (postcard) |
//! | `POST /v1/agent/results` | [`ResultBatch`] (postcard) | [`ResultAck`] (JSON) |
//! | `POST /v1/agent/heartbeat` | [`Heartbeat`] (JSON) | [`HeartbeatAck`] (JSON) |
//! | `POST /v1/agent/release` | [`Release`] (JSON) | [`ReleaseAck`] (JSON) |
//! | `GET /v1/agent/update?target=T` | | [`ReleaseInfo`] (JSON; 404 `no_release`) |
//! | `GET /v1/agent/update/{target}/{version}` | | the release's binary |
//! | `GET /v1/agent/modules/{id}` | | a WebAssembly module's bytes (`application/wasm`; 404 `not_found`) |
//!
//! Every call but `enrol` carries `Authorization: Bearer <agent credential>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kernel::Cost;

/// Content type of the postcard-encoded bulk messages.
pub const POSTCARD_CONTENT_TYPE: &str = "application/x-musketeer-postcard";

/// Encodes `value` with postcard into one buffer of exactly the right size.
///
/// `postcard::to_stdvec` grows its buffer by doubling; for the bulk messages
/// (megabytes of text per task) every growth is another copy into freshly
/// faulted pages, which measurably slowed leasing.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(size))
}

/// What an agent offers, as it advertises it at enrolment and on each lease.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capacity {
    /// Cores the agent will use (after its owner's `--cpus` limit).
    pub cpus: u32,
    /// Bytes of memory the agent may use for tasks (after `--memory`).
    pub memory_bytes: u64,
    /// CPU architecture, as Rust's `std::env::consts::ARCH` names it.
    pub arch: String,
    /// Operating system, as `std::env::consts::OS` names it.
    pub os: String,
    /// The host's name, for the operator's eyes only.
    pub hostname: String,
    /// The agent's version.
    pub version: String,
    /// Queues this agent serves; empty means the default queue only.
    pub queues: Vec<String>,
    /// Labels a job can require (`--label k=v`).
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/agent/enrol`: trade a join token for an agent credential.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnrolRequest {
    /// The join token, whole (`MSKTKN-1-...`).
    pub token: String,
    /// What the agent offers.
    pub capacity: Capacity,
}

/// The answer to an enrolment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnrolResponse {
    /// The agent's id, as the operator sees it in `agents list`.
    pub agent_id: String,
    /// The bearer credential for every later call; the coordinator keeps only its hash.
    pub credential: String,
    /// The CA to trust from now on, PEM (the one the token's digest pinned).
    pub ca_pem: Option<String>,
    /// The ed25519 public key (64 hex digits) that signs agent releases, if
    /// the operator configured one. The agent keeps the key it got here for
    /// good, so that whoever later takes over the coordinator cannot push
    /// it a binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

/// `POST /v1/agent/lease`: ask for a batch of tasks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Total estimated work wanted in this batch (see [`Cost::work`]).
    pub max_work: u64,
    /// At most this many tasks.
    pub max_tasks: u32,
    /// How long the coordinator may hold the call open when it has no work.
    pub wait_ms: u64,
    /// The agent's current capacity (limits can change while it runs).
    pub capacity: Capacity,
}

/// Names one lease of one task; stale names are refused, so a result from a
/// lease that expired and was handed to someone else is never counted twice.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskRef {
    /// The job's id.
    pub job: String,
    /// The task's index within its job.
    pub index: u32,
    /// The lease's id, unique across the coordinator's life.
    pub lease: u64,
}

/// One task handed to an agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LeasedTask {
    /// Which task, under which lease.
    pub task: TaskRef,
    /// The planner's estimate.
    pub cost: Cost,
    /// Stop the task and report it failed after this long.
    pub timeout_ms: Option<u64>,
    /// The encoded [`crate::TaskInput`].
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
}

/// The answer to a lease call (postcard).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LeaseResponse {
    /// The batch; empty when the wait ran out with no work.
    pub tasks: Vec<LeasedTask>,
    /// Leases expire this long after they are granted or last renewed.
    pub lease_ttl_ms: u64,
}

/// How a task ended on the agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum TaskOutcome {
    /// The encoded [`crate::TaskOutput`].
    Done(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The task failed; the reason is shown to the submitter if it was the last try.
    Failed(String),
}

/// One finished task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskReport {
    /// Which task and lease.
    pub task: TaskRef,
    /// CPU time the task took, for credit and speed estimates.
    pub cpu_ms: u64,
    /// What came of it.
    pub outcome: TaskOutcome,
}

/// `POST /v1/agent/results` (postcard): a batch of finished tasks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResultBatch {
    /// The reports.
    pub results: Vec<TaskReport>,
}

/// The answer to a result batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResultAck {
    /// Reports recorded.
    pub accepted: u32,
    /// Reports for leases no longer held (expired, cancelled, already done): ignored.
    pub stale: u32,
}

/// `POST /v1/agent/heartbeat`: the agent is alive and still on these tasks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    /// Leases to renew.
    pub running: Vec<TaskRef>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeartbeatAck {
    /// Leases this agent no longer holds: stop working on them.
    pub lost: Vec<TaskRef>,
    /// The agent has been told to drain: finish what it holds, lease nothing new.
    pub drain: bool,
}

/// `POST /v1/agent/release`: give leased tasks back unfinished (on shutdown).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    /// The leases to give back.
    pub tasks: Vec<TaskRef>,
    /// The agent is shutting down: a long poll of its still open ends at
    /// once, empty, instead of leasing tasks into an answer nobody reads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

/// The answer to a release.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseAck {
    /// Tasks returned to the queue.
    pub released: u32,
}

/// A published agent release, as `GET /v1/agent/update` and
/// `GET /v1/releases` describe it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// The Rust target triple the binary is built for.
    pub target: String,
    /// Its version (semver).
    pub version: String,
    /// SHA-256 of the binary, hex.
    pub sha256: String,
    /// The ed25519 signature over [`release_message`], hex.
    pub signature: String,
    /// The binary's size in bytes.
    pub size: u64,
}

/// What a release's ed25519 signature covers: a domain tag, the target, the
/// version and the binary's SHA-256, so that a signature can neither be
/// moved to other bytes, nor to another target (a bricked Raspberry Pi), nor
/// to another version (a downgrade to an old, signed, vulnerable build).
pub fn release_message(target: &str, version: &str, sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + target.len() + version.len());
    m.extend_from_slice(b"musketeer-release-v1\0");
    m.extend_from_slice(target.as_bytes());
    m.push(0);
    m.extend_from_slice(version.as_bytes());
    m.push(0);
    m.extend_from_slice(sha256);
    m
}

/// The error body of every failed API call: `{"error":{"code":..,"message":..}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Machine-readable, stable: `unauthorized`, `invalid_job`, ...
    pub code: String,
    /// For a person: what went wrong and what to do.
    pub message: String,
}

/// Longest failure reason kept from an agent: enough for any real error
/// message; the rest of a longer one is cut, so an agent cannot fill the
/// store with one report.
pub const MAX_REASON_BYTES: usize = 4096;

/// Longest job id a report may name (ids are UUIDs, 36 characters).
const MAX_JOB_ID_BYTES: usize = 64;

/// Why an uploaded result batch is refused whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
    /// Not a postcard [`ResultBatch`], or bytes left over after one.
    #[error("the result batch does not decode: {0}")]
    Malformed(String),
    /// More reports than one call may carry.
    #[error("{got} results in one batch; at most {max} per batch: upload in smaller batches")]
    TooMany {
        /// Reports in the batch.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A report names a task no coordinator could have leased.
    #[error("a report names job {0:?}, which is no job id")]
    BadTaskRef(String),
}

impl ResultBatch {
    /// Decodes and checks an uploaded batch as the coordinator does before
    /// recording anything: exactly one batch, at most `max_reports`
    /// reports, plausible task names, failure reasons cut to
    /// [`MAX_REASON_BYTES`]. Outputs stay opaque here; they are decoded
    /// (and a report whose output does not decode counts as failed) when
    /// the results are recorded.
    pub fn decode_upload(bytes: &[u8], max_reports: usize) -> Result<ResultBatch, UploadError> {
        let (mut batch, rest): (ResultBatch, _) =
            postcard::take_from_bytes(bytes).map_err(|e| UploadError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(UploadError::Malformed(format!(
                "{} bytes follow the batch",
                rest.len()
            )));
        }
        if batch.results.len() > max_reports {
            return Err(UploadError::TooMany {
                got: batch.results.len(),
                max: max_reports,
            });
        }
        for r in &mut batch.results {
            if r.task.job.is_empty() || r.task.job.len() > MAX_JOB_ID_BYTES {
                let mut job = r.task.job.clone();
                truncate_at_char(&mut job, MAX_JOB_ID_BYTES);
                return Err(UploadError::BadTaskRef(job));
            }
            if let TaskOutcome::Failed(reason) = &mut r.outcome {
                truncate_at_char(reason, MAX_REASON_BYTES);
            }
        }
        Ok(batch)
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod upload_tests {
    use super::*;

    fn report(job: &str, outcome: TaskOutcome) -> TaskReport {
        TaskReport {
            task: TaskRef {
                job: job.into(),
                index: 0,
                lease: 1,
            },
            cpu_ms: 1,
            outcome,
        }
    }

    #[test]
    fn a_good_batch_decodes_as_sent() {
        let batch = ResultBatch {
            results: vec![
                report("j", TaskOutcome::Done(vec![1, 2, 3])),
                report("j", TaskOutcome::Failed("out of memory".into())),
            ],
        };
        let bytes = encode(&batch).unwrap();
        assert_eq!(ResultBatch::decode_upload(&bytes, 2).unwrap(), batch);
    }

    #[test]
    fn bad_batches_are_refused_whole() {
        let one = ResultBatch {
            results: vec![report("j", TaskOutcome::Done(vec![]))],
        };
        let mut bytes = encode(&one).unwrap();
        assert!(matches!(
            ResultBatch::decode_upload(&bytes, 0),
            Err(UploadError::TooMany { got: 1, max: 0 })
        ));
        assert!(matches!(
            ResultBatch::decode_upload(&bytes[..bytes.len() - 1], 4),
            Err(UploadError::Malformed(_))
        ));
        bytes.push(0);
        let e = ResultBatch::decode_upload(&bytes, 4).unwrap_err();
        assert!(e.to_string().contains("1 bytes follow"), "{e}");
        let nameless = ResultBatch {
            results: vec![report("", TaskOutcome::Done(vec![]))],
        };
        assert!(matches!(
            ResultBatch::decode_upload(&encode(&nameless).unwrap(), 4),
            Err(UploadError::BadTaskRef(_))
        ));
    }

    #[test]
    fn long_reasons_are_cut_on_a_character() {
        let reason = "é".repeat(MAX_REASON_BYTES);
        let batch = ResultBatch {
            results: vec![report("j", TaskOutcome::Failed(reason))],
        };
        let got = ResultBatch::decode_upload(&encode(&batch).unwrap(), 1).unwrap();
        let TaskOutcome::Failed(cut) = &got.results[0].outcome else {
            panic!("a failure stays a failure")
        };
        assert_eq!(cut.len(), MAX_REASON_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_messages_differ_by_every_field() {
        let digest = [7u8; 32];
        let base = release_message("x86_64-unknown-linux-musl", "1.2.3", &digest);
        assert_ne!(
            base,
            release_message("aarch64-unknown-linux-musl", "1.2.3", &digest)
        );
        assert_ne!(
            base,
            release_message("x86_64-unknown-linux-musl", "1.2.4", &digest)
        );
        assert_ne!(
            base,
            release_message("x86_64-unknown-linux-musl", "1.2.3", &[8u8; 32])
        );
        // The separators keep "a" + "b1" apart from "ab" + "1".
        assert_ne!(
            release_message("a", "b1", &digest),
            release_message("ab", "1", &digest)
        );
    }

    #[test]
    fn old_enrol_answers_still_parse() {
        let old = r#"{"agent_id":"a","credential":"c","ca_pem":null}"#;
        let resp: EnrolResponse = serde_json::from_str(old).unwrap();
        assert_eq!(resp.release_key, None);
    }
}
