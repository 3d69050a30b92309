//! Leasing: matching pending tasks to an agent's batch, heartbeats,
//! releases and the expiry of leases that ran out.

use super::*;

/// How many candidate rows one lease query reads per task wanted: the
/// slack lets matching skip tasks this agent cannot take (labels) without a
/// second query.
const CANDIDATES_PER_TASK: u32 = 4;

/// Where a leased task's input is.
enum Input {
    /// In its row, read already.
    Inline(Vec<u8>),
    /// In a file of this size, read after the lease commits so the writer
    /// is not held for the disk.
    File(u64),
}

/// A task's input, or `None` when its file is gone (a damaged data
/// directory): that job is failed with the reason instead of every lease
/// in the queue failing on it.
fn locate_input(
    tx: &Transaction<'_>,
    blobs: &Blobs,
    c: &Candidate,
    now: u64,
) -> StoreResult<Option<Input>> {
    let (data, external): (Vec<u8>, i64) = tx
        .prepare_cached("SELECT data, external FROM task_inputs WHERE job_seq = ?1 AND idx = ?2")?
        .query_row(params![c.seq, c.idx], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if external == 0 {
        return Ok(Some(Input::Inline(data)));
    }
    match blobs.size(c.seq, c.idx) {
        Ok(size) => Ok(Some(Input::File(size))),
        Err(e) => {
            fail_for_missing_input(tx, c.seq, c.idx, &c.job_id, &e, now)?;
            Ok(None)
        }
    }
}

/// Fails a job whose task input file cannot be read.
fn fail_for_missing_input(
    tx: &Transaction<'_>,
    seq: i64,
    idx: i64,
    job_id: &str,
    e: &std::io::Error,
    now: u64,
) -> rusqlite::Result<()> {
    let why = format!("task {idx}'s input file cannot be read: {e}");
    tracing::error!(job = %job_id, "{why}");
    tx.execute(
        "UPDATE tasks SET state = ?3, last_error = ?4 WHERE job_seq = ?1 AND idx = ?2",
        params![seq, idx, FAILED, why],
    )?;
    tx.execute("UPDATE jobs SET failed = failed + 1 WHERE seq = ?1", [seq])?;
    fail_job(tx, seq, &why, now)
}

struct Candidate {
    seq: i64,
    idx: i64,
    replica: i64,
    redundancy: u32,
    work: u64,
    mem: u64,
    job_id: String,
    labels: String,
    timeout_s: Option<i64>,
}

fn labels_match(required: &str, offered: &BTreeMap<String, String>) -> bool {
    if required == "{}" {
        return true;
    }
    match serde_json::from_str::<BTreeMap<String, String>>(required) {
        Ok(req) => req.iter().all(|(k, v)| offered.get(k) == Some(v)),
        Err(_) => false,
    }
}

pub(super) async fn lease(store: &SqliteStore, q: LeaseQuery) -> StoreResult<Vec<LeasedTask>> {
    let next_lease = store.next_lease.clone();
    let blobs = store.blobs.clone();
    let now = q.now_ms;
    let (granted, files) = store.write_relaxed(move |tx| {
        // Checked here, not only when the call came in: a long-poll can
        // outlast the agent's removal or drain.
        let state: Option<String> = tx
            .query_row("SELECT state FROM agents WHERE id = ?1", [&q.agent_id], |r| r.get(0))
            .optional()?;
        if state.as_deref() != Some("active") {
            return Ok((Vec::new(), Vec::new()));
        }
        let queues: Vec<&str> = if q.queues.is_empty() {
            vec![musketeer_tasks::job::DEFAULT_QUEUE]
        } else {
            q.queues.iter().map(String::as_str).collect()
        };
        let sql = candidate_sql(queues.len(), q.labels.is_empty());
        let page_size = (q.max_tasks.max(1) * CANDIDATES_PER_TASK) as i64;
        let deadline = (q.now_ms + q.ttl_ms) as i64;
        let mut granted = Vec::new();
        let mut batch = Batch::default();
        let mut scanned = 0u64;
        let mut jobs_started = HashSet::new();
        // (position in `granted`, job, task) of inputs still in files.
        let mut files: Vec<(usize, i64, i64)> = Vec::new();
        // Keyset cursor: (priority, job, replica, index) of the last row
        // seen. Replica before index: every task's first replica goes
        // out before any second one, so a trusted agent's early answers
        // can make the later replicas unnecessary before anyone runs them.
        let mut cursor = (10i64, 0i64, 0i64, -1i64);
        // Tasks of replicated jobs granted in this batch: one replica each.
        let mut voting: HashSet<(i64, i64)> = HashSet::new();
        'pages: loop {
            let page = candidate_page(tx, &sql, &queues, &q, cursor, page_size)?;
            if page.is_empty() {
                break;
            }
            for (c, priority) in page {
                cursor = (priority, c.seq, c.replica, c.idx);
                scanned += 1;
                if batch.is_full(&q) {
                    break 'pages;
                }
                if !labels_match(&c.labels, &q.labels) {
                    continue;
                }
                // A vote counts only if no agent casts two on one task.
                if c.redundancy > 1
                    && (voting.contains(&(c.seq, c.idx))
                        || tx
                            .prepare_cached(
                                "SELECT 1 FROM tasks WHERE job_seq = ?1 AND idx = ?2 AND agent = ?3",
                            )?
                            .exists(params![c.seq, c.idx, q.agent_id])?)
                {
                    continue;
                }
                if batch.overfills(&q, c.work) {
                    continue;
                }
                let Some(input) = locate_input(tx, &blobs, &c, q.now_ms)? else {
                    continue;
                };
                let (data, size) = match input {
                    Input::Inline(data) => {
                        let size = data.len() as u64;
                        (data, size)
                    }
                    Input::File(size) => {
                        files.push((granted.len(), c.seq, c.idx));
                        (Vec::new(), size)
                    }
                };
                let lease = next_lease.fetch_add(1, Ordering::Relaxed);
                tx.prepare_cached(
                    "UPDATE tasks SET state = 1, attempts = attempts + 1, lease_id = ?3, agent = ?4,
                         deadline_ms = ?5
                     WHERE job_seq = ?1 AND idx = ?2 AND replica = ?6",
                )?
                .execute(params![c.seq, c.idx, lease as i64, q.agent_id, deadline, c.replica])?;
                if c.redundancy > 1 {
                    voting.insert((c.seq, c.idx));
                }
                batch.add(c.work, size);
                jobs_started.insert(c.seq);
                granted.push(LeasedTask {
                    task: TaskRef {
                        job: c.job_id,
                        index: c.idx as u32,
                        lease,
                    },
                    cost: Cost {
                        work: c.work,
                        mem_bytes: c.mem,
                    },
                    timeout_ms: c.timeout_s.map(|s| s as u64 * 1000),
                    input: data,
                });
            }
            if scanned >= rules::MAX_LEASE_SCAN {
                break;
            }
        }
        for seq in jobs_started {
            tx.execute(
                "UPDATE jobs SET state = 'running', started_ms = COALESCE(started_ms, ?2)
                 WHERE seq = ?1 AND state = 'queued'",
                params![seq, q.now_ms as i64],
            )?;
        }
        let capacity = serde_json::to_string(&q.capacity)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE agents SET last_seen_ms = ?2, capacity = ?3 WHERE id = ?1",
            params![q.agent_id, q.now_ms as i64, capacity],
        )?;
        Ok((granted, files))
    })
    .await?;
    read_input_files(store, granted, files, now).await
}

