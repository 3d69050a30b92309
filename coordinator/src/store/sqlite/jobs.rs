//! Jobs: their creation in parts, sealing, cancel and abort, status,
//! outputs, the reduce's result and cleanup.

use super::*;

const JOB_COLUMNS: &str = "id, kernel, state, queue, priority, total, done, failed, error, created_ms, started_ms, finished_ms, not_before_ms, expires_ms, result_expires_ms, workflow, schedule";

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobStatus> {
    let state: String = row.get(2)?;
    Ok(JobStatus {
        id: row.get(0)?,
        kernel: row.get(1)?,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        queue: row.get(3)?,
        priority: row.get::<_, i64>(4)? as u8,
        progress: Progress {
            total: row.get::<_, i64>(5)? as u64,
            done: row.get::<_, i64>(6)? as u64,
            failed: row.get::<_, i64>(7)? as u64,
        },
        error: row.get(8)?,
        created_ms: row.get::<_, i64>(9)? as u64,
        started_ms: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        finished_ms: row.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        not_before_ms: Some(row.get::<_, i64>(12)? as u64).filter(|&t| t > 0),
        expires_ms: row.get::<_, Option<i64>>(13)?.map(|v| v as u64),
        result_expires_ms: row.get::<_, Option<i64>>(14)?.map(|v| v as u64),
        workflow: row.get(15)?,
        schedule: row.get(16)?,
    })
}

/// The sequence number of job `id` if it is not sealed yet.
fn unsealed_seq(c: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT seq FROM jobs WHERE id = ?1 AND sealed = 0",
        [id],
        |r| r.get(0),
    )
    .optional()
}

/// The sealed jobs that have input files.
fn sealed_blob_jobs(c: &Connection) -> rusqlite::Result<HashSet<i64>> {
    c.prepare(
        "SELECT DISTINCT i.job_seq FROM task_inputs i JOIN jobs j ON j.seq = i.job_seq
         WHERE i.external = 1 AND j.sealed = 1",
    )?
    .query_map([], |r| r.get(0))?
    .collect()
}

/// Finished jobs that still hold inputs nobody needs: cancelled and expired
/// ones, and failed ones past the retention a retry needs (at once for a
/// workflow's step, which is never retried).
fn finished_with_inputs(c: &Connection, now_ms: u64) -> rusqlite::Result<Vec<i64>> {
    c.prepare_cached(
        "SELECT seq FROM jobs WHERE (state IN ('cancelled', 'expired')
             OR (state = 'failed' AND (workflow IS NOT NULL
                 OR COALESCE(finished_ms, 0) + ?2 <= ?1)))
         AND EXISTS (SELECT 1 FROM task_inputs i WHERE i.job_seq = jobs.seq)",
    )?
    .query_map(
        params![now_ms as i64, rules::FAILED_JOB_PURGE_AFTER_MS as i64],
        |r| r.get(0),
    )?
    .collect()
}

fn delete_job(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    for table in [
        "task_inputs",
        "task_outputs",
        "replica_outputs",
        "tasks",
        "job_modules",
    ] {
        tx.execute(&format!("DELETE FROM {table} WHERE job_seq = ?1"), [seq])?;
    }
    tx.execute("DELETE FROM jobs WHERE seq = ?1", [seq])?;
    Ok(())
}

/// Inserts a job's row: `queued` and unsealed for an upload to come,
/// or `waiting` and visible at once for a workflow's step.
pub(super) fn insert_job(
    tx: &Transaction<'_>,
    job: &NewJob,
    state: JobState,
    workflow: Option<&str>,
) -> StoreResult<()> {
    let labels = serde_json::to_string(&job.options.labels)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO jobs (id, kernel, queue, priority, max_attempts, timeout_s, redundancy,
                           labels, state, created_ms, reduce_plan, not_before_ms, expires_ms,
                           result_ttl_ms, sealed, workflow)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            job.id,
            job.kernel,
            job.options.queue,
            job.options.priority as i64,
            job.options.max_attempts as i64,
            job.options.timeout_s.map(|t| t as i64),
            job.options.redundancy as i64,
            labels,
            state.as_str(),
            job.created_ms as i64,
            job.reduce_plan,
            job.timing.not_before_ms as i64,
            job.timing.expires_ms.map(|t| t as i64),
            job.timing.result_ttl_ms.map(|t| t as i64),
            i64::from(state == JobState::Waiting),
            workflow,
        ],
    )?;
    if let Some(module) = &job.module {
        tx.execute(
            "INSERT INTO job_modules (job_seq, module) VALUES (?1, ?2)",
            params![tx.last_insert_rowid(), module],
        )?;
    }
    Ok(())
}

