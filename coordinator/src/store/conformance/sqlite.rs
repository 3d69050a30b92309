//! The rules on the embedded store, and what only it has: input files
//! and schema upgrades.

use super::*;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

macro_rules! conformance {
    ($($name:ident),*) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, s) = store();
            super::$name(&s).await;
        }
    )*};
}

every_rule!(conformance);

/// A task whose input file is gone fails its own job, not every lease.
/// A sealed job whose one input is large enough to live in a file.
async fn big_job(s: &SqliteStore, id: &str) {
    s.begin_job(NewJob {
        id: id.into(),
        kernel: "wordcount".into(),
        options: JobOptions::default(),
        reduce_plan: vec![],
        created_ms: T0,
        module: None,
        timing: JobTiming::default(),
    })
    .await
    .unwrap();
    let big = NewTask {
        input: vec![1; crate::store::blobs::INLINE_MAX + 1],
        cost: Cost::default(),
    };
    s.add_tasks(id, vec![big]).await.unwrap();
    s.seal_job(id).await.unwrap();
}

/// A data directory of the first release (one row per task, no
/// validation counts) opens, and its queued job still runs.
#[tokio::test]
async fn a_version_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = SqliteStore::open(&path).unwrap();
        enrol(&s, "a").await;
        job(&s, "old", 2, JobOptions::default()).await;
    }
    {
        // Rebuild the tables as version 1 had them, keeping the rows.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t AS SELECT job_seq, idx, state, queue, priority, work, mem, attempts,
                 not_before_ms, lease_id, agent, deadline_ms, last_error FROM tasks;
             CREATE TABLE a AS SELECT id, secret_hash, capacity, state, token_id, enrolled_ms,
                 last_seen_ms, tasks_done, cpu_ms FROM agents;
             DROP TABLE tasks; DROP TABLE agents; DROP TABLE replica_outputs;",
        )
        .unwrap();
        c.execute_batch(include_str!("../testdata/schema_v1.sql"))
            .unwrap();
        c.execute_batch(
            "INSERT INTO tasks SELECT * FROM t; INSERT INTO agents SELECT * FROM a;
             DROP TABLE t; DROP TABLE a; PRAGMA user_version = 0;",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let got = s.lease(query("a", T0, 10)).await.unwrap();
    assert_eq!(got.len(), 2);
    let reports = got.iter().map(|t| done(&t.task)).collect();
    let out = s.complete("a", reports, T0).await.unwrap();
    assert_eq!(out.ready, vec!["old".to_string()]);
    assert_eq!(s.list_agents().await.unwrap()[0].tasks_done, 2);
    drop(s);
    // And opening it again changes nothing.
    SqliteStore::open(&path).unwrap();
}

/// A cancelled job's input files and rows are purged.
#[tokio::test]
async fn cancelled_jobs_give_their_disk_back() {
    let (dir, s) = store();
    big_job(&s, "big").await;
    let files = || {
        std::fs::read_dir(dir.path().join("db.blobs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(files(), 1);
    s.cancel_job("big", T0).await.unwrap();
    assert_eq!(s.purge_finished_inputs(T0).await.unwrap(), 1);
    assert_eq!(files(), 0);
    assert_eq!(s.purge_finished_inputs(T0).await.unwrap(), 0);
}

/// A failed job's input files stay for a retry, then go.
#[tokio::test]
async fn failed_jobs_keep_their_disk_for_the_retention_only() {
    let (dir, s) = store();
    enrol(&s, "a").await;
    big_job(&s, "big").await;
    let files = || {
        std::fs::read_dir(dir.path().join("db.blobs"))
            .unwrap()
            .count()
    };
    let t = s.lease(query("a", T0, 1)).await.unwrap();
    s.complete("a", vec![failed(&t[0].task, "trap")], T0 + 1)
        .await
        .unwrap();
    let retention = crate::store::rules::FAILED_JOB_RETENTION_MS;
    // Three attempts by default: fail it for good.
    for attempt in 2..=3 {
        let at = T0 + 1 + retry_backoff_ms(attempt) * 10;
        let t = s.lease(query("a", at, 1)).await.unwrap();
        s.complete("a", vec![failed(&t[0].task, "trap")], at)
            .await
            .unwrap();
    }
    let status = s.job("big").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    let failed_at = status.finished_ms.unwrap();
    assert_eq!(s.purge_finished_inputs(failed_at).await.unwrap(), 0);
    assert_eq!(files(), 1, "kept for a retry");
    // No retry is taken from then on, but the files stay a minute more,
    // for one that checked just before.
    assert_eq!(
        s.purge_finished_inputs(failed_at + retention)
            .await
            .unwrap(),
        0
    );
    assert_eq!(files(), 1);
    let purge_at = failed_at + crate::store::rules::FAILED_JOB_PURGE_AFTER_MS;
    assert_eq!(s.purge_finished_inputs(purge_at).await.unwrap(), 1);
    assert_eq!(files(), 0);
}

#[tokio::test]
async fn a_missing_input_file_fails_only_its_job() {
    let (dir, s) = store();
    enrol(&s, "a").await;
    big_job(&s, "big").await;
    job(&s, "small", 1, JobOptions::default()).await;
    std::fs::remove_dir_all(dir.path().join("db.blobs")).unwrap();
    let got = s.lease(query("a", T0, 5)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task.job, "small");
    let status = s.job("big").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("input file"));
}
