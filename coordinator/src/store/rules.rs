//! The lease and retry rules every store applies, written once: the Rust
//! functions are what the embedded store (and the Redis store's Rust side)
//! call, and [`lua_prelude`] hands the Redis scripts the same rules, as Lua
//! generated from the constants here, so the two stores cannot drift
//! apart. The differential test (`redis/differential.rs`) runs both stores
//! side by side on leases with batch limits, retries and expiries.
//!
//! Vote rules (quorum, extra replicas, trust) are in [`super::validation`].

use super::LeaseQuery;

/// Most tasks one lease call looks at (per job, on Redis) before giving up:
/// bounds the time the store is held when a queue is full of work this
/// agent cannot take (labels it lacks); the long-poll looks again later.
pub const MAX_LEASE_SCAN: u64 = 16_384;

/// Most CPU time credited for one task (a week): the figure comes from the
/// agent, and an absurd one must neither inflate credit nor overflow it.
/// The scheduler clamps reports to it before any store sees them.
pub const MAX_REPORTED_CPU_MS: u64 = 7 * 24 * 3600 * 1000;

/// A batch may go past the agent's `max_work` by this fraction of it (as
/// numerator / denominator, 3/2 = 1.5x) to take one more task, so that a
/// batch a little short of full is not sent with room to spare.
pub const OVERFILL: (u64, u64) = (3, 2);

/// What a lease call has granted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Tasks granted.
    pub tasks: u64,
    /// Their summed work.
    pub work: u64,
    /// Their summed input bytes.
    pub bytes: u64,
}

impl Batch {
    /// Whether the batch is full: as many tasks as asked for, or (once it
    /// holds one) the work or bytes the agent asked for.
    pub fn is_full(&self, q: &LeaseQuery) -> bool {
        self.tasks >= u64::from(q.max_tasks)
            || (self.tasks > 0 && (self.work >= q.max_work || self.bytes >= q.max_bytes))
    }

    /// Whether a task of `work` would take the batch past [`OVERFILL`] of
    /// the agent's `max_work`. The first task always fits, even one larger
    /// than asked for: otherwise big tasks would never run.
    pub fn overfills(&self, q: &LeaseQuery, work: u64) -> bool {
        self.tasks > 0
            && self.work.saturating_add(work) > q.max_work.saturating_mul(OVERFILL.0) / OVERFILL.1
    }