pub(super) async fn heartbeat(
    store: &SqliteStore,
    agent_id: &str,
    running: Vec<TaskRef>,
    now_ms: u64,
    ttl_ms: u64,
) -> StoreResult<HeartbeatAck> {
    let agent_id = agent_id.to_string();
    store
        .write_relaxed(move |tx| {
            let mut ack = HeartbeatAck::default();
            let mut renew = tx.prepare_cached(
                "UPDATE tasks SET deadline_ms = ?5
             WHERE job_seq = (SELECT seq FROM jobs WHERE id = ?1) AND idx = ?2
               AND state = 1 AND lease_id = ?3 AND agent = ?4",
            )?;
            for task in running {
                let n = renew.execute(params![
                    task.job,
                    task.index as i64,
                    task.lease as i64,
                    agent_id,
                    (now_ms + ttl_ms) as i64
                ])?;
                if n == 0 {
                    ack.lost.push(task);
                }
            }
            let state: Option<String> = tx
                .query_row("SELECT state FROM agents WHERE id = ?1", [&agent_id], |r| {
                    r.get(0)
                })
                .optional()?;
            ack.drain = state.as_deref() != Some("active");
            tx.execute(
                "UPDATE agents SET last_seen_ms = ?2 WHERE id = ?1",
                params![agent_id, now_ms as i64],
            )?;
            Ok(ack)
        })
        .await
}