pub(super) async fn begin_job(store: &SqliteStore, job: NewJob) -> StoreResult<()> {
    store
        .write_relaxed(move |tx| insert_job(tx, &job, JobState::Queued, None))
        .await
}

pub(super) async fn add_tasks(
    store: &SqliteStore,
    job_id: &str,
    tasks: Vec<NewTask>,
) -> StoreResult<()> {
    let id = job_id.to_string();
    let job_id = job_id.to_string();
    let (seq, total): (i64, i64) = store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT seq, total FROM jobs WHERE id = ?1 AND sealed = 0",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await?;
    // Large inputs are written before taking the writer, so leases and
    // results never wait behind an upload's disk writes.
    let blobs = store.blobs.clone();
    let tasks = tokio::task::spawn_blocking(move || -> StoreResult<Vec<(NewTask, bool)>> {
        tasks
            .into_iter()
            .enumerate()
            .map(|(i, mut task)| {
                if task.input.len() <= INLINE_MAX {
                    return Ok((task, false));
                }
                blobs.write(seq, total + i as i64, &task.input)?;
                task.input = Vec::new();
                Ok((task, true))
            })
            .collect()
    })
    .await
    .map_err(|e| StoreError::Worker(e.to_string()))??;
    store
        .write_relaxed(move |tx| {
            let (now_total, state): (i64, String) = tx.query_row(
                "SELECT total, state FROM jobs WHERE seq = ?1 AND id = ?2 AND sealed = 0",
                params![seq, job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            // A streamed job can fail (a chunk out of attempts) while its
            // upload goes on: the rest of its tasks must not run.
            let initial = match JobState::parse(&state) {
                Some(JobState::Queued | JobState::Running) => PENDING,
                _ => CANCELLED,
            };
            if now_total != total {
                return Err(StoreError::Corrupt(format!(
                    "tasks were added to job {seq} concurrently"
                )));
            }
            insert_tasks(tx, seq, total, tasks, initial)
        })
        .await
}

/// Inserts tasks of job `seq` from index `first` on (their inputs inline,
/// or already in files where marked), one row per replica, all leasable
/// from the job's not-before time, and counts them in its total.
pub(super) fn insert_tasks(
    tx: &Transaction<'_>,
    seq: i64,
    first: i64,
    tasks: Vec<(NewTask, bool)>,
    initial: i64,
) -> StoreResult<()> {
    let (queue, priority, redundancy, not_before): (String, i64, i64, i64) = tx.query_row(
        "SELECT queue, priority, redundancy, not_before_ms FROM jobs WHERE seq = ?1",
        [seq],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let total = first;
    let mut task_row = tx.prepare_cached(
        "INSERT INTO tasks (job_seq, idx, replica, state, queue, priority, work, mem,
                                    not_before_ms)
             VALUES (?1, ?2, ?8, ?7, ?3, ?4, ?5, ?6, ?9)",
    )?;
    let mut input_row = tx.prepare_cached(
        "INSERT INTO task_inputs (job_seq, idx, data, external) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let n = tasks.len() as i64;
    for (i, (task, external)) in tasks.into_iter().enumerate() {
        let idx = total + i as i64;
        // One row per replica; all share the one stored input.
        for replica in 0..redundancy.max(1) {
            task_row.execute(params![
                seq,
                idx,
                queue,
                priority,
                task.cost.work as i64,
                task.cost.mem_bytes as i64,
                initial,
                replica,
                not_before
            ])?;
        }
        input_row.execute(params![seq, idx, task.input, external as i64])?;
    }
    tx.execute(
        "UPDATE jobs SET total = total + ?2 WHERE seq = ?1",
        params![seq, n],
    )?;
    Ok(())
}

pub(super) async fn seal_job(store: &SqliteStore, job_id: &str) -> StoreResult<(u64, bool)> {
    let id = job_id.to_string();
    let seq = store.read(move |c| Ok(job_seq(c, &id)?)).await?;
    if let Some(seq) = seq {
        // Durable before the submitter is told "created".
        let blobs = store.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.sync_job(seq))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))??;
    }
    let job_id = job_id.to_string();
    store
        .write(move |tx| {
            tx.execute("UPDATE jobs SET sealed = 1 WHERE id = ?1", [&job_id])?;
            let (total, done): (i64, i64) = tx.query_row(
                "SELECT total, done FROM jobs WHERE id = ?1",
                [&job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((total as u64, total > 0 && done == total))
        })
        .await
}

pub(super) async fn abort_job(store: &SqliteStore, job_id: &str) -> StoreResult<()> {
    // Files first: on a full disk the rows' deletion may fail, and the
    // upload's bytes must go at once all the same (its rows are invisible,
    // and the next start drops them).
    let id = job_id.to_string();
    if let Some(seq) = store.read(move |c| Ok(unsealed_seq(c, &id)?)).await? {
        store.blobs.remove_job(seq);
    }
    let job_id = job_id.to_string();
    let seq = store
        .write_relaxed(move |tx| {
            // Only an unsealed job: a sealed one was accepted.
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM jobs WHERE id = ?1 AND sealed = 0",
                    [&job_id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(seq) = seq {
                delete_job(tx, seq)?;
            }
            Ok(seq)
        })
        .await?;
    if let Some(seq) = seq {
        store.blobs.remove_job(seq);
    }
    Ok(())
}

pub(super) async fn abort_unsealed_jobs(store: &SqliteStore) -> StoreResult<u64> {
    // Before anything is written: the files no sealed job points to
    // (uploads cut off, jobs whose removal was interrupted) go first, which
    // is what lets a coordinator restarted on a full disk breathe.
    let sealed = store.read(|c| Ok(sealed_blob_jobs(c)?)).await?;
    for seq in store.blobs.jobs()? {
        if !sealed.contains(&seq) {
            store.blobs.remove_job(seq);
        }
    }
    let (dropped, known) = store
        .write_relaxed(|tx| {
            let seqs: Vec<i64> = tx
                .prepare("SELECT seq FROM jobs WHERE sealed = 0")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for &seq in &seqs {
                delete_job(tx, seq)?;
            }
            let known: HashSet<i64> = tx
                .prepare("SELECT DISTINCT job_seq FROM task_inputs WHERE external = 1")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((seqs.len() as u64, known))
        })
        .await?;
    // Files no row points to: uploads cut off, or jobs whose removal
    // was interrupted after their rows went.
    for seq in store.blobs.jobs()? {
        if !known.contains(&seq) {
            store.blobs.remove_job(seq);
        }
    }
    Ok(dropped)
}

pub(super) async fn job(store: &SqliteStore, id: &str) -> StoreResult<Option<JobStatus>> {
    let id = id.to_string();
    store
        .read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND sealed = 1"),
                [id],
                job_from_row,
            )
            .optional()?)
        })
        .await
}

