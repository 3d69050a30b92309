//! Schedules: Celery beat, kept in the store. A schedule is a cron
//! expression read in an IANA time zone (seconds field allowed) and a job
//! body; each tick submits the job once, whichever coordinator, and however
//! many, share the store.
//!
//! Every coordinator looks at the schedules every [`POLL`]. A due tick is
//! claimed in the store by moving the schedule's `next_run_ms` on from
//! exactly the tick it read (a compare-and-set: one claim per tick across
//! coordinators), recording the tick's job id; the job is created
//! `waiting` with it and then released with its tasks, as a workflow's
//! step is. A coordinator killed in between leaves a claimed tick whose job
//! is missing or waiting: any coordinator finishes it after [`RECOVER_AFTER`]
//! (the job id is fixed at the claim, and creating and releasing are each
//! done once), so no tick is lost and none fires twice.
//!
//! Ticks missed while every coordinator was down run once on return: the
//! claim of an overdue tick moves `next_run_ms` to the first tick after
//! *now*, not after the missed one. Resuming a paused schedule also starts
//! from the next tick after now: the ticks of a pause are skipped.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use musketeer_tasks::job::parse_job;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::modules::{self, ModuleError, ModuleUse};
use crate::scheduler::Scheduler;
use crate::store::{
    JobState, NewJob, NewSchedule, NewTask, ScheduleRecord, ScheduleTick, StoreError, StoreResult,
    LAST_JOBS,
};
use crate::timing::rfc3339;

/// How often due ticks are looked for: the most a tick fires late.
pub const POLL: Duration = Duration::from_millis(200);

/// How long after its claim a tick's job may still be on its way from the
/// claiming coordinator; past this, another finishes it. Coordinators'
/// clocks must agree to well within this (NTP does).
pub const RECOVER_AFTER: Duration = Duration::from_secs(10);

// Recovery looks through a schedule's last jobs: they must span more than
// RECOVER_AFTER of the fastest (one-second) ticks.
const _: () = assert!(crate::store::LAST_JOBS as u64 >= 2 * RECOVER_AFTER.as_secs());

/// What is wrong with a schedule; every message names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    /// The body is not JSON.
    #[error("the body is not a valid JSON schedule: {0}")]
    Malformed(String),
    /// A field is missing, unknown or of the wrong type.
    #[error("invalid schedule: {0}")]
    Invalid(String),
    /// The cron expression does not parse.
    #[error("`cron` {cron:?} is not a cron expression: {reason}; give five fields (minute hour day-of-month month day-of-week), or six with seconds first, e.g. \"*/5 * * * *\"")]
    BadCron {
        /// The expression.
        cron: String,
        /// The parser's reason.
        reason: String,
    },
    /// The cron expression parses but names no time that comes.
    #[error("`cron` {0:?} never fires (no such date comes, e.g. February 30): give an expression that matches a real time")]
    NeverFires(String),
    /// The time zone is not an IANA name.
    #[error("`timezone` {0:?} is not a known time zone: give an IANA name such as UTC, Europe/Paris or America/New_York")]
    UnknownTimezone(String),
    /// The job body is refused by its kernel.
    #[error("`job`: {0}")]
    Job(String),
}

impl ScheduleError {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            ScheduleError::Malformed(_) => "malformed_json",
            ScheduleError::Invalid(_) => "invalid_schedule",
            ScheduleError::BadCron { .. } => "invalid_cron",
            ScheduleError::NeverFires(_) => "cron_never_fires",
            ScheduleError::UnknownTimezone(_) => "unknown_timezone",
            ScheduleError::Job(_) => "invalid_job",
        }
    }

    /// 400 for a body that is not JSON, 422 for the rest.
    pub fn http_status(&self) -> u16 {
        match self {
            ScheduleError::Malformed(_) => 400,
            _ => 422,
        }
    }
}