pub(super) async fn release(
    store: &SqliteStore,
    agent_id: &str,
    tasks: Vec<TaskRef>,
) -> StoreResult<u32> {
    let agent_id = agent_id.to_string();
    store
        .write_relaxed(move |tx| {
            let mut st = tx.prepare_cached(
                "UPDATE tasks SET state = 0, attempts = MAX(attempts - 1, 0),
                 lease_id = NULL, agent = NULL, deadline_ms = NULL
             WHERE job_seq = (SELECT seq FROM jobs WHERE id = ?1) AND idx = ?2
               AND state = 1 AND lease_id = ?3 AND agent = ?4",
            )?;
            let mut released = 0;
            for t in tasks {
                released +=
                    st.execute(params![t.job, t.index as i64, t.lease as i64, agent_id])? as u32;
            }
            Ok(released)
        })
        .await
}

pub(super) async fn expire_leases(store: &SqliteStore, now_ms: u64) -> StoreResult<u32> {
    store
        .write_relaxed(move |tx| {
            let expired: Vec<(i64, i64, i64, i64, i64, Option<String>)> = tx
                .prepare_cached(
                    "SELECT t.job_seq, t.idx, t.replica, t.attempts, j.max_attempts, t.agent
                 FROM tasks t JOIN jobs j ON j.seq = t.job_seq
                 WHERE t.state = 1 AND t.deadline_ms < ?1",
                )?
                .query_map([now_ms as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            for (seq, idx, replica, attempts, max_attempts, agent) in &expired {
                let reason = format!(
                    "lease expired: agent {} stopped responding",
                    agent.as_deref().unwrap_or("?")
                );
                retry_or_fail(
                    tx,
                    EndedAttempt {
                        seq: *seq,
                        idx: *idx,
                        replica: *replica,
                        attempts: *attempts as u32,
                        max_attempts: *max_attempts as u32,
                        reason: &reason,
                        backoff: false,
                    },
                    now_ms,
                )?;
            }
            Ok(expired.len() as u32)
        })
        .await
}

pub(super) async fn renew_all_leases(
    store: &SqliteStore,
    now_ms: u64,
    ttl_ms: u64,
) -> StoreResult<u64> {
    store
        .write_relaxed(move |tx| {
            Ok(tx.execute(
                "UPDATE tasks SET deadline_ms = MAX(deadline_ms, ?1) WHERE state = 1",
                [(now_ms + ttl_ms) as i64],
            )? as u64)
        })
        .await
}

/// The query for one page of lease candidates: pending tasks of these
/// queues past their not-before time (countdown or backoff) and, if never
/// leased, before their job expires, that fit the agent's memory, after a keyset
/// cursor, in lease order.
fn candidate_sql(queues: usize, no_labels: bool) -> String {
    // Memory, and labels for an agent that carries none, filter in
    // SQL; other label checks happen in `lease`, page by page, so tasks
    // this agent cannot take never hide those behind them.
    let placeholders = vec!["?"; queues].join(",");
    let labels_clause = if no_labels {
        " AND j.labels = '{}'"
    } else {
        ""
    };
    format!(
        "SELECT t.job_seq, t.idx, t.work, t.mem, j.id, j.labels, j.timeout_s, t.priority,
                t.replica, j.redundancy
         FROM tasks t JOIN jobs j ON j.seq = t.job_seq
         WHERE t.state = 0 AND t.queue IN ({placeholders}) AND t.not_before_ms <= ?
           AND (t.attempts > 0 OR j.expires_ms IS NULL OR j.expires_ms > ?)
           AND t.mem <= ?{labels_clause}
           AND (t.priority < ? OR (t.priority = ? AND (t.job_seq > ? OR (t.job_seq = ?
                AND (t.replica > ? OR (t.replica = ? AND t.idx > ?))))))
         ORDER BY t.priority DESC, t.job_seq, t.replica, t.idx
         LIMIT ?"
    )
}

/// One page of lease candidates after `cursor` (priority, job, replica,
/// index), with each one's priority.
fn candidate_page(
    tx: &Transaction<'_>,
    sql: &str,
    queues: &[&str],
    q: &LeaseQuery,
    cursor: (i64, i64, i64, i64),
    page_size: i64,
) -> rusqlite::Result<Vec<(Candidate, i64)>> {
    let mut st = tx.prepare_cached(sql)?;
    let mut args: Vec<rusqlite::types::Value> =
        queues.iter().map(|q| (*q).to_string().into()).collect();
    args.push((q.now_ms as i64).into());
    // A task never leased is not leased past its job's `expires`.
    args.push((q.now_ms as i64).into());
    args.push((q.mem_bytes.min(i64::MAX as u64) as i64).into());
    args.extend(
        [
            cursor.0, cursor.0, cursor.1, cursor.1, cursor.2, cursor.2, cursor.3, page_size,
        ]
        .map(Into::into),
    );
    let page = st
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok((
                Candidate {
                    seq: r.get(0)?,
                    idx: r.get(1)?,
                    work: r.get::<_, i64>(2)? as u64,
                    mem: r.get::<_, i64>(3)? as u64,
                    job_id: r.get(4)?,
                    labels: r.get(5)?,
                    timeout_s: r.get(6)?,
                    replica: r.get(8)?,
                    redundancy: r.get::<_, i64>(9)? as u32,
                },
                r.get(7)?,
            ))
        })?
        .collect();
    page
}

