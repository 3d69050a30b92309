//! The embedded store: SQLite (bundled, so nothing to install) in WAL mode.
//!
//! Why SQLite: it is the most widely deployed and tested embedded database
//! there is, it survives a killed process and a power cut with
//! `synchronous=FULL`, and lease matching is a query (`ORDER BY priority`
//! over a partial index of pending tasks) instead of hand-kept indexes.
//!
//! Task rows are small and hot (state, lease, deadline); inputs and outputs
//! live in their own tables, because SQLite rewrites a whole row on update
//! and a 4 MiB text chunk must not be rewritten each time its task is leased.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use musketeer_tasks::protocol::{HeartbeatAck, LeasedTask, TaskOutcome, TaskRef, TaskReport};
use musketeer_tasks::{Cost, Kernel};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::blobs::{Blobs, INLINE_MAX};
use super::*;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    -- AUTOINCREMENT: a job's number names its input folder, so an aborted
    -- upload's number must never be handed to the next job.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kernel TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_s INTEGER,
    redundancy INTEGER NOT NULL,
    labels TEXT NOT NULL,
    state TEXT NOT NULL,
    sealed INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    reduce_plan BLOB NOT NULL,
    result BLOB
);
-- state: 0 pending, 1 leased, 2 done, 3 failed, 4 cancelled.
-- A job with redundancy N has N rows (replicas) per task, more when its
-- replicas disagree. `agent` stays set on a done row: no agent may vote
-- twice on one task.
CREATE TABLE IF NOT EXISTS tasks (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    replica INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    work INTEGER NOT NULL,
    mem INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    lease_id INTEGER,
    agent TEXT,
    deadline_ms INTEGER,
    last_error TEXT,
    PRIMARY KEY (job_seq, idx, replica)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks(queue, priority DESC, job_seq, replica, idx) WHERE state = 0;
CREATE INDEX IF NOT EXISTS tasks_leased ON tasks(deadline_ms) WHERE state = 1;
CREATE INDEX IF NOT EXISTS tasks_by_agent ON tasks(agent) WHERE state = 1;
-- external: the input is a file in the blob folder (see blobs.rs), not `data`.
CREATE TABLE IF NOT EXISTS task_inputs (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    external INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_seq, idx)
);
CREATE TABLE IF NOT EXISTS task_outputs (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_seq, idx)
);
-- Returned replicas of tasks not yet decided: the votes.
CREATE TABLE IF NOT EXISTS replica_outputs (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    replica INTEGER NOT NULL,
    agent TEXT NOT NULL,
    digest BLOB NOT NULL,
    cpu_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_seq, idx, replica)
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    capacity TEXT NOT NULL,
    state TEXT NOT NULL,
    token_id TEXT NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    tasks_done INTEGER NOT NULL DEFAULT 0,
    cpu_ms INTEGER NOT NULL DEFAULT 0,
    results_valid INTEGER NOT NULL DEFAULT 0,
    results_invalid INTEGER NOT NULL DEFAULT 0,
    valid_streak INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    uses INTEGER NOT NULL DEFAULT 0
);
"#;

/// The schema's version, in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// Brings a data directory made by schema version 1 (one row per task, no
/// validation counts) up to [`SCHEMA_VERSION`], in two halves around
/// [`SCHEMA`]: the old task table is set aside, [`SCHEMA`] makes the new
/// one, and its rows are copied over.
const MIGRATE_FROM_1_BEFORE: &str = r#"
DROP INDEX IF EXISTS tasks_pending;
DROP INDEX IF EXISTS tasks_leased;
DROP INDEX IF EXISTS tasks_by_agent;
ALTER TABLE tasks RENAME TO tasks_v1;
ALTER TABLE agents ADD COLUMN results_valid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN results_invalid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN valid_streak INTEGER NOT NULL DEFAULT 0;
"#;

/// The second half of the upgrade from version 1 (see [`MIGRATE_FROM_1_BEFORE`]).
const MIGRATE_FROM_1_AFTER: &str = r#"
INSERT INTO tasks (job_seq, idx, state, queue, priority, work, mem, attempts, not_before_ms,
                   lease_id, agent, deadline_ms, last_error)
    SELECT job_seq, idx, state, queue, priority, work, mem, attempts, not_before_ms,
           lease_id, agent, deadline_ms, last_error FROM tasks_v1;
DROP TABLE tasks_v1;
"#;

const PENDING: i64 = 0;
const LEASED: i64 = 1;
const DONE: i64 = 2;
const FAILED: i64 = 3;
const CANCELLED: i64 = 4;

/// Reader connections: a few, as reads are short except a job's outputs.
const READERS: usize = 4;

/// How many candidate rows one lease query reads per task wanted: the
/// slack lets matching skip tasks this agent cannot take (labels) without a
/// second query.
const CANDIDATES_PER_TASK: u32 = 4;