/// Why a schedule was refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The caller's schedule is wrong.
    #[error(transparent)]
    Invalid(#[from] ScheduleError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cron expression in its time zone.
pub struct CronSpec {
    cron: croner::Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses `expr` (five fields, or six with seconds first) in `timezone`.
    pub fn parse(expr: &str, timezone: &str) -> Result<CronSpec, ScheduleError> {
        let tz = Tz::from_str(timezone)
            .map_err(|_| ScheduleError::UnknownTimezone(timezone.to_string()))?;
        let cron = parse_cron(expr).map_err(|reason| ScheduleError::BadCron {
            cron: expr.to_string(),
            reason,
        })?;
        Ok(CronSpec { cron, tz })
    }

    /// The first tick strictly after `ms` (ms since the Unix epoch).
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        let after: DateTime<Tz> = Utc
            .timestamp_millis_opt(ms as i64)
            .single()?
            .with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

/// Parses a cron expression with croner: seconds optional, POSIX rules.
fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// The body of `POST /v1/schedules`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    cron: String,
    #[serde(default = "utc")]
    timezone: String,
    job: Value,
}

fn utc() -> String {
    "UTC".into()
}

/// A job of a schedule's body, created at `at_ms` with id `id`, and the
/// module it runs if it is a wasm job.
fn job_of(
    body: &Value,
    id: &str,
    at_ms: u64,
) -> Result<(NewJob, Option<ModuleUse>), ScheduleError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ScheduleError::Job(e.to_string()))?;
    let (spec, mut options) = parse_job(&bytes).map_err(|e| ScheduleError::Job(e.to_string()))?;
    let timing = crate::timing::job_timing(&options, at_ms)
        .map_err(|e| ScheduleError::Job(e.to_string()))?;
    options.labels = options.required_labels();
    let module = ModuleUse::of(&spec);
    let job = NewJob {
        id: id.to_string(),
        kernel: spec.kernel().to_string(),
        options,
        // Planned when released.
        reduce_plan: Vec::new(),
        created_ms: at_ms,
        // Kept while the fired job is unfinished, as a submitted one's is.
        module: module.as_ref().map(|m| m.id.clone()),
        timing,
    };
    Ok((job, module))
}

/// Checks the module a schedule's job runs: refused as the job's fault.
async fn check_module(scheduler: &Scheduler, module: Option<ModuleUse>) -> Result<(), SubmitError> {
    let Some(module) = module else {
        return Ok(());
    };
    modules::check(scheduler.store.as_ref(), &module)
        .await
        .map_err(|e| match e {
            ModuleError::Store(e) => SubmitError::Store(e),
            e => SubmitError::Invalid(ScheduleError::Job(e.to_string())),
        })
}

/// An accepted schedule.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleCreated {
    /// Its id.
    pub id: String,
    /// Its first tick, RFC 3339.
    pub next_run: String,
}

/// One of a schedule's last jobs.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FiredJob {
    /// The job's id.
    pub id: String,
    /// Its state (`None` while its creation is on its way).
    pub state: Option<JobState>,
}

/// A schedule as `GET /v1/schedules` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// Its id.
    pub id: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// The job body each tick submits.
    pub job: Value,
    /// Whether it is paused.
    pub paused: bool,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its next tick, RFC 3339 (when paused: the one it would have).
    pub next_run: String,
    /// Its next tick, ms since the Unix epoch.
    pub next_run_ms: u64,
    /// Its newest jobs, newest first.
    pub last_jobs: Vec<FiredJob>,
}

/// Checks and stores a schedule.
pub async fn submit(scheduler: &Scheduler, body: &[u8]) -> Result<ScheduleCreated, SubmitError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ScheduleError::Malformed(e.to_string()))?;
    let body: Body = serde_json::from_value(value).map_err(|e| {
        ScheduleError::Invalid(format!(
            "{e}: give {{\"cron\":\"*/5 * * * *\",\"timezone\":\"UTC\",\"job\":{{...}}}}"
        ))
    })?;
    let spec = CronSpec::parse(&body.cron, &body.timezone)?;
    let now = scheduler.now_ms();
    let next = spec
        .next_after(now)
        .ok_or_else(|| ScheduleError::NeverFires(body.cron.clone()))?;
    let (_, module) = job_of(&body.job, "check", now)?;
    check_module(scheduler, module).await?;
    let id = uuid::Uuid::now_v7().to_string();
    scheduler
        .store
        .create_schedule(NewSchedule {
            id: id.clone(),
            cron: body.cron,
            timezone: body.timezone,
            job: body.job,
            created_ms: now,
            next_run_ms: next,
        })
        .await?;
    tracing::info!(schedule = %id, next_run = %rfc3339(next), "schedule created");
    Ok(ScheduleCreated {
        id,
        next_run: rfc3339(next),
    })
}

/// Every schedule, with the states of its last jobs.
pub async fn list(scheduler: &Scheduler) -> StoreResult<Vec<ScheduleView>> {
    list_some(scheduler, usize::MAX, LAST_JOBS).await
}

/// The first `schedules` schedules, each with its newest `jobs` jobs: a
/// bounded read, for a page drawn every second.
pub async fn list_some(
    scheduler: &Scheduler,
    schedules: usize,
    jobs: usize,
) -> StoreResult<Vec<ScheduleView>> {
    let mut out = Vec::new();
    for mut s in scheduler
        .store
        .list_schedules()
        .await?
        .into_iter()
        .take(schedules)
    {
        s.last_jobs.truncate(jobs);
        out.push(view(scheduler, s).await?);
    }
    Ok(out)
}

