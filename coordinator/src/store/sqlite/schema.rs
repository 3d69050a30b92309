//! The schema, its version and the upgrades from older versions.

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
-- A workflow: its steps (name, job, needs, body) as JSON, read whole; each
-- step's job is a row of `jobs` whose `workflow` names it.
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    state TEXT NOT NULL,
    steps TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_open ON workflows(created_ms) WHERE state = 'running';
-- A cron schedule: its job body as JSON, its next tick, its newest jobs.
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    job TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    next_run_ms INTEGER NOT NULL,
    last_jobs TEXT NOT NULL DEFAULT '[]',
    claimed_ms INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    uses INTEGER NOT NULL DEFAULT 0,
    role TEXT NOT NULL DEFAULT 'join'
);
-- WebAssembly modules, content-addressed: id is sha256:<hex of data>. The
-- bytes live in the row (at most 16 MiB, written once): one transaction
-- stores a module whole, with no file to lose between two steps.
CREATE TABLE IF NOT EXISTS modules (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    has_reduce INTEGER NOT NULL,
    data BLOB NOT NULL
);
-- The module each wasm job runs, so a module is kept while a job needs it.
CREATE TABLE IF NOT EXISTS job_modules (
    job_seq INTEGER PRIMARY KEY,
    module TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_modules_by_module ON job_modules(module);
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

/// Columns added to existing tables after schema version 2, each added at
/// open if missing (an idempotent step rather than a version bump, so that
/// additions from different branches merge): (table, column, definition).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Delays and expiry (see `crate::timing`).
    ("jobs", "not_before_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "expires_ms", "INTEGER"),
    ("jobs", "result_ttl_ms", "INTEGER"),
    ("jobs", "result_expires_ms", "INTEGER"),
    // Workflows (see `crate::workflows`).
    ("jobs", "workflow", "TEXT"),
    // Schedules (see `crate::schedules`).
    ("jobs", "schedule", "TEXT"),
    // Viewer tokens: what a token opens; every older token is a join token.
    ("tokens", "role", "TEXT NOT NULL DEFAULT 'join'"),
    // A returned replica's verdict once its task is decided: 1 its answer
    // was accepted, 0 not (for the dashboard's votes).
    ("tasks", "verdict", "INTEGER"),
];

/// Indexes over [`ADDED_COLUMNS`], made once the columns exist.
const ADDED_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS jobs_expiring ON jobs(expires_ms)
    WHERE expires_ms IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_result_expiring ON jobs(result_expires_ms)
    WHERE result_expires_ms IS NOT NULL AND result IS NOT NULL;
-- A job's failed replicas (a job has one or none), for its page.
CREATE INDEX IF NOT EXISTS tasks_failed ON tasks(job_seq) WHERE state = 3;
"#;

/// Adds each of [`ADDED_COLUMNS`] that a table lacks, then their indexes.
fn add_missing_columns(tx: &Transaction<'_>) -> StoreResult<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let exists: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )?;
        if !exists {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    tx.execute_batch(ADDED_INDEXES)?;
    Ok(())
}

/// Creates the schema, or brings an older one up to date, in one
/// transaction: a crash mid-way leaves the old schema, not half of each.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
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
    add_missing_columns(&tx)?;
    // Only when it changes: setting it rewrites the header page, and a
    // store that writes nothing at start opens on a full disk.
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}