/// Most CPU time credited for one task (a week): the figure comes from the
/// agent, and an absurd one must neither inflate credit nor overflow it.
const MAX_REPORTED_CPU_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most candidate rows one lease looks at before giving up: bounds the
/// time the writer is held when a queue is full of work this agent cannot
/// take (labels it lacks); the long-poll looks again a second later.
const MAX_LEASE_SCAN: usize = 16_384;

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

/// The writing connection and its current `synchronous` mode.
struct Writer {
    conn: Connection,
    durable: bool,
}

/// The embedded store, in one SQLite file under the data directory.
pub struct SqliteStore {
    /// The one connection that writes; SQLite allows one writer anyway, and
    /// a mutex in front of it queues writers without busy-retry loops.
    writer: Arc<Mutex<Writer>>,
    /// Connections for reads, which WAL lets run beside the writer and
    /// beside each other: several, so that agents' authentication and job
    /// status reads do not queue behind one long read (a job's outputs).
    readers: Arc<[Mutex<Connection>]>,
    /// Spreads reads over [`SqliteStore::readers`].
    next_reader: Arc<AtomicU64>,
    /// Lease ids: seeded from the clock so they keep growing across restarts,
    /// which is what makes a stale lease's result recognisable.
    next_lease: Arc<AtomicU64>,
    /// Large inputs, as files beside the database.
    blobs: Blobs,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the API says "accepted".
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 10_000)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let now = crate::clock::now_ms();
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(Writer {
                conn: writer,
                durable: true,
            })),
            readers: readers.into(),
            next_reader: Arc::new(AtomicU64::new(0)),
            next_lease: Arc::new(AtomicU64::new(now << 12)),
            blobs: Blobs::new(path.with_extension("blobs")),
        })
    }

    /// Runs `f` in one write transaction that is on disk when this returns
    /// (`synchronous=FULL`): for what a user was told happened (a job
    /// accepted, a token revoked, a job cancelled or finished).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.write_with(true, f).await
    }

    /// Runs `f` in one write transaction that survives the coordinator's
    /// crash but not the machine's (`synchronous=NORMAL`: no fsync of its
    /// own). For the work traffic (leases, results, heartbeats): losing one
    /// to a power cut only makes a task run again, which lease ids make
    /// harmless, and the next durable commit carries it to disk anyway.
    async fn write_relaxed<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.write_with(false, f).await
    }

    async fn write_with<T, F>(&self, durable: bool, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let writer = &mut *guard;
            if writer.durable != durable {
                let mode = if durable { "FULL" } else { "NORMAL" };
                writer.conn.pragma_update(None, "synchronous", mode)?;
                writer.durable = durable;
            }
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Runs `f` on a reader connection on a blocking thread: the first
    /// free one from a rotating start, or the start's if all are busy.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) as usize;
        tokio::task::spawn_blocking(move || {
            let n = readers.len();
            let free = (0..n).find_map(|i| readers[(start + i) % n].try_lock().ok());
            let conn = match free {
                Some(conn) => conn,
                None => readers[start % n].lock().unwrap_or_else(|p| p.into_inner()),
            };
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

/// Creates the schema, or brings an older one up to date, in one
/// transaction: a crash mid-way leaves the old schema, not half of each.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the data directory was written by a newer Musketeer (schema {version}, this one \
             knows {SCHEMA_VERSION}): upgrade the coordinator"
        )));
    }
    let has_tasks: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
        [],
        |r| r.get(0),
    )?;
    let upgrade = has_tasks && version < 2;
    if upgrade {
        tracing::info!("upgrading the store to schema {SCHEMA_VERSION} (replicated tasks)");
        tx.execute_batch(MIGRATE_FROM_1_BEFORE)?;
    }
    tx.execute_batch(SCHEMA)?;
    if upgrade {
        tx.execute_batch(MIGRATE_FROM_1_AFTER)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn hash_of(v: Vec<u8>) -> StoreResult<[u8; 32]> {
    v.try_into()
        .map_err(|_| StoreError::Corrupt("secret hash is not 32 bytes".into()))
}

const JOB_COLUMNS: &str = "id, kernel, state, queue, priority, total, done, failed, error, created_ms, started_ms, finished_ms";

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
    })
}

fn job_seq(tx: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    tx.query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()
}

/// Fails a job for good: records why, and cancels what is left of it.
fn fail_job(tx: &Transaction<'_>, seq: i64, reason: &str, now: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', error = ?2, finished_ms = ?3
         WHERE seq = ?1 AND state IN ('queued', 'running')",
        params![seq, reason, now as i64],
    )?;
    tx.execute(
        "UPDATE tasks SET state = ?2, lease_id = NULL, agent = NULL, deadline_ms = NULL
         WHERE job_seq = ?1 AND state IN (?3, ?4)",
        params![seq, CANCELLED, PENDING, LEASED],
    )?;
    // Votes on its undecided tasks decide nothing now; left behind, a later
    // removal of their voter would queue those replicas again.
    tx.execute("DELETE FROM replica_outputs WHERE job_seq = ?1", [seq])?;
    Ok(())
}