async fn view(scheduler: &Scheduler, s: ScheduleRecord) -> StoreResult<ScheduleView> {
    let mut last_jobs = Vec::new();
    for id in &s.last_jobs {
        let state = scheduler.store.job(id).await?.map(|j| j.state);
        last_jobs.push(FiredJob {
            id: id.clone(),
            state,
        });
    }
    Ok(ScheduleView {
        next_run: rfc3339(s.next_run_ms),
        id: s.id,
        cron: s.cron,
        timezone: s.timezone,
        job: s.job,
        paused: s.paused,
        created_ms: s.created_ms,
        next_run_ms: s.next_run_ms,
        last_jobs,
    })
}

/// Pauses (no tick fires) or resumes (from the first tick after now) a
/// schedule; `None` if there is none with that id.
pub async fn set_paused(
    scheduler: &Scheduler,
    id: &str,
    paused: bool,
) -> StoreResult<Option<ScheduleView>> {
    let Some(s) = find(scheduler, id).await? else {
        return Ok(None);
    };
    // A pause keeps the next tick as it stands in the store (one being
    // claimed now stays claimed); a resume starts from the first after now.
    let next = if paused {
        None
    } else {
        CronSpec::parse(&s.cron, &s.timezone)
            .ok()
            .and_then(|c| c.next_after(scheduler.now_ms()))
    };
    if !scheduler.store.pause_schedule(id, paused, next).await? {
        return Ok(None);
    }
    match find(scheduler, id).await? {
        Some(s) => Ok(Some(view(scheduler, s).await?)),
        None => Ok(None),
    }
}

/// Deletes a schedule; false if there is none. Its jobs stay.
pub async fn delete(scheduler: &Scheduler, id: &str) -> StoreResult<bool> {
    scheduler.store.delete_schedule(id).await
}

async fn find(scheduler: &Scheduler, id: &str) -> StoreResult<Option<ScheduleRecord>> {
    Ok(scheduler
        .store
        .list_schedules()
        .await?
        .into_iter()
        .find(|s| s.id == id))
}

/// Plans a fired job and releases it; a body its kernel now refuses (a
/// plan past the limits) fails the job with the reason.
async fn release(scheduler: &Scheduler, job: &str, body: &Value) -> StoreResult<()> {
    let body = body.clone();
    let store = scheduler.store.clone();
    let planned =
        tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Vec<NewTask>), String> {
            let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            let (spec, options) = parse_job(&bytes).map_err(|e| e.to_string())?;
            modules::plan(&store, &spec, &options).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?;
    match planned {
        Ok((reduce, tasks)) => {
            if scheduler
                .store
                .start_waiting_job(job, reduce, tasks)
                .await?
            {
                scheduler.signal_work();
            }
            Ok(())
        }
        Err(why) => {
            scheduler
                .store
                .finish_job(
                    job,
                    Err(format!("the schedule's job cannot be planned: {why}")),
                    scheduler.now_ms(),
                )
                .await
        }
    }
}

/// Fires every due tick once, and finishes ticks whose claimer died.
async fn fire_due(scheduler: &Scheduler, settled: &Mutex<HashSet<String>>) -> StoreResult<()> {
    let now = scheduler.now_ms();
    for s in scheduler.store.list_schedules().await? {
        recover(scheduler, &s, now, settled).await?;
        if s.paused || s.next_run_ms > now {
            continue;
        }
        let Ok(spec) = CronSpec::parse(&s.cron, &s.timezone) else {
            continue;
        };
        // Missed ticks come to one run: the next is the first after now.
        let Some(next) = spec.next_after(now) else {
            tracing::warn!(schedule = %s.id, "the schedule fires no more: pausing it");
            scheduler.store.pause_schedule(&s.id, true, None).await?;
            continue;
        };
        // The id carries the claim's instant, read as close to the claim
        // as it can be (recovery elsewhere counts RECOVER_AFTER from it).
        let claimed = scheduler.now_ms();
        let id = tick_job_id(claimed);
        let checked = match job_of(&s.job, &id, claimed) {
            Ok((job, module)) => check_module(scheduler, module).await.map(|()| job),
            Err(e) => Err(e.into()),
        };
        let job = match checked {
            Ok(job) => job,
            Err(SubmitError::Store(e)) => return Err(e),
            Err(SubmitError::Invalid(e)) => {
                tracing::error!(schedule = %s.id, "the schedule's job is refused, pausing it: {e}");
                scheduler.store.pause_schedule(&s.id, true, None).await?;
                continue;
            }
        };
        let tick = ScheduleTick {
            schedule: s.id.clone(),
            tick_ms: s.next_run_ms,
            next_run_ms: next,
            now_ms: claimed,
        };
        if scheduler.store.claim_tick(tick, job).await? {
            tracing::info!(schedule = %s.id, job = %id, tick = %rfc3339(s.next_run_ms), "schedule fired");
            release(scheduler, &id, &s.job).await?;
            settle(settled, &id);
        }
    }
    Ok(())
}

