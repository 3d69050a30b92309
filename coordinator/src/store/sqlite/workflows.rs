//! Workflows: the graph as one row (its steps as JSON, read whole), its
//! steps' jobs as ordinary job rows that start `waiting`, and the release
//! of a waiting job with its tasks.

use super::*;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) async fn create_workflow(store: &SqliteStore, wf: NewWorkflow) -> StoreResult<()> {
    let steps = serde_json::to_string(&wf.steps).map_err(corrupt)?;
    // Durable, and whole: the workflow and every step's job, or nothing.
    store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO workflows (id, created_ms, state, steps) VALUES (?1, ?2, 'running', ?3)",
                params![wf.id, wf.created_ms as i64, steps],
            )?;
            for job in &wf.jobs {
                super::jobs::insert_job(tx, job, JobState::Waiting, Some(&wf.id))?;
            }
            Ok(())
        })
        .await
}

pub(super) async fn workflow(store: &SqliteStore, id: &str) -> StoreResult<Option<WorkflowRecord>> {
    let key = id.to_string();
    let row: Option<(String, i64, Option<i64>, String)> = store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT state, created_ms, finished_ms, steps FROM workflows WHERE id = ?1",
                [&key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?)
        })
        .await?;
    let Some((state, created_ms, finished_ms, steps)) = row else {
        return Ok(None);
    };
    Ok(Some(WorkflowRecord {
        id: id.to_string(),
        state: WorkflowState::parse(&state)
            .ok_or_else(|| corrupt(format!("workflow state {state:?}")))?,
        created_ms: created_ms as u64,
        finished_ms: finished_ms.map(|t| t as u64),
        steps: serde_json::from_str(&steps).map_err(corrupt)?,
    }))
}

pub(super) async fn open_workflows(store: &SqliteStore) -> StoreResult<Vec<String>> {
    store
        .read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM workflows WHERE state = 'running' ORDER BY created_ms",
            )?;
            let ids = st.query_map([], |r| r.get(0))?;
            Ok(ids.collect::<Result<_, _>>()?)
        })
        .await
}

pub(super) async fn finish_workflow(
    store: &SqliteStore,
    id: &str,
    state: WorkflowState,
    now_ms: u64,
) -> StoreResult<bool> {
    let id = id.to_string();
    store
        .write(move |tx| {
            Ok(tx.execute(
                "UPDATE workflows SET state = ?2, finished_ms = ?3 WHERE id = ?1 AND state = 'running'",
                params![id, state.as_str(), now_ms as i64],
            )? > 0)
        })
        .await
}

pub(super) async fn start_waiting_job(
    store: &SqliteStore,
    id: &str,
    reduce_plan: Vec<u8>,
    tasks: Vec<NewTask>,
) -> StoreResult<bool> {
    let job_id = id.to_string();
    let seq: Option<i64> = store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT seq FROM jobs WHERE id = ?1 AND state = 'waiting'",
                [job_id],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await?;
    let Some(seq) = seq else {
        return Ok(false);
    };
    // Large inputs first, synced, as an upload's are before its seal.
    let blobs = store.blobs.clone();
    let (tasks, wrote_files) =
        tokio::task::spawn_blocking(move || -> StoreResult<(Vec<(NewTask, bool)>, bool)> {
            let mut wrote = false;
            let tasks = tasks
                .into_iter()
                .enumerate()
                .map(|(i, mut task)| {
                    if task.input.len() <= INLINE_MAX {
                        return Ok((task, false));
                    }
                    blobs.write(seq, i as i64, &task.input)?;
                    wrote = true;
                    task.input = Vec::new();
                    Ok((task, true))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            if wrote {
                blobs.sync_job(seq)?;
            }
            Ok((tasks, wrote))
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
    let released = store
        .write(move |tx| {
            let changed = tx.execute(
                "UPDATE jobs SET state = 'queued', reduce_plan = ?2 WHERE seq = ?1 AND state = 'waiting'",
                params![seq, reduce_plan],
            )?;
            if changed == 0 {
                return Ok(false);
            }
            super::jobs::insert_tasks(tx, seq, 0, tasks, PENDING)?;
            Ok(true)
        })
        .await?;
    if !released && wrote_files {
        // Cancelled or failed meanwhile: its files belong to no task.
        let open = store.job(id).await?.is_some_and(|j| !j.state.is_finished());
        if !open {
            store.blobs.remove_job(seq);
        }
    }
    Ok(released)
}