/// One task's attempt that ended without a result.
struct EndedAttempt<'a> {
    seq: i64,
    idx: i64,
    replica: i64,
    /// Attempts made so far, this one included.
    attempts: u32,
    max_attempts: u32,
    reason: &'a str,
    /// Whether to wait before the next attempt: yes after a failure (it may
    /// fail the same way at once), no after a lost agent.
    backoff: bool,
}

/// Retries the task of an ended attempt after its backoff, or fails its
/// job once attempts run out; true if the task was queued again.
fn retry_or_fail(tx: &Transaction<'_>, a: EndedAttempt<'_>, now: u64) -> rusqlite::Result<bool> {
    let EndedAttempt {
        seq,
        idx,
        replica,
        attempts,
        max_attempts,
        reason,
        backoff,
    } = a;
    // Only a task still leased: an earlier step of the same transaction may
    // have failed its job and cancelled it already.
    if attempts >= max_attempts {
        let changed = tx.execute(
            "UPDATE tasks SET state = ?3, last_error = ?4, lease_id = NULL, agent = NULL, deadline_ms = NULL
             WHERE job_seq = ?1 AND idx = ?2 AND replica = ?6 AND state = ?5",
            params![seq, idx, FAILED, reason, LEASED, replica],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        tx.execute("UPDATE jobs SET failed = failed + 1 WHERE seq = ?1", [seq])?;
        let why = format!("task {idx} failed after {attempts} attempt(s): {reason}");
        fail_job(tx, seq, &why, now)?;
        Ok(false)
    } else {
        let not_before = if backoff {
            now + retry_backoff_ms(attempts)
        } else {
            now
        };
        let changed = tx.execute(
            "UPDATE tasks SET state = ?3, last_error = ?4, not_before_ms = ?5,
                 lease_id = NULL, agent = NULL, deadline_ms = NULL
             WHERE job_seq = ?1 AND idx = ?2 AND replica = ?7 AND state = ?6",
            params![
                seq,
                idx,
                PENDING,
                reason,
                not_before as i64,
                LEASED,
                replica
            ],
        )?;
        Ok(changed > 0)
    }
}

/// What `complete` needs of a reported task's job.
#[derive(Clone)]
struct ReportedJob {
    seq: i64,
    kernel: String,
    max_attempts: u32,
    redundancy: u32,
}

/// One replica's result, about to be counted as a vote.
struct Ballot<'a> {
    seq: i64,
    idx: i64,
    replica: i64,
    job_id: &'a str,
    redundancy: u32,
}

/// Whether a vote decided its task.
enum VoteOutcome {
    /// The task has its answer (or its job failed on disagreement).
    Decided,
    /// More replicas must come back first.
    Open,
}