/// The id of the job of a tick claimed at `now_ms`: a UUIDv7 of that
/// instant on the scheduler's clock, so that any coordinator can tell
/// from the id alone how long ago the tick was claimed.
fn tick_job_id(now_ms: u64) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        now_ms / 1000,
        (now_ms % 1000) as u32 * 1_000_000,
    );
    uuid::Uuid::new_v7(ts).to_string()
}

/// When the tick whose job is `id` was claimed (see [`tick_job_id`]).
fn claimed_at(id: &str) -> Option<u64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Finishes every recent tick of `s` whose claimer did not: creates its
/// job if it is missing, releases it if it is still waiting. Every one of
/// the schedule's last jobs is looked at, not only the newest: a claimer
/// may die on one tick while the others go on firing the next ones.
async fn recover(
    scheduler: &Scheduler,
    s: &ScheduleRecord,
    now: u64,
    settled: &Mutex<HashSet<String>>,
) -> StoreResult<()> {
    for last in &s.last_jobs {
        let Some(claimed) = claimed_at(last) else {
            continue;
        };
        if now < claimed + RECOVER_AFTER.as_millis() as u64
            || settled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(last)
        {
            continue;
        }
        match scheduler.store.job(last).await? {
            None => {
                let Ok((job, _)) = job_of(&s.job, last, claimed) else {
                    // Refused now as when it was claimed: nothing to make,
                    // and nothing to look at again.
                    settle(settled, last);
                    continue;
                };
                if scheduler.store.create_fired_job(&s.id, job).await? {
                    tracing::warn!(schedule = %s.id, job = %last, "created the job of a tick whose coordinator died");
                }
                release(scheduler, last, &s.job).await?;
            }
            Some(j) if j.state == JobState::Waiting => release(scheduler, last, &s.job).await?,
            Some(_) => {}
        }
        settle(settled, last);
    }
    Ok(())
}

/// Remembers that this process saw tick job `id` through.
fn settle(settled: &Mutex<HashSet<String>>, id: &str) {
    let mut settled = settled.lock().unwrap_or_else(|p| p.into_inner());
    if settled.len() > 100_000 {
        settled.clear();
    }
    settled.insert(id.to_string());
}

/// Fires due ticks every [`POLL`], in the background.
pub fn start(scheduler: &Arc<Scheduler>) {
    let weak = Arc::downgrade(scheduler);
    tokio::spawn(async move {
        // Ticks this process saw through: no need to look at their jobs again.
        let settled = Mutex::new(HashSet::new());
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(scheduler) = weak.upgrade() else {
                return;
            };
            if let Err(e) = fire_due(&scheduler, &settled).await {
                tracing::warn!("cannot fire schedules: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_with_time_zones_and_seconds() {
        // 2026-12-01T12:00:00Z.
        let t = 1_796_126_400_000;
        let every_2s = CronSpec::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(every_2s.next_after(t), Some(t + 2000));
        let nine_paris = CronSpec::parse("0 9 * * *", "Europe/Paris").unwrap();
        // 09:00 in Paris is 08:00 UTC in December; the next is tomorrow's.
        assert_eq!(
            rfc3339(nine_paris.next_after(t).unwrap()),
            "2026-12-02T08:00:00Z"
        );
    }

    #[test]
    fn a_tick_jobs_id_says_when_it_was_claimed() {
        let t = 1_796_126_400_123;
        assert_eq!(claimed_at(&tick_job_id(t)), Some(t));
        assert_ne!(tick_job_id(t), tick_job_id(t));
        assert_eq!(claimed_at("not-a-uuid"), None);
    }

    #[test]
    fn bad_crons_and_zones_say_which() {
        let e = CronSpec::parse("*/5 * *", "UTC").err().unwrap();
        assert_eq!(e.code(), "invalid_cron");
        assert!(e.to_string().contains("\"*/5 * *\""), "{e}");
        let e = CronSpec::parse("* * * * *", "Mars/Olympus").err().unwrap();
        assert_eq!(e.code(), "unknown_timezone");
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
        let feb30 = CronSpec::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(feb30.next_after(1_796_126_400_000), None);
    }
}
