//! Schedules: one hash each (`{prefix}:s:<id>`) and a set of them. A tick
//! is claimed by `schedule_claim.lua`, which moves `next_run_ms` on from
//! exactly the tick read (a compare-and-set), so of several coordinators
//! one claims it; the claim records the job's id, and the job is then
//! created `waiting` (created again, the same, by any coordinator that
//! finds it missing later: see `crate::schedules`).

use super::*;

/// The set of schedule ids.
const ALL: &str = "schedules";

fn schedule_key(store: &RedisStore, id: &str) -> String {
    store.keys().shared(&format!("s:{id}"))
}

const FIELDS: [&str; 8] = [
    "cron",
    "timezone",
    "job",
    "paused",
    "created_ms",
    "next_run_ms",
    "last_jobs",
    "claimed_ms",
];

fn decode_schedule(id: &str, f: &[Value]) -> StoreResult<Option<ScheduleRecord>> {
    let text = |i: usize| f.get(i).and_then(reply_string);
    let (Some(cron), Some(timezone), Some(job)) = (text(0), text(1), text(2)) else {
        return Ok(None);
    };
    Ok(Some(ScheduleRecord {
        id: id.to_string(),
        cron,
        timezone,
        job: serde_json::from_str(&job).map_err(|e| corrupt(e.to_string()))?,
        paused: text(3).as_deref() == Some("1"),
        created_ms: f.get(4).map(reply_i64).unwrap_or(0) as u64,
        next_run_ms: f.get(5).map(reply_i64).unwrap_or(0) as u64,
        last_jobs: serde_json::from_str(&text(6).unwrap_or_else(|| "[]".into()))
            .map_err(|e| corrupt(e.to_string()))?,
        claimed_ms: f.get(7).and_then(reply_opt_i64).map(|t| t as u64),
    }))
}

pub(super) async fn create_schedule(store: &RedisStore, s: NewSchedule) -> StoreResult<()> {
    let job = serde_json::to_string(&s.job).map_err(|e| corrupt(e.to_string()))?;
    let mut p = ::redis::pipe();
    p.atomic();
    p.cmd("HSET")
        .arg(schedule_key(store, &s.id))
        .arg("cron")
        .arg(&s.cron)
        .arg("timezone")
        .arg(&s.timezone)
        .arg("job")
        .arg(job)
        .arg("paused")
        .arg(0)
        .arg("created_ms")
        .arg(s.created_ms)
        .arg("next_run_ms")
        .arg(s.next_run_ms)
        .arg("last_jobs")
        .arg("[]")
        .ignore();
    p.cmd("SADD")
        .arg(store.keys().shared(ALL))
        .arg(&s.id)
        .ignore();
    store.run::<()>(&p).await
}

pub(super) async fn list_schedules(store: &RedisStore) -> StoreResult<Vec<ScheduleRecord>> {
    let mut c = ::redis::cmd("SMEMBERS");
    c.arg(store.keys().shared(ALL));
    let ids: Vec<String> = reply_items(store.one(c).await?)
        .iter()
        .filter_map(reply_string)
        .collect();
    let mut p = ::redis::pipe();
    for id in &ids {
        p.cmd("HMGET").arg(schedule_key(store, id)).arg(&FIELDS[..]);
    }
    let rows: Vec<Value> = store.run(&p).await?;
    let mut out = Vec::new();
    for (id, row) in ids.iter().zip(rows) {
        if let Some(s) = decode_schedule(id, &reply_items(row))? {
            out.push(s);
        }
    }
    out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(out)
}

pub(super) async fn pause_schedule(
    store: &RedisStore,
    id: &str,
    paused: bool,
    next_run_ms: Option<u64>,
) -> StoreResult<bool> {
    let mut c = store
        .scripts()
        .schedule_pause
        .call(&[schedule_key(store, id)]);
    c.arg(i64::from(paused))
        .arg(next_run_ms.map(|n| n.to_string()).unwrap_or_default());
    Ok(reply_i64(&store.one(c).await?) == 1)
}

pub(super) async fn delete_schedule(store: &RedisStore, id: &str) -> StoreResult<bool> {
    let mut p = ::redis::pipe();
    p.cmd("DEL").arg(schedule_key(store, id));
    p.cmd("SREM").arg(store.keys().shared(ALL)).arg(id).ignore();
    let (deleted,): (i64,) = store.run(&p).await?;
    Ok(deleted == 1)
}

pub(super) async fn claim_tick(
    store: &RedisStore,
    tick: ScheduleTick,
    job: NewJob,
) -> StoreResult<bool> {
    let mut c = store
        .scripts()
        .schedule_claim
        .call(&[schedule_key(store, &tick.schedule)]);
    c.arg(tick.tick_ms)
        .arg(tick.next_run_ms)
        .arg(&job.id)
        .arg(tick.now_ms)
        .arg(LAST_JOBS);
    if reply_i64(&store.one(c).await?) != 1 {
        return Ok(false);
    }
    create_fired_job(store, &tick.schedule, job).await?;
    Ok(true)
}

pub(super) async fn create_fired_job(
    store: &RedisStore,
    schedule: &str,
    job: NewJob,
) -> StoreResult<bool> {
    let k = store.keys();
    let mut c = ::redis::cmd("EXISTS");
    c.arg(k.meta(&job.id));
    if reply_i64(&store.one(c).await?) == 1 {
        return Ok(false);
    }
    let mut c = ::redis::cmd("INCR");
    c.arg(k.shared("seq"));
    let seq = reply_i64(&store.one(c).await?) as u64;
    let mut p = ::redis::pipe();
    p.atomic();
    super::jobs::write_waiting(store, &mut p, &job, seq, None)?;
    p.cmd("HSET")
        .arg(k.meta(&job.id))
        .arg("schedule")
        .arg(schedule)
        .ignore();
    store.run::<()>(&p).await?;
    Ok(true)
}