/// Records a replica's output as a vote and judges its task by
/// [`validation::judge`]; on a decision, stores the answer, cancels the
/// replicas still out, and credits or marks down each voter.
fn count_vote(
    tx: &Transaction<'_>,
    b: Ballot<'_>,
    agent: &str,
    output: Vec<u8>,
    cpu_ms: i64,
    now: u64,
) -> StoreResult<VoteOutcome> {
    let digest = validation::digest(&output);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO replica_outputs (job_seq, idx, replica, agent, digest, cpu_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![b.seq, b.idx, b.replica, agent, &digest[..], cpu_ms, output])?;
    let votes: Vec<(String, [u8; 32], i64)> = tx
        .prepare_cached(
            "SELECT agent, digest, cpu_ms FROM replica_outputs WHERE job_seq = ?1 AND idx = ?2
             ORDER BY rowid",
        )?
        .query_map(params![b.seq, b.idx], |r| {
            Ok((r.get(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?))
        })?
        .map(|v| {
            let (a, d, c) = v?;
            Ok((a, hash_of(d)?, c))
        })
        .collect::<StoreResult<_>>()?;
    let (outstanding, replicas): (i64, i64) = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(state IN (0, 1)), 0), COUNT(*) FROM tasks
             WHERE job_seq = ?1 AND idx = ?2",
        )?
        .query_row(params![b.seq, b.idx], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let trusted = agent_trust(tx, agent)?.trust() == Trust::Trusted;
    let solo = trusted && !validation::is_spot_check(b.job_id, b.idx as u32);
    let ballots: Vec<validation::Vote<'_>> = votes
        .iter()
        .map(|(agent, digest, _)| validation::Vote {
            agent,
            digest: *digest,
        })
        .collect();
    let verdict = validation::judge(
        &ballots,
        outstanding as usize,
        replicas as u32,
        b.redundancy,
        solo,
    );
    match verdict {
        validation::Verdict::Accept(answer) => {
            let data: Vec<u8> = tx.query_row(
                "SELECT data FROM replica_outputs WHERE job_seq = ?1 AND idx = ?2 AND digest = ?3 LIMIT 1",
                params![b.seq, b.idx, &answer[..]],
                |r| r.get(0),
            )?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO task_outputs (job_seq, idx, data) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![b.seq, b.idx, data])?;
            tx.execute("UPDATE jobs SET done = done + 1 WHERE seq = ?1", [b.seq])?;
            // Replicas still out are no longer needed: their results will
            // come back stale.
            tx.prepare_cached(
                "UPDATE tasks SET state = ?3, lease_id = NULL, agent = NULL, deadline_ms = NULL
                 WHERE job_seq = ?1 AND idx = ?2 AND state IN (0, 1)",
            )?
            .execute(params![b.seq, b.idx, CANCELLED])?;
            for (voter, digest, cpu) in &votes {
                if *digest == answer {
                    tx.prepare_cached(
                        "UPDATE agents SET results_valid = results_valid + 1,
                             valid_streak = valid_streak + 1, tasks_done = tasks_done + 1,
                             cpu_ms = CASE WHEN cpu_ms > 4611686018427387904 THEN cpu_ms ELSE cpu_ms + ?2 END
                         WHERE id = ?1",
                    )?
                    .execute(params![voter, cpu])?;
                } else {
                    tracing::warn!(agent = %voter, job = %b.job_id, task = b.idx, "outvoted: its result disagreed with the majority");
                    tx.prepare_cached(
                        "UPDATE agents SET results_invalid = results_invalid + 1, valid_streak = 0
                         WHERE id = ?1",
                    )?
                    .execute([voter])?;
                }
            }
            tx.prepare_cached("DELETE FROM replica_outputs WHERE job_seq = ?1 AND idx = ?2")?
                .execute(params![b.seq, b.idx])?;
            Ok(VoteOutcome::Decided)
        }
        validation::Verdict::Wait => Ok(VoteOutcome::Open),
        validation::Verdict::AddReplica => {
            tracing::info!(job = %b.job_id, task = b.idx, "replicas disagree: asking another agent");
            reset_streaks(tx, &votes)?;
            tx.prepare_cached(
                "INSERT INTO tasks (job_seq, idx, replica, state, queue, priority, work, mem)
                 SELECT job_seq, idx,
                        (SELECT MAX(replica) + 1 FROM tasks WHERE job_seq = ?1 AND idx = ?2),
                        ?3, queue, priority, work, mem
                 FROM tasks WHERE job_seq = ?1 AND idx = ?2 AND replica = 0",
            )?
            .execute(params![b.seq, b.idx, PENDING])?;
            Ok(VoteOutcome::Open)
        }
        validation::Verdict::GiveUp(why) => {
            reset_streaks(tx, &votes)?;
            tx.execute(
                "UPDATE jobs SET failed = failed + 1 WHERE seq = ?1",
                [b.seq],
            )?;
            fail_job(tx, b.seq, &format!("task {}: {why}", b.idx), now)?;
            Ok(VoteOutcome::Decided)
        }
    }
}

/// Every voter on a disputed task loses its streak at once, before the
/// tie-break says who was wrong: otherwise a liar earns trust from its
/// quick agreements while its lies wait for a third agent.
fn reset_streaks(tx: &Transaction<'_>, votes: &[(String, [u8; 32], i64)]) -> StoreResult<()> {
    let mut st = tx.prepare_cached("UPDATE agents SET valid_streak = 0 WHERE id = ?1")?;
    for (voter, _, _) in votes {
        st.execute([voter])?;
    }
    Ok(())
}

