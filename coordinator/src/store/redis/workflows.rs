//! Workflows: the graph as one hash (`{prefix}:w:<id>`: state, times, the
//! steps as JSON), a set of the open ones, and its steps' jobs as ordinary
//! jobs that start `waiting`, released by `job_start_waiting.lua`.

use super::*;

/// The set of workflows still running.
const OPEN: &str = "workflows_open";

fn workflow_key(store: &RedisStore, id: &str) -> String {
    store.keys().shared(&format!("w:{id}"))
}

pub(super) async fn create_workflow(store: &RedisStore, wf: NewWorkflow) -> StoreResult<()> {
    let k = store.keys();
    let steps = serde_json::to_string(&wf.steps).map_err(|e| corrupt(e.to_string()))?;
    let n = wf.jobs.len() as u64;
    let mut c = ::redis::cmd("INCRBY");
    c.arg(k.shared("seq")).arg(n);
    let last = reply_i64(&store.one(c).await?) as u64;
    let mut p = ::redis::pipe();
    // Whole or not at all: the workflow, every step's job and its entries
    // in the indexes, in one MULTI.
    p.atomic();
    for (i, job) in wf.jobs.iter().enumerate() {
        let seq = last + 1 - n + i as u64;
        super::jobs::write_waiting(store, &mut p, job, seq, Some(&wf.id))?;
    }
    p.cmd("HSET")
        .arg(workflow_key(store, &wf.id))
        .arg("state")
        .arg(WorkflowState::Running.as_str())
        .arg("created_ms")
        .arg(wf.created_ms)
        .arg("steps")
        .arg(steps)
        .ignore();
    p.cmd("SADD").arg(k.shared(OPEN)).arg(&wf.id).ignore();
    store.run::<()>(&p).await
}

pub(super) async fn workflow(store: &RedisStore, id: &str) -> StoreResult<Option<WorkflowRecord>> {
    let mut c = ::redis::cmd("HMGET");
    c.arg(workflow_key(store, id))
        .arg("state")
        .arg("created_ms")
        .arg("finished_ms")
        .arg("steps");
    let f = reply_items(store.one(c).await?);
    let (Some(state), Some(steps)) = (
        f.first().and_then(reply_string),
        f.get(3).and_then(reply_string),
    ) else {
        return Ok(None);
    };
    Ok(Some(WorkflowRecord {
        id: id.to_string(),
        state: WorkflowState::parse(&state)
            .ok_or_else(|| corrupt(format!("workflow state {state:?}")))?,
        created_ms: f.get(1).map(reply_i64).unwrap_or(0) as u64,
        finished_ms: f.get(2).and_then(reply_opt_i64).map(|t| t as u64),
        steps: serde_json::from_str(&steps).map_err(|e| corrupt(e.to_string()))?,
    }))
}

pub(super) async fn open_workflows(store: &RedisStore) -> StoreResult<Vec<String>> {
    let mut c = ::redis::cmd("SMEMBERS");
    c.arg(store.keys().shared(OPEN));
    let mut ids: Vec<String> = reply_items(store.one(c).await?)
        .iter()
        .filter_map(reply_string)
        .collect();
    // Ids are time-ordered (UUIDv7): oldest first, as the embedded store.
    ids.sort();
    Ok(ids)
}

pub(super) async fn finish_workflow(
    store: &RedisStore,
    id: &str,
    state: WorkflowState,
    now_ms: u64,
) -> StoreResult<bool> {
    let keys = [workflow_key(store, id), store.keys().shared(OPEN)];
    let mut c = store.scripts().workflow_finish.call(&keys);
    c.arg(state.as_str()).arg(now_ms).arg(id);
    Ok(reply_i64(&store.one(c).await?) == 1)
}

pub(super) async fn start_waiting_job(
    store: &RedisStore,
    id: &str,
    reduce_plan: Vec<u8>,
    tasks: Vec<NewTask>,
) -> StoreResult<bool> {
    let mut c = store.scripts().start_waiting.call(&store.keys().job(id));
    c.arg(reduce_plan);
    for t in &tasks {
        c.arg(t.cost.work).arg(t.cost.mem_bytes).arg(&t.input);
    }
    drop(tasks);
    let reply = reply_items(store.one(c).await?);
    if reply.first().map(reply_i64) != Some(1) {
        return Ok(false);
    }
    let mut p = ::redis::pipe();
    store.put_back(&mut p, id, &reply, 1);
    store.bump_epoch(&mut p);
    store.run::<()>(&p).await?;
    Ok(true)
}