pub(super) async fn list_jobs(store: &SqliteStore, limit: u32) -> StoreResult<Vec<JobStatus>> {
    store
        .read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE sealed = 1 ORDER BY seq DESC LIMIT ?1"
            ))?;
            let rows = st.query_map([limit as i64], job_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

pub(super) async fn cancel_job(
    store: &SqliteStore,
    id: &str,
    now_ms: u64,
) -> StoreResult<Option<JobStatus>> {
    // A failed job's files first, as the purge does: on a full disk the
    // rows' deletion may fail, and the files are what gives the disk back.
    let failed = {
        let id = id.to_string();
        store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT seq FROM jobs WHERE id = ?1 AND state = 'failed'",
                    [id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?)
            })
            .await?
    };
    if let Some(seq) = failed {
        store.blobs.remove_job(seq);
    }
    let id = id.to_string();
    let (status, dropped) = store
        .write(move |tx| {
            let Some(seq) = job_seq(tx, &id)? else {
                return Ok((None, None));
            };
            let changed = tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_ms = ?2
             WHERE seq = ?1 AND state IN ('queued', 'running', 'waiting')",
                params![seq, now_ms as i64],
            )?;
            if changed > 0 {
                cancel_open_tasks(tx, seq)?;
            }
            let status = tx
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq = ?1 AND sealed = 1"),
                    [seq],
                    job_from_row,
                )
                .optional()?;
            // A failed job stays failed; what it kept for a retry goes.
            let dropped = match &status {
                Some(s) if s.state == JobState::Failed => {
                    for table in ["task_inputs", "task_outputs"] {
                        tx.execute(&format!("DELETE FROM {table} WHERE job_seq = ?1"), [seq])?;
                    }
                    Some(seq)
                }
                _ => None,
            };
            Ok((status, dropped))
        })
        .await?;
    if let Some(seq) = dropped {
        store.blobs.remove_job(seq);
    }
    Ok(status)
}

