//! The stored shape of a schedule (see `crate::schedules`): a cron
//! expression in a time zone, the job body it submits, when it runs next,
//! and the jobs it made last.

use serde::{Deserialize, Serialize};

/// How many of its newest jobs a schedule remembers (for `GET
/// /v1/schedules`, and for the recovery of ticks whose claimer died, which
/// needs a tick remembered for longer than `schedules::RECOVER_AFTER`: 30
/// of the fastest, one-second, ticks is three times that).
pub const LAST_JOBS: usize = 30;

/// A schedule about to be stored.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    /// Its id.
    pub id: String,
    /// The cron expression, as given.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub timezone: String,
    /// The job body each tick submits.
    pub job: serde_json::Value,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its first tick.
    pub next_run_ms: u64,
}

/// A stored schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Its id.
    pub id: String,
    /// The cron expression, as given.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub timezone: String,
    /// The job body each tick submits.
    pub job: serde_json::Value,
    /// Paused: no tick fires.
    pub paused: bool,
    /// When it was made.
    pub created_ms: u64,
    /// Its next tick (ms since the Unix epoch).
    pub next_run_ms: u64,
    /// The ids of its newest jobs, newest first (at most [`LAST_JOBS`]).
    pub last_jobs: Vec<String>,
    /// When its newest tick was claimed.
    pub claimed_ms: Option<u64>,
}

/// A tick of a schedule to claim: only while the schedule is not paused
/// and still due at exactly `tick_ms` does the claim pass, once.
#[derive(Clone, Debug)]
pub struct ScheduleTick {
    /// The schedule.
    pub schedule: String,
    /// The tick being claimed: the schedule's `next_run_ms` as it was read.
    pub tick_ms: u64,
    /// Its next tick after this one.
    pub next_run_ms: u64,
    /// Now, recorded as when the tick was claimed.
    pub now_ms: u64,
}
