//! Expiry: jobs past their `expires` time with tasks never leased, and
//! results past their TTL (see `crate::timing`).

use super::*;

/// Jobs past their `expires` that still have a task never leased.
const DUE_JOBS: &str = "FROM jobs
     WHERE expires_ms IS NOT NULL AND state IN ('queued', 'running')
       AND expires_ms <= ?1 AND sealed = 1
       AND EXISTS (SELECT 1 FROM tasks t WHERE t.job_seq = jobs.seq
                   AND t.state = ?2 AND t.attempts = 0)";

/// Results past their TTL, not deleted yet.
const DUE_RESULTS: &str = "FROM jobs
     WHERE result_expires_ms IS NOT NULL AND result IS NOT NULL AND result_expires_ms <= ?1";

/// Whether any row of `from` (with `now_ms` as `?1`, and `PENDING` as
/// `?2` if it asks) is due: read first, so that the sweep takes the writer
/// only when it has something to do.
async fn any_due(store: &SqliteStore, from: &'static str, now_ms: u64) -> StoreResult<bool> {
    store
        .read(move |c| {
            let sql = format!("SELECT EXISTS (SELECT 1 {from})");
            let mut st = c.prepare_cached(&sql)?;
            let due = if from.contains("?2") {
                st.query_row(params![now_ms as i64, PENDING], |r| r.get::<_, bool>(0))?
            } else {
                st.query_row(params![now_ms as i64], |r| r.get::<_, bool>(0))?
            };
            Ok(due)
        })
        .await
}

pub(super) async fn expire_jobs(store: &SqliteStore, now_ms: u64) -> StoreResult<Vec<String>> {
    if !any_due(store, DUE_JOBS, now_ms).await? {
        return Ok(Vec::new());
    }
    let expired = store
        .write(move |tx| {
            // The predicate of the `jobs_expiring` index, so that it is used.
            let due: Vec<(i64, String, i64)> = tx
                .prepare_cached(&format!("SELECT seq, id, expires_ms {DUE_JOBS}"))?
                .query_map(params![now_ms as i64, PENDING], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            for (seq, _, expires_ms) in &due {
                tx.execute(
                    "UPDATE jobs SET state = 'expired', error = ?2, finished_ms = ?3
                     WHERE seq = ?1 AND state IN ('queued', 'running')",
                    params![
                        seq,
                        crate::timing::expiry_reason(*expires_ms as u64),
                        now_ms as i64
                    ],
                )?;
                cancel_open_tasks(tx, *seq)?;
            }
            Ok(due
                .into_iter()
                .map(|(_, id, _)| id)
                .collect::<Vec<String>>())
        })
        .await?;
    if !expired.is_empty() {
        // Their inputs go at once, as a cancelled job's do.
        super::jobs::purge_finished_inputs(store, now_ms).await?;
    }
    Ok(expired)
}

pub(super) async fn purge_expired_results(store: &SqliteStore, now_ms: u64) -> StoreResult<u64> {
    if !any_due(store, DUE_RESULTS, now_ms).await? {
        return Ok(0);
    }
    store
        .write_relaxed(move |tx| {
            // The predicate of the `jobs_result_expiring` index. The freed
            // pages go back to SQLite's free list for the next writes.
            Ok(tx.execute(
                &format!("UPDATE jobs SET result = NULL WHERE seq IN (SELECT seq {DUE_RESULTS})"),
                [now_ms as i64],
            )? as u64)
        })
        .await
}