pub(super) async fn job_outputs(
    store: &SqliteStore,
    id: &str,
) -> StoreResult<(Vec<u8>, Vec<Vec<u8>>)> {
    let id = id.to_string();
    store
        .read(move |c| {
            let (seq, plan, total): (i64, Vec<u8>, i64) = c.query_row(
                "SELECT seq, reduce_plan, total FROM jobs WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut st =
                c.prepare("SELECT data FROM task_outputs WHERE job_seq = ?1 ORDER BY idx")?;
            let outputs: Vec<Vec<u8>> = st
                .query_map([seq], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if outputs.len() as i64 != total {
                return Err(StoreError::Corrupt(format!(
                    "job {id} has {} outputs for {total} tasks",
                    outputs.len()
                )));
            }
            Ok((plan, outputs))
        })
        .await
}

pub(super) async fn finish_job(
    store: &SqliteStore,
    id: &str,
    result: Result<Vec<u8>, String>,
    now_ms: u64,
) -> StoreResult<()> {
    let id = id.to_string();
    let cleared = store
        .write(move |tx| {
            match result {
                Ok(bytes) => {
                    tx.execute(
                        "UPDATE jobs SET state = 'succeeded', result = ?2, finished_ms = ?3,
                             result_expires_ms = ?3 + result_ttl_ms
                     WHERE id = ?1 AND state IN ('queued', 'running', 'waiting')",
                        params![id, bytes, now_ms as i64],
                    )?;
                    // The result holds everything now; the per-task outputs
                    // would only double the disk the job takes.
                    let seq = job_seq(tx, &id)?;
                    if let Some(seq) = seq {
                        for table in ["task_outputs", "task_inputs", "replica_outputs"] {
                            tx.execute(&format!("DELETE FROM {table} WHERE job_seq = ?1"), [seq])?;
                        }
                    }
                    Ok(seq)
                }
                Err(reason) => {
                    if let Some(seq) = job_seq(tx, &id)? {
                        fail_job(tx, seq, &reason, now_ms)?;
                    }
                    Ok(None)
                }
            }
        })
        .await?;
    if let Some(seq) = cleared {
        store.blobs.remove_job(seq);
    }
    Ok(())
}

pub(super) async fn job_result(store: &SqliteStore, id: &str) -> StoreResult<Option<Vec<u8>>> {
    let id = id.to_string();
    store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT result FROM jobs WHERE id = ?1 AND state = 'succeeded'",
                [id],
                // NULL once its TTL ran out and it was deleted.
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
        })
        .await
}

pub(super) async fn jobs_to_reduce(store: &SqliteStore) -> StoreResult<Vec<String>> {
    store
        .read(|c| {
            let mut st = c.prepare(
                "SELECT id FROM jobs WHERE sealed = 1 AND total > 0 AND done = total
             AND state IN ('queued', 'running')",
            )?;
            let ids = st.query_map([], |r| r.get(0))?;
            Ok(ids.collect::<Result<_, _>>()?)
        })
        .await
}

pub(super) async fn purge_finished_inputs(store: &SqliteStore, now_ms: u64) -> StoreResult<u64> {
    // Files first, read-only: on a full disk the rows' deletion may fail,
    // and freeing the files is what gives the disk back.
    for seq in store
        .read(move |c| Ok(finished_with_inputs(c, now_ms)?))
        .await?
    {
        store.blobs.remove_job(seq);
    }
    let seqs = store
        .write_relaxed(move |tx| {
            let seqs = finished_with_inputs(tx, now_ms)?;
            for &seq in &seqs {
                for table in ["task_inputs", "task_outputs", "replica_outputs"] {
                    tx.execute(&format!("DELETE FROM {table} WHERE job_seq = ?1"), [seq])?;
                }
            }
            Ok(seqs)
        })
        .await?;
    for &seq in &seqs {
        store.blobs.remove_job(seq);
    }
    Ok(seqs.len() as u64)
}

