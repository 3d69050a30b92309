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

use musketeer_tasks::protocol::{HeartbeatAck, LeasedTask, TaskOutcome, TaskRef, TaskReport};
use musketeer_tasks::{Cost, Kernel};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::blobs::{Blobs, INLINE_MAX};
use super::rules::{self, AfterAttempt, Batch};
use super::*;

mod agents;
mod expiry;
mod jobs;
mod leasing;
mod modules;
mod results;
mod schedules;
mod schema;
mod workflows;

use schema::migrate;

const PENDING: i64 = 0;
const LEASED: i64 = 1;
const DONE: i64 = 2;
const FAILED: i64 = 3;
const CANCELLED: i64 = 4;

/// Reader connections: a few, as reads are short except a job's outputs.
const READERS: usize = 4;

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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        let source = Box::new(e);
        if is_full(&source) {
            return StoreError::Full {
                store: "SQLite",
                source,
            };
        }
        StoreError::Database {
            store: "SQLite",
            source,
        }
    }
}

/// Whether SQLite failed for lack of disk space.
fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(e, _)
        if e.code == rusqlite::ErrorCode::DiskFull
            // The shared-memory index of the WAL could not grow: on Linux,
            // a full tmpfs or /dev/shm.
            || e.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE)
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

fn hash_of(v: Vec<u8>) -> StoreResult<[u8; 32]> {
    v.try_into()
        .map_err(|_| StoreError::Corrupt("secret hash is not 32 bytes".into()))
}

fn job_seq(tx: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    tx.query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()
}

/// Fails a job for good: records why, and cancels what is left of it.
fn fail_job(tx: &Transaction<'_>, seq: i64, reason: &str, now: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', error = ?2, finished_ms = ?3
         WHERE seq = ?1 AND state IN ('queued', 'running', 'waiting')",
        params![seq, reason, now as i64],
    )?;
    cancel_open_tasks(tx, seq)
}

/// Cancels a finished job's pending and leased tasks and forgets its votes.
fn cancel_open_tasks(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
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
    let not_before = match rules::after_attempt(attempts, max_attempts, backoff, now) {
        AfterAttempt::Fail => None,
        AfterAttempt::Retry { not_before_ms } => Some(not_before_ms),
    };
    if let Some(not_before) = not_before {
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
    } else {
        let changed = tx.execute(
            "UPDATE tasks SET state = ?3, last_error = ?4, lease_id = NULL, agent = NULL, deadline_ms = NULL
             WHERE job_seq = ?1 AND idx = ?2 AND replica = ?6 AND state = ?5",
            params![seq, idx, FAILED, reason, LEASED, replica],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        tx.execute("UPDATE jobs SET failed = failed + 1 WHERE seq = ?1", [seq])?;
        let why = rules::out_of_attempts_reason(idx, attempts, reason);
        fail_job(tx, seq, &why, now)?;
        Ok(false)
    }
}

// Each operation lives in the module of its kind (agents, jobs, leasing,
// results), as in the Redis store: see `store_by_operation!`.
store_by_operation!(SqliteStore {});
