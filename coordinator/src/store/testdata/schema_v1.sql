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
-- state: 0 pending, 1 leased, 2 done, 3 failed, 4 cancelled
CREATE TABLE IF NOT EXISTS tasks (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
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
    PRIMARY KEY (job_seq, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks(queue, priority DESC, job_seq, idx) WHERE state = 0;
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
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    capacity TEXT NOT NULL,
    state TEXT NOT NULL,
    token_id TEXT NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    tasks_done INTEGER NOT NULL DEFAULT 0,
    cpu_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    uses INTEGER NOT NULL DEFAULT 0
);