pub(super) async fn retry_failed_tasks(
    store: &SqliteStore,
    id: &str,
    now_ms: u64,
) -> StoreResult<Result<Retried, RetryRefusal>> {
    let id = id.to_string();
    store
        .write(move |tx| {
            type Row = (i64, String, Option<String>, Option<i64>, i64, i64);
            let row: Option<Row> = tx
                .query_row(
                    "SELECT seq, state, workflow, finished_ms, total, redundancy
                     FROM jobs WHERE id = ?1 AND sealed = 1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()?;
            let Some((seq, state, workflow, finished_ms, total, redundancy)) = row else {
                return Ok(Err(RetryRefusal::NotFound));
            };
            if workflow.is_some() {
                return Ok(Err(RetryRefusal::WorkflowStep));
            }
            let state = JobState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("job {id} has state {state:?}")))?;
            if state != JobState::Failed {
                return Ok(Err(RetryRefusal::NotFailed(state)));
            }
            let expires: Option<i64> =
                tx.query_row("SELECT expires_ms FROM jobs WHERE seq = ?1", [seq], |r| {
                    r.get(0)
                })?;
            if expires.is_some_and(|at| at as u64 <= now_ms) {
                return Ok(Err(RetryRefusal::Expired));
            }
            let inputs: i64 = tx.query_row(
                "SELECT COUNT(*) FROM task_inputs WHERE job_seq = ?1",
                [seq],
                |r| r.get(0),
            )?;
            if !rules::failed_job_kept(finished_ms.unwrap_or(0) as u64, now_ms) || inputs < total {
                return Ok(Err(RetryRefusal::InputsGone));
            }
            let gone_module: Option<String> = tx
                .query_row(
                    "SELECT module FROM job_modules WHERE job_seq = ?1
                     AND module NOT IN (SELECT id FROM modules)",
                    [seq],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(module) = gone_module {
                return Ok(Err(RetryRefusal::ModuleGone(module)));
            }
            // A task not done has no output: its replicas start again, as
            // many as the job's redundancy (those disagreement added go).
            const NOT_DONE: &str =
                "idx NOT IN (SELECT idx FROM task_outputs WHERE job_seq = ?1)";
            tx.execute(
                &format!("DELETE FROM tasks WHERE job_seq = ?1 AND replica >= ?2 AND {NOT_DONE}"),
                params![seq, redundancy.max(1)],
            )?;
            let requeued = tx.execute(
                &format!(
                    "UPDATE tasks SET state = ?2, attempts = 0,
                         not_before_ms = (SELECT not_before_ms FROM jobs WHERE seq = ?1),
                         lease_id = NULL, agent = NULL, deadline_ms = NULL, last_error = NULL,
                         verdict = NULL
                     WHERE job_seq = ?1 AND {NOT_DONE}"
                ),
                params![seq, PENDING],
            )?;
            tx.execute(
                "UPDATE jobs SET state = CASE WHEN started_ms IS NULL THEN 'queued' ELSE 'running' END,
                     error = NULL, failed = 0, finished_ms = NULL
                 WHERE seq = ?1",
                [seq],
            )?;
            let done: i64 =
                tx.query_row("SELECT done FROM jobs WHERE seq = ?1", [seq], |r| r.get(0))?;
            Ok(Ok(Retried {
                requeued: requeued as u64,
                ready: total > 0 && done == total,
            }))
        })
        .await
}

pub(super) async fn stats(store: &SqliteStore) -> StoreResult<Stats> {
    store
        .read(|c| {
            let mut stats = Stats::default();
            let mut st =
                c.prepare("SELECT state, COUNT(*) FROM jobs WHERE sealed = 1 GROUP BY state")?;
            for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = row?;
                stats.jobs.insert(k, v as u64);
            }
            stats.tasks_pending =
                c.query_row("SELECT COUNT(*) FROM tasks WHERE state = 0", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
            stats.tasks_leased =
                c.query_row("SELECT COUNT(*) FROM tasks WHERE state = 1", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
            let mut st = c.prepare("SELECT state, COUNT(*) FROM agents GROUP BY state")?;
            for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = row?;
                stats.agents.insert(k, v as u64);
            }
            Ok(stats)
        })
        .await
}