/// An agent's validation record.
fn agent_trust(tx: &Connection, agent: &str) -> rusqlite::Result<validation::TrustRecord> {
    Ok(tx
        .prepare_cached(
            "SELECT results_valid, results_invalid, valid_streak FROM agents WHERE id = ?1",
        )?
        .query_row([agent], |r| {
            Ok(validation::TrustRecord {
                valid: r.get::<_, i64>(0)? as u64,
                invalid: r.get::<_, i64>(1)? as u64,
                streak: r.get::<_, i64>(2)? as u64,
            })
        })
        .optional()?
        .unwrap_or_default())
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

#[async_trait]
impl Store for SqliteStore {
    async fn create_token(&self, id: &str, secret_hash: [u8; 32], now_ms: u64) -> StoreResult<()> {
        let id = id.to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO tokens (id, secret_hash, created_ms) VALUES (?1, ?2, ?3)",
                params![id, secret_hash.to_vec(), now_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT id, created_ms, revoked, uses FROM tokens ORDER BY created_ms")?;
            let rows = st.query_map([], |r| {
                Ok(TokenRecord {
                    id: r.get(0)?,
                    created_ms: r.get::<_, i64>(1)? as u64,
                    revoked: r.get::<_, i64>(2)? != 0,
                    uses: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn revoke_token(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |tx| {
            Ok(tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", [id])? > 0)
        })
        .await
    }

    async fn enrol_agent(
        &self,
        token_hash: [u8; 32],
        agent: NewAgent,
    ) -> StoreResult<Result<(), EnrolRefusal>> {
        self.write(move |tx| {
            let token: Option<(String, i64)> = tx
                .query_row(
                    "SELECT id, revoked FROM tokens WHERE secret_hash = ?1",
                    [token_hash.to_vec()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let token_id = match token {
                None => return Ok(Err(EnrolRefusal::UnknownToken)),
                Some((_, revoked)) if revoked != 0 => return Ok(Err(EnrolRefusal::RevokedToken)),
                Some((id, _)) => id,
            };
            tx.execute("UPDATE tokens SET uses = uses + 1 WHERE id = ?1", [&token_id])?;
            let capacity = serde_json::to_string(&agent.capacity)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO agents (id, secret_hash, capacity, state, token_id, enrolled_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?5)",
                params![agent.id, agent.secret_hash.to_vec(), capacity, token_id, agent.now_ms as i64],
            )?;
            Ok(Ok(()))
        })
        .await
    }

    async fn agent_auth(&self, id: &str) -> StoreResult<Option<AgentAuth>> {
        let id = id.to_string();
        self.read(move |c| {
            let row: Option<(Vec<u8>, String)> = c
                .query_row(
                    "SELECT secret_hash, state FROM agents WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(hash, state)| {
                Ok(AgentAuth {
                    secret_hash: hash_of(hash)?,
                    state: AgentState::parse(&state).unwrap_or(AgentState::Removed),
                })
            })
            .transpose()
        })
        .await
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT a.id, a.capacity, a.state, a.token_id, a.enrolled_ms, a.last_seen_ms,
                        a.tasks_done, a.cpu_ms,
                        (SELECT COUNT(*) FROM tasks t WHERE t.state = 1 AND t.agent = a.id),
                        a.results_valid, a.results_invalid, a.valid_streak
                 FROM agents a ORDER BY a.enrolled_ms",
            )?;
            let rows = st.query_map([], |r| {
                let capacity: String = r.get(1)?;
                let state: String = r.get(2)?;
                Ok(AgentRecord {
                    id: r.get(0)?,
                    capacity: serde_json::from_str(&capacity).unwrap_or_default(),
                    state: AgentState::parse(&state).unwrap_or(AgentState::Removed),
                    token_id: r.get(3)?,
                    enrolled_ms: r.get::<_, i64>(4)? as u64,
                    last_seen_ms: r.get::<_, i64>(5)? as u64,
                    tasks_done: r.get::<_, i64>(6)? as u64,
                    cpu_ms: r.get::<_, i64>(7)? as u64,
                    leased: r.get::<_, i64>(8)? as u64,
                    results_valid: r.get::<_, i64>(9)? as u64,
                    results_invalid: r.get::<_, i64>(10)? as u64,
                    trust: validation::TrustRecord {
                        valid: r.get::<_, i64>(9)? as u64,
                        invalid: r.get::<_, i64>(10)? as u64,
                        streak: r.get::<_, i64>(11)? as u64,
                    }
                    .trust(),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn drain_agent(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE agents SET state = 'draining' WHERE id = ?1 AND state = 'active'",
                [id],
            )? > 0)
        })
        .await
    }

    async fn remove_agent(&self, id: &str, _now_ms: u64) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |tx| {
            let changed = tx.execute(
                "UPDATE agents SET state = 'removed' WHERE id = ?1 AND state != 'removed'",
                [&id],
            )?;
            // The operator took the agent away; that is no fault of the
            // tasks it held, so they go back without losing an attempt.
            tx.execute(
                "UPDATE tasks SET state = ?2, attempts = MAX(attempts - 1, 0),
                     lease_id = NULL, agent = NULL, deadline_ms = NULL
                 WHERE state = ?3 AND agent = ?1",
                params![id, PENDING, LEASED],
            )?;
            // Its votes on undecided tasks go too: an operator removes an
            // agent because its results are not to be believed. Those
            // replicas run again on other agents.
            tx.execute(
                "UPDATE tasks SET state = ?2, agent = NULL
                 WHERE state = ?3 AND agent = ?1 AND EXISTS (
                     SELECT 1 FROM replica_outputs r WHERE r.job_seq = tasks.job_seq
                     AND r.idx = tasks.idx AND r.replica = tasks.replica)",
                params![id, PENDING, DONE],
            )?;
            tx.execute("DELETE FROM replica_outputs WHERE agent = ?1", [&id])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn begin_job(&self, job: NewJob) -> StoreResult<()> {
        self.write_relaxed(move |tx| {
            let labels = serde_json::to_string(&job.options.labels)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO jobs (id, kernel, queue, priority, max_attempts, timeout_s, redundancy,
                                   labels, state, created_ms, reduce_plan)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10)",
                params![
                    job.id,
                    job.kernel,
                    job.options.queue,
                    job.options.priority as i64,
                    job.options.max_attempts as i64,
                    job.options.timeout_s.map(|t| t as i64),
                    job.options.redundancy as i64,
                    labels,
                    job.created_ms as i64,
                    job.reduce_plan,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn add_tasks(&self, job_id: &str, tasks: Vec<NewTask>) -> StoreResult<()> {
        let id = job_id.to_string();
        let job_id = job_id.to_string();
        let (seq, total): (i64, i64) = self
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
        let blobs = self.blobs.clone();
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
        self.write_relaxed(move |tx| {
            let (queue, priority, now_total, state, redundancy): (String, i64, i64, String, i64) =
                tx.query_row(
                    "SELECT queue, priority, total, state, redundancy FROM jobs
                     WHERE seq = ?1 AND id = ?2 AND sealed = 0",
                    params![seq, job_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
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
            let mut task_row = tx.prepare_cached(
                "INSERT INTO tasks (job_seq, idx, replica, state, queue, priority, work, mem)
                 VALUES (?1, ?2, ?8, ?7, ?3, ?4, ?5, ?6)",
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
                        replica
                    ])?;
                }
                input_row.execute(params![seq, idx, task.input, external as i64])?;
            }
            tx.execute(
                "UPDATE jobs SET total = total + ?2 WHERE seq = ?1",
                params![seq, n],
            )?;
            Ok(())
        })
        .await
    }

    async fn seal_job(&self, job_id: &str) -> StoreResult<(u64, bool)> {
        let id = job_id.to_string();
        let seq = self.read(move |c| Ok(job_seq(c, &id)?)).await?;
        if let Some(seq) = seq {
            // Durable before the submitter is told "created".
            let blobs = self.blobs.clone();
            tokio::task::spawn_blocking(move || blobs.sync_job(seq))
                .await
                .map_err(|e| StoreError::Worker(e.to_string()))??;
        }
        let job_id = job_id.to_string();
        self.write(move |tx| {
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

    async fn abort_job(&self, job_id: &str) -> StoreResult<()> {
        let job_id = job_id.to_string();
        let seq = self
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
            self.blobs.remove_job(seq);
        }
        Ok(())
    }

    async fn abort_unsealed_jobs(&self) -> StoreResult<u64> {
        let (dropped, known) = self
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
        for seq in self.blobs.jobs()? {
            if !known.contains(&seq) {
                self.blobs.remove_job(seq);
            }
        }
        Ok(dropped)
    }

    async fn job(&self, id: &str) -> StoreResult<Option<JobStatus>> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND sealed = 1"),
                [id],
                job_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn list_jobs(&self, limit: u32) -> StoreResult<Vec<JobStatus>> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE sealed = 1 ORDER BY seq DESC LIMIT ?1"
            ))?;
            let rows = st.query_map([limit as i64], job_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn cancel_job(&self, id: &str, now_ms: u64) -> StoreResult<Option<JobStatus>> {
        let id = id.to_string();
        self.write(move |tx| {
            let Some(seq) = job_seq(tx, &id)? else {
                return Ok(None);
            };
            let changed = tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_ms = ?2
                 WHERE seq = ?1 AND state IN ('queued', 'running')",
                params![seq, now_ms as i64],
            )?;
            if changed > 0 {
                tx.execute(
                    "UPDATE tasks SET state = ?2, lease_id = NULL, agent = NULL, deadline_ms = NULL
                     WHERE job_seq = ?1 AND state IN (?3, ?4)",
                    params![seq, CANCELLED, PENDING, LEASED],
                )?;
                tx.execute("DELETE FROM replica_outputs WHERE job_seq = ?1", [seq])?;
            }
            Ok(tx
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq = ?1 AND sealed = 1"),
                    [seq],
                    job_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn job_outputs(&self, id: &str) -> StoreResult<(Vec<u8>, Vec<Vec<u8>>)> {
        let id = id.to_string();
        self.read(move |c| {
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

    async fn finish_job(
        &self,
        id: &str,
        result: Result<Vec<u8>, String>,
        now_ms: u64,
    ) -> StoreResult<()> {
        let id = id.to_string();
        let cleared = self
            .write(move |tx| {
                match result {
                    Ok(bytes) => {
                        tx.execute(
                            "UPDATE jobs SET state = 'succeeded', result = ?2, finished_ms = ?3
                         WHERE id = ?1 AND state IN ('queued', 'running')",
                            params![id, bytes, now_ms as i64],
                        )?;
                        // The result holds everything now; the per-task outputs
                        // would only double the disk the job takes.
                        let seq = job_seq(tx, &id)?;
                        if let Some(seq) = seq {
                            for table in ["task_outputs", "task_inputs", "replica_outputs"] {
                                tx.execute(
                                    &format!("DELETE FROM {table} WHERE job_seq = ?1"),
                                    [seq],
                                )?;
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
            self.blobs.remove_job(seq);
        }
        Ok(())
    }

    async fn job_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT result FROM jobs WHERE id = ?1 AND state = 'succeeded'",
                [id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn jobs_to_reduce(&self) -> StoreResult<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id FROM jobs WHERE sealed = 1 AND total > 0 AND done = total
                 AND state IN ('queued', 'running')",
            )?;
            let ids = st.query_map([], |r| r.get(0))?;
            Ok(ids.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn lease(&self, q: LeaseQuery) -> StoreResult<Vec<LeasedTask>> {
        let next_lease = self.next_lease.clone();
        let blobs = self.blobs.clone();
        let now = q.now_ms;
        let (mut granted, files) = self.write_relaxed(move |tx| {
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
            let placeholders = vec!["?"; queues.len()].join(",");
            // Memory, and labels for an agent that carries none, filter in
            // SQL; other label checks happen below, page by page, so tasks
            // this agent cannot take never hide those behind them.
            let labels_clause = if q.labels.is_empty() { " AND j.labels = '{}'" } else { "" };
            let sql = format!(
                "SELECT t.job_seq, t.idx, t.work, t.mem, j.id, j.labels, j.timeout_s, t.priority,
                        t.replica, j.redundancy
                 FROM tasks t JOIN jobs j ON j.seq = t.job_seq
                 WHERE t.state = 0 AND t.queue IN ({placeholders}) AND t.not_before_ms <= ?
                   AND t.mem <= ?{labels_clause}
                   AND (t.priority < ? OR (t.priority = ? AND (t.job_seq > ? OR (t.job_seq = ?
                        AND (t.replica > ? OR (t.replica = ? AND t.idx > ?))))))
                 ORDER BY t.priority DESC, t.job_seq, t.replica, t.idx
                 LIMIT ?"
            );
            let page_size = (q.max_tasks.max(1) * CANDIDATES_PER_TASK) as i64;
            let deadline = (q.now_ms + q.ttl_ms) as i64;
            let mut granted = Vec::new();
            let mut work = 0u64;
            let mut bytes = 0u64;
            let mut scanned = 0usize;
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
                let mut st = tx.prepare_cached(&sql)?;
                let mut args: Vec<rusqlite::types::Value> =
                    queues.iter().map(|q| (*q).to_string().into()).collect();
                args.push((q.now_ms as i64).into());
                args.push((q.mem_bytes.min(i64::MAX as u64) as i64).into());
                args.extend(
                    [cursor.0, cursor.0, cursor.1, cursor.1, cursor.2, cursor.2, cursor.3, page_size]
                        .map(Into::into),
                );
                let page: Vec<(Candidate, i64)> = st
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
                    .collect::<Result<_, _>>()?;
                drop(st);
                if page.is_empty() {
                    break;
                }
                for (c, priority) in page {
                    cursor = (priority, c.seq, c.replica, c.idx);
                    scanned += 1;
                    if granted.len() as u32 >= q.max_tasks
                        || (!granted.is_empty() && (work >= q.max_work || bytes >= q.max_bytes))
                    {
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
                    // Always grant at least one task, even one larger than the
                    // agent asked for: otherwise big tasks would never run.
                    if !granted.is_empty() && work + c.work > q.max_work.saturating_mul(3) / 2 {
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
                    work += c.work;
                    bytes += size;
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
                if scanned >= MAX_LEASE_SCAN {
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
        if files.is_empty() {
            return Ok(granted);
        }
        let blobs = self.blobs.clone();
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
                .map(|(pos, seq, idx, e)| {
                    (*seq, *idx, granted[*pos].task.job.clone(), e.to_string())
                })
                .collect();
            self.write(move |tx| {
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

    async fn complete(
        &self,
        agent_id: &str,
        reports: Vec<TaskReport>,
        now_ms: u64,
    ) -> StoreResult<CompleteOutcome> {
        let agent_id = agent_id.to_string();
        self.write_relaxed(move |tx| {
            let mut out = CompleteOutcome::default();
            let mut jobs: HashMap<String, Option<ReportedJob>> = HashMap::new();
            let mut touched = HashSet::new();
            let mut credit_tasks = 0i64;
            let mut credit_cpu = 0i64;
            for report in reports {
                let job = match jobs.get(&report.task.job) {
                    Some(j) => j.clone(),
                    None => {
                        let j = tx
                            .query_row(
                                "SELECT seq, kernel, max_attempts, redundancy FROM jobs WHERE id = ?1",
                                [&report.task.job],
                                |r| {
                                    Ok(ReportedJob {
                                        seq: r.get(0)?,
                                        kernel: r.get(1)?,
                                        max_attempts: r.get::<_, i64>(2)? as u32,
                                        redundancy: r.get::<_, i64>(3)? as u32,
                                    })
                                },
                            )
                            .optional()?;
                        jobs.insert(report.task.job.clone(), j.clone());
                        j
                    }
                };
                let Some(ReportedJob { seq, kernel, max_attempts, redundancy }) = job else {
                    out.stale += 1;
                    continue;
                };
                let idx = report.task.index as i64;
                // Lease ids are unique, so they also tell the replicas apart.
                let held: Option<(i64, i64, Option<String>, i64)> = tx
                    .prepare_cached(
                        "SELECT state, replica, agent, attempts FROM tasks
                         WHERE job_seq = ?1 AND idx = ?2 AND lease_id = ?3",
                    )?
                    .query_row(params![seq, idx, report.task.lease as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                let (replica, attempts) = match held {
                    Some((LEASED, replica, Some(agent), attempts)) if agent == agent_id => {
                        (replica, attempts as u32)
                    }
                    _ => {
                        out.stale += 1;
                        continue;
                    }
                };
                match report.outcome {
                    TaskOutcome::Done(bytes) => {
                        // Another kernel's output would only fail the reduce
                        // later: treat it as a failed attempt now, with the
                        // reason. (The API decoded the output already, outside
                        // this lock; the variant tag is its first byte.)
                        let valid = Kernel::of_encoded(&bytes).map(Kernel::name) == Some(kernel.as_str());
                        if !valid {
                            let reason = format!("agent {agent_id} returned an invalid {kernel} output");
                            let ended = EndedAttempt { seq, idx, replica, attempts, max_attempts, reason: &reason, backoff: true };
                            if retry_or_fail(tx, ended, now_ms)? {
                                out.requeued += 1;
                            }
                            out.accepted += 1;
                            continue;
                        }
                        // The row keeps its agent: it has voted on this task.
                        tx.prepare_cached(
                            "UPDATE tasks SET state = ?4, lease_id = NULL, deadline_ms = NULL
                             WHERE job_seq = ?1 AND idx = ?2 AND replica = ?3",
                        )?
                        .execute(params![seq, idx, replica, DONE])?;
                        let cpu_ms = report.cpu_ms.min(MAX_REPORTED_CPU_MS) as i64;
                        if redundancy <= 1 {
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO task_outputs (job_seq, idx, data) VALUES (?1, ?2, ?3)",
                            )?
                            .execute(params![seq, idx, bytes])?;
                            tx.execute("UPDATE jobs SET done = done + 1 WHERE seq = ?1", [seq])?;
                            credit_tasks += 1;
                            credit_cpu += cpu_ms;
                            touched.insert(seq);
                        } else {
                            let vote = Ballot { seq, idx, replica, job_id: &report.task.job, redundancy };
                            match count_vote(tx, vote, &agent_id, bytes, cpu_ms, now_ms)? {
                                VoteOutcome::Decided => {
                                    touched.insert(seq);
                                }
                                VoteOutcome::Open => {}
                            }
                        }
                    }
                    TaskOutcome::Failed(reason) => {
                        let ended = EndedAttempt { seq, idx, replica, attempts, max_attempts, reason: &reason, backoff: true };
                        if retry_or_fail(tx, ended, now_ms)? {
                            out.requeued += 1;
                        }
                    }
                }
                out.accepted += 1;
            }
            for seq in touched {
                let ready: Option<String> = tx
                    .query_row(
                        "SELECT id FROM jobs WHERE seq = ?1 AND sealed = 1 AND done = total
                         AND state IN ('queued', 'running')",
                        [seq],
                        |r| r.get(0),
                    )
                    .optional()?;
                out.ready.extend(ready);
            }
            tx.execute(
                "UPDATE agents SET tasks_done = tasks_done + ?2, last_seen_ms = ?4,
                     cpu_ms = CASE WHEN cpu_ms > 4611686018427387904 THEN cpu_ms ELSE cpu_ms + ?3 END
                 WHERE id = ?1",
                params![agent_id, credit_tasks, credit_cpu, now_ms as i64],
            )?;
            Ok(out)
        })
        .await
    }

    async fn heartbeat(
        &self,
        agent_id: &str,
        running: Vec<TaskRef>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> StoreResult<HeartbeatAck> {
        let agent_id = agent_id.to_string();
        self.write_relaxed(move |tx| {
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

    async fn release(&self, agent_id: &str, tasks: Vec<TaskRef>) -> StoreResult<u32> {
        let agent_id = agent_id.to_string();
        self.write_relaxed(move |tx| {
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

    async fn expire_leases(&self, now_ms: u64) -> StoreResult<u32> {
        self.write_relaxed(move |tx| {
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

    async fn purge_finished_inputs(&self) -> StoreResult<u64> {
        let seqs = self
            .write_relaxed(|tx| {
                let seqs: Vec<i64> = tx
                    .prepare(
                        "SELECT seq FROM jobs WHERE state IN ('failed', 'cancelled')
                         AND EXISTS (SELECT 1 FROM task_inputs i WHERE i.job_seq = jobs.seq)",
                    )?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for &seq in &seqs {
                    for table in ["task_inputs", "task_outputs", "replica_outputs"] {
                        tx.execute(&format!("DELETE FROM {table} WHERE job_seq = ?1"), [seq])?;
                    }
                }
                Ok(seqs)
            })
            .await?;
        for &seq in &seqs {
            self.blobs.remove_job(seq);
        }
        Ok(seqs.len() as u64)
    }

    async fn renew_all_leases(&self, now_ms: u64, ttl_ms: u64) -> StoreResult<u64> {
        self.write_relaxed(move |tx| {
            Ok(tx.execute(
                "UPDATE tasks SET deadline_ms = MAX(deadline_ms, ?1) WHERE state = 1",
                [(now_ms + ttl_ms) as i64],
            )? as u64)
        })
        .await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        self.read(|c| {
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
}

fn delete_job(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    for table in ["task_inputs", "task_outputs", "replica_outputs", "tasks"] {
        tx.execute(&format!("DELETE FROM {table} WHERE job_seq = ?1"), [seq])?;
    }
    tx.execute("DELETE FROM jobs WHERE seq = ?1", [seq])?;
    Ok(())
}