    /// Counts a granted task.
    pub fn add(&mut self, work: u64, bytes: u64) {
        self.tasks += 1;
        self.work = self.work.saturating_add(work);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// How long a failed job keeps its task inputs and its done tasks' outputs,
/// so that an admin can retry its failed tasks (`POST /v1/jobs/{id}/retry`);
/// then they are deleted, as a cancelled job's are at once. A day: long
/// enough to notice a failure overnight and fix its cause (a module, an
/// agent), short enough that failed uploads do not fill the disk for good.
/// One fixed period rather than the job's `result_ttl_s`, which says how
/// long a succeeded job's result is wanted and is often unset (forever).
pub const FAILED_JOB_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// When the embedded store deletes a failed job's inputs: a minute past
/// [`FAILED_JOB_RETENTION_MS`], so that a retry that passed its check a
/// moment before the purge (their clocks read apart) never finds its files
/// gone. (Redis needs no margin: its retry checks and its expiry deletes
/// under one clock, atomically.)
pub const FAILED_JOB_PURGE_AFTER_MS: u64 = FAILED_JOB_RETENTION_MS + 60_000;

/// Whether a job that failed at `finished_ms` still keeps what a retry
/// needs at `now_ms` (see [`FAILED_JOB_RETENTION_MS`]).
pub fn failed_job_kept(finished_ms: u64, now_ms: u64) -> bool {
    now_ms < finished_ms.saturating_add(FAILED_JOB_RETENTION_MS)
}

/// How long a failed task waits before its next attempt: doubling from one
/// second, so a task that fails for a passing reason (an agent out of memory)
/// is not retried at once on the same kind of agent, capped at five minutes.
pub fn retry_backoff_ms(attempts: u32) -> u64 {
    1000u64
        .saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(300_000)
}

/// The attempt counts past which [`retry_backoff_ms`] no longer grows.
const BACKOFF_STEPS: u32 = 9;

/// What becomes of a task whose attempt ended without a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Out of attempts: the task fails, and its job with it.
    Fail,
    /// Queued again, leasable from this time (ms).
    Retry {
        /// When it may be leased again.
        not_before_ms: u64,
    },
}

/// The retry policy: a task that has had `attempts` of `max_attempts` is
/// failed, or retried at once (`backoff` false: its agent was lost, not its
/// task) or after [`retry_backoff_ms`].
pub fn after_attempt(attempts: u32, max_attempts: u32, backoff: bool, now_ms: u64) -> AfterAttempt {
    if attempts >= max_attempts {
        AfterAttempt::Fail
    } else {
        let wait = if backoff {
            retry_backoff_ms(attempts)
        } else {
            0
        };
        AfterAttempt::Retry {
            not_before_ms: now_ms + wait,
        }
    }
}

/// Why a task's job fails when it runs out of attempts.
pub fn out_of_attempts_reason(
    idx: impl std::fmt::Display,
    attempts: impl std::fmt::Display,
    reason: &str,
) -> String {
    format!("task {idx} failed after {attempts} attempt(s): {reason}")
}

/// The rules above as Lua, for the Redis scripts (prepended to every
/// per-job script by `job_lib.lua`). Each function mirrors the Rust one of
/// the same name; the numbers come from the constants above.
pub fn lua_prelude() -> String {
    let backoff: Vec<String> = (1..=BACKOFF_STEPS)
        .map(|a| retry_backoff_ms(a).to_string())
        .collect();
    let reason = out_of_attempts_reason(
        "]] .. idx .. [[",
        "]] .. attempts .. [[",
        "]] .. reason .. [[",
    );
    format!(
        r#"-- Generated by coordinator/src/store/rules.rs: do not edit here.
local MAX_LEASE_SCAN = {scan}
local FAILED_JOB_RETENTION_MS = {retention}
local BACKOFF = {{{backoff}}}

-- Batch::is_full
local function batch_full(granted, tasks_left, work, max_work, bytes, max_bytes)
  return granted >= tasks_left or (granted > 0 and (work >= max_work or bytes >= max_bytes))
end

-- Batch::overfills
local function overfills(granted, work, task_work, max_work)
  return granted > 0 and work + task_work > math.floor(max_work * {num} / {den})
end

-- after_attempt: false to fail the task, else when it may run again.
local function after_attempt(attempts, max_attempts, use_backoff, now)
  if attempts >= max_attempts then
    return false
  end
  if not use_backoff then
    return now
  end
  local i = math.min(math.max(attempts, 1), #BACKOFF)
  return now + BACKOFF[i]
end

-- failed_job_kept
local function failed_job_kept(finished_ms, now)
  return now < finished_ms + FAILED_JOB_RETENTION_MS
end

-- out_of_attempts_reason
local function out_of_attempts_reason(idx, attempts, reason)
  return [[{reason}]]
end
"#,
        scan = MAX_LEASE_SCAN,
        retention = FAILED_JOB_RETENTION_MS,
        backoff = backoff.join(", "),
        num = OVERFILL.0,
        den = OVERFILL.1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::query;

    #[test]
    fn a_batch_is_full_by_count_work_or_bytes_but_never_empty() {
        let mut q = query("a", 0, 3);
        q.max_work = 100;
        q.max_bytes = 1000;
        let mut b = Batch::default();
        assert!(!b.is_full(&q));
        // The first task always fits, however large.
        assert!(!b.overfills(&q, 1_000_000));
        b.add(90, 10);
        assert!(!b.is_full(&q));
        assert!(!b.overfills(&q, 60), "90 + 60 is 1.5x of 100");
        assert!(b.overfills(&q, 61));
        b.add(10, 10);
        assert!(b.is_full(&q), "work reached max_work");
        let mut b = Batch::default();
        b.add(1, 1000);
        assert!(b.is_full(&q), "bytes reached max_bytes");
        let mut b = Batch::default();
        (0..3).for_each(|_| b.add(1, 1));
        assert!(b.is_full(&q), "max_tasks reached");
    }

    #[test]
    fn tasks_retry_with_backoff_until_attempts_run_out() {
        assert_eq!(
            after_attempt(1, 3, true, 10),
            AfterAttempt::Retry {
                not_before_ms: 1010
            }
        );
        assert_eq!(
            after_attempt(2, 3, false, 10),
            AfterAttempt::Retry { not_before_ms: 10 }
        );
        assert_eq!(after_attempt(3, 3, true, 10), AfterAttempt::Fail);
        assert_eq!(retry_backoff_ms(2), 2000);
        assert_eq!(retry_backoff_ms(BACKOFF_STEPS), 256_000);
        assert_eq!(retry_backoff_ms(50), retry_backoff_ms(BACKOFF_STEPS));
    }

    #[test]
    fn the_lua_prelude_carries_the_rust_numbers() {
        let lua = lua_prelude();
        assert!(lua.contains(&format!("MAX_LEASE_SCAN = {MAX_LEASE_SCAN}")));
        assert!(lua.contains("max_work * 3 / 2"));
        assert!(lua.contains("1000, 2000, 4000"));
        assert!(
            lua.contains("[[task ]] .. idx .. [[ failed after ]] .. attempts .. [[ attempt(s): ]] .. reason .. [[]]"),
            "{lua}"
        );
    }
}
