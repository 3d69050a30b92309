//! Schedules: one row each; a tick is claimed by moving `next_run_ms` on
//! from the very tick it was (a compare-and-set), and its job is created
//! `waiting` in the same transaction, so a tick makes one job or none.

use super::*;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

const SCHEDULE_COLUMNS: &str =
    "id, cron, timezone, job, paused, created_ms, next_run_ms, last_jobs, claimed_ms";

fn schedule_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ScheduleRecord, String, String)> {
    Ok((
        ScheduleRecord {
            id: r.get(0)?,
            cron: r.get(1)?,
            timezone: r.get(2)?,
            job: serde_json::Value::Null,
            paused: r.get::<_, i64>(4)? != 0,
            created_ms: r.get::<_, i64>(5)? as u64,
            next_run_ms: r.get::<_, i64>(6)? as u64,
            last_jobs: Vec::new(),
            claimed_ms: r.get::<_, Option<i64>>(8)?.map(|t| t as u64),
        },
        r.get(3)?,
        r.get(7)?,
    ))
}

fn decode(row: (ScheduleRecord, String, String)) -> StoreResult<ScheduleRecord> {
    let (mut s, job, last) = row;
    s.job = serde_json::from_str(&job).map_err(corrupt)?;
    s.last_jobs = serde_json::from_str(&last).map_err(corrupt)?;
    Ok(s)
}

pub(super) async fn create_schedule(store: &SqliteStore, s: NewSchedule) -> StoreResult<()> {
    let job = serde_json::to_string(&s.job).map_err(corrupt)?;
    store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO schedules (id, cron, timezone, job, created_ms, next_run_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    s.id,
                    s.cron,
                    s.timezone,
                    job,
                    s.created_ms as i64,
                    s.next_run_ms as i64
                ],
            )?;
            Ok(())
        })
        .await
}

pub(super) async fn list_schedules(store: &SqliteStore) -> StoreResult<Vec<ScheduleRecord>> {
    let rows = store
        .read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY created_ms, id"
            ))?;
            let rows = st.query_map([], schedule_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    rows.into_iter().map(decode).collect()
}

pub(super) async fn pause_schedule(
    store: &SqliteStore,
    id: &str,
    paused: bool,
    next_run_ms: Option<u64>,
) -> StoreResult<bool> {
    let id = id.to_string();
    store
        .write(move |tx| {
            Ok(tx.execute(
                "UPDATE schedules SET paused = ?2,
                 next_run_ms = MAX(next_run_ms, COALESCE(?3, next_run_ms)) WHERE id = ?1",
                params![id, i64::from(paused), next_run_ms.map(|n| n as i64)],
            )? > 0)
        })
        .await
}

pub(super) async fn delete_schedule(store: &SqliteStore, id: &str) -> StoreResult<bool> {
    let id = id.to_string();
    store
        .write(move |tx| Ok(tx.execute("DELETE FROM schedules WHERE id = ?1", [id])? > 0))
        .await
}

pub(super) async fn claim_tick(
    store: &SqliteStore,
    tick: ScheduleTick,
    job: NewJob,
) -> StoreResult<bool> {
    store
        .write(move |tx| {
            let last: Option<String> = tx
                .query_row(
                    "SELECT last_jobs FROM schedules
                     WHERE id = ?1 AND paused = 0 AND next_run_ms = ?2",
                    params![tick.schedule, tick.tick_ms as i64],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(last) = last else {
                return Ok(false);
            };
            let mut last: Vec<String> = serde_json::from_str(&last).map_err(corrupt)?;
            last.insert(0, job.id.clone());
            last.truncate(LAST_JOBS);
            tx.execute(
                "UPDATE schedules SET next_run_ms = ?2, claimed_ms = ?3, last_jobs = ?4 WHERE id = ?1",
                params![
                    tick.schedule,
                    tick.next_run_ms as i64,
                    tick.now_ms as i64,
                    serde_json::to_string(&last).map_err(corrupt)?
                ],
            )?;
            super::jobs::insert_job(tx, &job, JobState::Waiting, None)?;
            tx.execute(
                "UPDATE jobs SET schedule = ?2 WHERE id = ?1",
                params![job.id, tick.schedule],
            )?;
            Ok(true)
        })
        .await
}

pub(super) async fn create_fired_job(
    store: &SqliteStore,
    schedule: &str,
    job: NewJob,
) -> StoreResult<bool> {
    let schedule = schedule.to_string();
    store
        .write(move |tx| {
            if job_seq(tx, &job.id)?.is_some() {
                return Ok(false);
            }
            super::jobs::insert_job(tx, &job, JobState::Waiting, None)?;
            tx.execute(
                "UPDATE jobs SET schedule = ?2 WHERE id = ?1",
                params![job.id, schedule],
            )?;
            Ok(true)
        })
        .await
}