pub(super) async fn job_backlog(
    store: &SqliteStore,
    id: &str,
    now_ms: u64,
) -> StoreResult<Option<Backlog>> {
    let id = id.to_string();
    let now = now_ms as i64;
    store
        .read(move |c| {
            let row: Option<(i64, String, i64, String)> = c
                .query_row(
                    "SELECT seq, queue, priority, labels FROM jobs WHERE id = ?1 AND sealed = 1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((seq, queue, priority, labels)) = row else {
                return Ok(None);
            };
            let labels: BTreeMap<String, String> = serde_json::from_str(&labels)
                .map_err(|e| StoreError::Corrupt(format!("labels of job {id}: {e}")))?;
            let (leasable, retrying, retry_at, leased): (i64, i64, Option<i64>, i64) = c
                .query_row(
                    "SELECT COALESCE(SUM(state = 0 AND not_before_ms <= ?2), 0),
                            COALESCE(SUM(state = 0 AND not_before_ms > ?2), 0),
                            MIN(CASE WHEN state = 0 AND not_before_ms > ?2 THEN not_before_ms END),
                            COALESCE(SUM(state = 1), 0)
                     FROM tasks WHERE job_seq = ?1",
                    params![seq, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
            let (mem_min, mem_max): (Option<i64>, Option<i64>) = c.query_row(
                "SELECT MIN(mem), MAX(mem) FROM (SELECT mem FROM tasks
                     WHERE job_seq = ?1 AND state = 0 ORDER BY replica, idx LIMIT ?2)",
                params![seq, BACKLOG_SCAN as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let ahead: i64 = c.query_row(
                "SELECT COUNT(*) FROM tasks
                 WHERE state = 0 AND queue = ?1 AND priority > ?2 AND not_before_ms <= ?3",
                params![queue, priority, now],
                |r| r.get(0),
            )?;
            Ok(Some(Backlog {
                queue,
                priority: priority as u8,
                labels,
                leasable: leasable as u64,
                retrying: retrying as u64,
                retry_at_ms: retry_at.map(|t| t as u64),
                leased: leased as u64,
                mem_min: mem_min.unwrap_or(0) as u64,
                mem_max: mem_max.unwrap_or(0) as u64,
                ahead: ahead as u64,
            }))
        })
        .await
}

/// A replica row of `tasks` as [`Store::job_tasks`] lists it.
fn replica_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskReplica> {
    let state = match r.get::<_, i64>(2)? {
        PENDING => TaskState::Pending,
        LEASED => TaskState::Leased,
        DONE => TaskState::Done,
        FAILED => TaskState::Failed,
        _ => TaskState::Cancelled,
    };
    let agent: Option<String> = r.get(4)?;
    Ok(TaskReplica {
        index: r.get::<_, i64>(0)? as u32,
        replica: r.get::<_, i64>(1)? as u32,
        state,
        attempts: r.get::<_, i64>(3)? as u32,
        // A cancelled replica may still name the agent that held it.
        agent: agent.filter(|_| matches!(state, TaskState::Leased | TaskState::Done)),
        error: r.get(5)?,
        agreed: r.get::<_, Option<i64>>(6)?.map(|v| v != 0),
    })
}

pub(super) async fn job_tasks(
    store: &SqliteStore,
    id: &str,
    limit: usize,
) -> StoreResult<Option<Vec<TaskReplica>>> {
    let id = id.to_string();
    let limit = limit as i64;
    store
        .read(move |c| {
            // One snapshot for the four reads below, as Redis's one script is.
            let tx = c.unchecked_transaction()?;
            let c: &Connection = &tx;
            let row: Option<(i64, String, i64)> = c
                .query_row(
                    "SELECT seq, queue, priority FROM jobs WHERE id = ?1 AND sealed = 1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((seq, queue, priority)) = row else {
                return Ok(None);
            };
            const COLUMNS: &str = "idx, replica, state, attempts, agent, last_error, verdict";
            let rows = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> StoreResult<Vec<TaskReplica>> {
                let sql = format!("SELECT {COLUMNS} FROM tasks {sql}");
                let mut st = c.prepare_cached(&sql)?;
                let rows = st.query_map(p, replica_from_row)?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            };
            // Each kind through an index that holds few rows or starts at
            // the job's, so that a million-task job costs no scan.
            let mut out = rows(
                "INDEXED BY tasks_failed WHERE job_seq = ?1 AND state = 3 LIMIT ?2",
                params![seq, limit],
            )?;
            out.extend(rows(
                "INDEXED BY tasks_leased WHERE job_seq = ?1 AND state = 1 LIMIT ?2",
                params![seq, limit],
            )?);
            out.extend(rows(
                "INDEXED BY tasks_pending WHERE queue = ?3 AND priority = ?4 AND job_seq = ?1 AND state = 0 LIMIT ?2",
                params![seq, limit, queue, priority],
            )?);
            out.extend(rows("WHERE job_seq = ?1 AND idx < ?2", params![seq, limit])?);
            Ok(Some(out))
        })
        .await
}