/// Reads the granted inputs that live in files, after the lease committed
/// (so the writer is not held for file reads); a task whose file is gone
/// fails its job and leaves the batch.
async fn read_input_files(
    store: &SqliteStore,
    mut granted: Vec<LeasedTask>,
    files: Vec<(usize, i64, i64)>,
    now: u64,
) -> StoreResult<Vec<LeasedTask>> {
    if files.is_empty() {
        return Ok(granted);
    }
    let blobs = store.blobs.clone();
    let read = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(pos, seq, idx)| (pos, seq, idx, blobs.read(seq, idx)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| StoreError::Worker(e.to_string()))?;
    let mut lost = Vec::new();
    for (pos, seq, idx, data) in read {
        match data {
            Ok(data) => granted[pos].input = data,
            Err(e) => lost.push((pos, seq, idx, e)),
        }
    }
    if !lost.is_empty() {
        // Deleted between the lease and the read: fail those jobs too.
        let failures: Vec<(i64, i64, String, String)> = lost
            .iter()
            .map(|(pos, seq, idx, e)| (*seq, *idx, granted[*pos].task.job.clone(), e.to_string()))
            .collect();
        store
            .write(move |tx| {
                for (seq, idx, job, e) in &failures {
                    fail_for_missing_input(
                        tx,
                        *seq,
                        *idx,
                        job,
                        &std::io::Error::other(e.clone()),
                        now,
                    )?;
                }
                Ok(())
            })
            .await?;
        let positions: HashSet<usize> = lost.iter().map(|l| l.0).collect();
        granted = granted
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !positions.contains(i))
            .map(|(_, t)| t)
            .collect();
    }
    Ok(granted)
}
