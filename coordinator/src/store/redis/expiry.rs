//! Expiry: jobs past their `expires` time with tasks never leased, and
//! results past their TTL (see `crate::timing`). Two indexes across jobs,
//! each a zset of job ids by time: written when the job is begun (expiry)
//! or finished (its result's end), read by any coordinator's sweep, and
//! acted on by a per-job script or an idempotent delete.

use super::*;

/// Jobs with an `expires` time, scored by it.
pub(super) const EXPIRING: &str = "expiring";
/// Succeeded jobs with a result TTL, scored by when the result goes.
pub(super) const RESULTS_EXPIRING: &str = "results_expiring";

/// How many index entries one sweep takes on: the next sweep takes the rest.
const SWEEP_BATCH: isize = 1000;

/// The ids and times of an index's entries due by `now_ms`.
async fn due(store: &RedisStore, index: &str, now_ms: u64) -> StoreResult<Vec<(String, u64)>> {
    let mut c = ::redis::cmd("ZRANGEBYSCORE");
    c.arg(store.keys().shared(index))
        .arg("-inf")
        .arg(now_ms)
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(SWEEP_BATCH);
    let items = reply_items(store.one(c).await?);
    Ok(items
        .chunks(2)
        .filter_map(|kv| {
            let id = reply_string(kv.first()?)?;
            let at = reply_string(kv.get(1)?)?.parse::<f64>().ok()? as u64;
            Some((id, at))
        })
        .collect())
}

pub(super) async fn expire_jobs(store: &RedisStore, now_ms: u64) -> StoreResult<Vec<String>> {
    let due = due(store, EXPIRING, now_ms).await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let k = store.keys();
    let mut p = ::redis::pipe();
    for (id, expires_ms) in &due {
        let mut c = store.scripts().expire_unleased.call(&k.job(id));
        c.arg(now_ms).arg(crate::timing::expiry_reason(*expires_ms));
        p.add_command(c);
    }
    let replies: Vec<Value> = store.run(&p).await?;
    let mut expired = Vec::new();
    let mut settled = Vec::new();
    let mut finished = Vec::new();
    for ((id, _), reply) in due.into_iter().zip(replies) {
        let reply = reply_items(reply);
        match reply.first().map(reply_i64) {
            Some(1) => {
                let queue = reply.get(1).and_then(reply_string).unwrap_or_default();
                finished.push((id.clone(), queue));
                settled.push(id.clone());
                expired.push(id);
            }
            Some(0) => settled.push(id),
            _ => {}
        }
    }
    store.forget_finished(&finished).await?;
    if !settled.is_empty() {
        let mut c = ::redis::cmd("ZREM");
        c.arg(k.shared(EXPIRING)).arg(&settled);
        store.one(c).await?;
    }
    Ok(expired)
}

pub(super) async fn purge_expired_results(store: &RedisStore, now_ms: u64) -> StoreResult<u64> {
    let due = due(store, RESULTS_EXPIRING, now_ms).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let k = store.keys();
    let mut p = ::redis::pipe();
    for (id, _) in &due {
        p.cmd("HDEL").arg(k.meta(id)).arg("result");
    }
    let ids: Vec<&String> = due.iter().map(|(id, _)| id).collect();
    p.cmd("ZREM")
        .arg(k.shared(RESULTS_EXPIRING))
        .arg(&ids)
        .ignore();
    let deleted: Vec<i64> = store.run(&p).await?;
    Ok(deleted.iter().filter(|&&d| d == 1).count() as u64)
}
