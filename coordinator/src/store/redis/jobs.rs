//! Jobs: their creation in parts, sealing, cancel and abort, status,
//! outputs, the reduce's result, cleanup and the work epoch.

use super::*;

impl RedisStore {
    /// Drops unsealed jobs (uploads in flight) of coordinators that are no
    /// longer alive, and this store's own if `own` (at start, when it has
    /// none in flight); returns how many.
    pub(super) async fn drop_orphan_uploads(&self, own: bool) -> StoreResult<u64> {
        let k = self.keys();
        let unsealed = reply_pairs(self.one(hgetall(k.shared("unsealed"))).await?);
        if unsealed.is_empty() {
            return Ok(0);
        }
        let owners: Vec<String> = unsealed
            .iter()
            .map(|(_, o)| o.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut p = ::redis::pipe();
        for o in &owners {
            p.cmd("EXISTS").arg(k.alive(o));
        }
        let alive: Vec<i64> = self.run(&p).await?;
        let alive: HashSet<&str> = owners
            .iter()
            .zip(alive)
            .filter(|(o, a)| *a == 1 && !(own && **o == self.inner.instance))
            .map(|(o, _)| o.as_str())
            .collect();
        let mut dropped = 0;
        for (id, owner) in &unsealed {
            if alive.contains(owner.as_str()) {
                continue;
            }
            if self.abort(id).await? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Deletes an unsealed job and its index entries; true if it was one.
    pub(super) async fn abort(&self, id: &str) -> StoreResult<bool> {
        let k = self.keys();
        let v = reply_items(self.one(self.scripts().abort.call(&k.job(id))).await?);
        let mut p = ::redis::pipe();
        let deleted = v.first().map(reply_i64) == Some(1);
        match v.as_slice() {
            [_, queue] => {
                let queue = reply_string(queue).unwrap_or_default();
                p.cmd("HDEL").arg(k.shared("unsealed")).arg(id).ignore();
                p.cmd("HDEL").arg(k.shared("active")).arg(id).ignore();
                p.cmd("ZREM").arg(k.queue(&queue)).arg(id).ignore();
            }
            // Sealed already (its seal's index update was cut off): keep
            // it and finish the update.
            [_, _, seq] => {
                p.cmd("ZADD")
                    .arg(k.shared("jobs"))
                    .arg(reply_i64(seq))
                    .arg(id)
                    .ignore();
                p.cmd("HDEL").arg(k.shared("unsealed")).arg(id).ignore();
            }
            _ => {
                p.cmd("HDEL").arg(k.shared("unsealed")).arg(id).ignore();
                p.cmd("HDEL").arg(k.shared("active")).arg(id).ignore();
            }
        }
        self.run::<()>(&p).await?;
        Ok(deleted)
    }
}

/// Writes a job that starts `waiting` (a workflow's step, a schedule's
/// tick): its record, and its entries in the active and listed jobs, in
/// `p`; it is released later by `job_start_waiting.lua`.
pub(super) fn write_waiting(
    store: &RedisStore,
    p: &mut Pipeline,
    job: &NewJob,
    seq: u64,
    workflow: Option<&str>,
) -> StoreResult<()> {
    let k = store.keys();
    write_meta(store, p, job, seq, JobState::Waiting, workflow)?;
    p.cmd("HSET")
        .arg(k.shared("active"))
        .arg(&job.id)
        .arg(&job.options.queue)
        .ignore();
    p.cmd("ZADD")
        .arg(k.shared("jobs"))
        .arg(seq)
        .arg(&job.id)
        .ignore();
    Ok(())
}

/// Writes a job's fields, and its entries in the indexes of time (its
/// countdown, its expiry), into `p`: `queued` and unsealed for an upload
/// to come, or `waiting` and visible at once for a workflow's step.
pub(super) fn write_meta(
    store: &RedisStore,
    p: &mut Pipeline,
    job: &NewJob,
    seq: u64,
    state: JobState,
    workflow: Option<&str>,
) -> StoreResult<()> {
    let k = store.keys();
    let labels = serde_json::to_string(&job.options.labels).map_err(|e| corrupt(e.to_string()))?;
    let o = &job.options;
    let meta = k.meta(&job.id);
    // Whatever makes the job (a submission, a workflow's step, a tick), it
    // uses its module from now until it finishes.
    if let Some(module) = &job.module {
        p.cmd("SADD")
            .arg(k.module_users(module))
            .arg(&job.id)
            .ignore();
        // For a retry, which must find it still stored.
        p.cmd("HSET").arg(&meta).arg("module").arg(module).ignore();
    }
    p.cmd("HSET")
        .arg(&meta)
        .arg("seq")
        .arg(seq)
        .arg("qkey")
        .arg(k.queue(&o.queue))
        .arg("qscore")
        .arg(queue_score(o.priority, seq))
        .arg("kernel")
        .arg(&job.kernel)
        .arg("queue")
        .arg(&o.queue)
        .arg("priority")
        .arg(o.priority)
        .arg("max_attempts")
        .arg(o.max_attempts)
        .arg("redundancy")
        .arg(o.redundancy)
        .arg("labels")
        .arg(labels)
        .arg("state")
        .arg(state.as_str())
        .arg("sealed")
        .arg(i64::from(state == JobState::Waiting))
        .arg("total")
        .arg(0)
        .arg("done")
        .arg(0)
        .arg("failed")
        .arg(0)
        .arg("lease_seq")
        .arg(0)
        .arg("created_ms")
        .arg(job.created_ms)
        .arg("plan")
        .arg(&job.reduce_plan)
        .ignore();
    if let Some(t) = o.timeout_s {
        p.cmd("HSET").arg(&meta).arg("timeout_s").arg(t).ignore();
    }
    let t = &job.timing;
    if t.not_before_ms > 0 {
        // Tasks wait in the job's retry zset until then (job_add_tasks.lua),
        // and long-polls everywhere are woken when it comes (work_epoch).
        p.cmd("HSET")
            .arg(&meta)
            .arg("not_before_ms")
            .arg(t.not_before_ms)
            .ignore();
        p.cmd("ZADD")
            .arg(k.shared("due"))
            .arg(t.not_before_ms)
            .arg(&job.id)
            .ignore();
    }
    if let Some(at) = t.expires_ms {
        p.cmd("HSET").arg(&meta).arg("expires_ms").arg(at).ignore();
        p.cmd("ZADD")
            .arg(k.shared(EXPIRING))
            .arg(at)
            .arg(&job.id)
            .ignore();
    }
    if let Some(ttl) = t.result_ttl_ms {
        p.cmd("HSET")
            .arg(&meta)
            .arg("result_ttl_ms")
            .arg(ttl)
            .ignore();
    }
    if let Some(w) = workflow {
        p.cmd("HSET").arg(&meta).arg("workflow").arg(w).ignore();
    }
    Ok(())
}

pub(super) async fn begin_job(store: &RedisStore, job: NewJob) -> StoreResult<()> {
    let k = store.keys();
    let seq = reply_i64(
        &store
            .one({
                let mut c = ::redis::cmd("INCR");
                c.arg(k.shared("seq"));
                c
            })
            .await?,
    ) as u64;
    let o = &job.options;
    let mut p = ::redis::pipe();
    // First the upload's entry (so a crash from here on leaves nothing
    // abort_unsealed_jobs cannot find), then the job, then the indexes
    // (so whoever meets the job there finds its fields).
    p.cmd("HSET")
        .arg(k.shared("unsealed"))
        .arg(&job.id)
        .arg(&store.inner.instance)
        .ignore();
    // Its module's user after the upload's entry (in write_meta): a user
    // whose job has neither that entry nor a record is one that was aborted
    // (see `modules::users`).
    write_meta(store, &mut p, &job, seq, JobState::Queued, None)?;
    p.cmd("HSET")
        .arg(k.shared("active"))
        .arg(&job.id)
        .arg(&o.queue)
        .ignore();
    p.cmd("ZADD")
        .arg(k.queue(&o.queue))
        .arg(queue_score(o.priority, seq))
        .arg(&job.id)
        .ignore();
    store.run::<()>(&p).await
}

pub(super) async fn add_tasks(
    store: &RedisStore,
    job_id: &str,
    tasks: Vec<NewTask>,
) -> StoreResult<()> {
    let mut c = store.scripts().add_tasks.call(&store.keys().job(job_id));
    for t in &tasks {
        c.arg(t.cost.work).arg(t.cost.mem_bytes).arg(&t.input);
    }
    drop(tasks);
    let reply = reply_items(store.one(c).await?);
    let mut p = ::redis::pipe();
    store.put_back(&mut p, job_id, &reply, 1);
    store.bump_epoch(&mut p);
    store.run::<()>(&p).await
}

pub(super) async fn seal_job(store: &RedisStore, job_id: &str) -> StoreResult<(u64, bool)> {
    let k = store.keys();
    // One connection for the seal, its index entries and the wait for
    // replicas that covers both (a cluster's `WAIT` is per connection).
    let mut conn = store.conn();
    let mut p = ::redis::pipe();
    p.add_command(store.scripts().seal.call(&k.job(job_id)));
    let mut v: Vec<Value> = store.run_on(&mut conn, &p).await?;
    let v = reply_items(v.pop().unwrap_or(Value::Nil));
    let [total, done, seq] = v.as_slice() else {
        return Err(corrupt("malformed seal reply"));
    };
    let (total, done) = (reply_i64(total) as u64, reply_i64(done) as u64);
    let mut p = ::redis::pipe();
    // Both or neither: an index entry refused for lack of memory must not
    // go while the upload's entry is deleted.
    p.atomic();
    p.cmd("ZADD")
        .arg(k.shared("jobs"))
        .arg(reply_i64(seq))
        .arg(job_id)
        .ignore();
    p.cmd("HDEL").arg(k.shared("unsealed")).arg(job_id).ignore();
    store.bump_epoch(&mut p);
    let meta = k.meta(job_id);
    if let Err(e) = store.run_on::<()>(&mut conn, &p).await {
        if !e.is_out_of_space() {
            return Err(e);
        }
        // The script sealed the job: it is accepted, whole, and its tasks
        // run; only its place in the job list waits for memory.
        tracing::warn!(job = %job_id, "Redis is out of memory: the job is accepted, its entry in the job list follows once Redis has room");
        store.wait_failover_safe(&mut conn, &[&meta]).await?;
        let store = store.clone();
        tokio::spawn(async move {
            while let Err(e) = store.run::<()>(&p).await {
                tracing::debug!("the job list still waits for Redis memory: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        return Ok((total, total > 0 && done == total));
    }
    // The job's keys and its index entries (begin_job's too: they came
    // before these on the same master) are on a replica before the 201.
    store
        .wait_failover_safe(&mut conn, &[&meta, &k.shared("jobs")])
        .await?;
    Ok((total, total > 0 && done == total))
}

pub(super) async fn abort_job(store: &RedisStore, job_id: &str) -> StoreResult<()> {
    store.abort(job_id).await.map(drop)
}

pub(super) async fn abort_unsealed_jobs(store: &RedisStore) -> StoreResult<u64> {
    store.drop_orphan_uploads(true).await
}

pub(super) async fn job(store: &RedisStore, id: &str) -> StoreResult<Option<JobStatus>> {
    let mut c = ::redis::cmd("HMGET");
    c.arg(store.keys().meta(id)).arg(&STATUS_FIELDS[..]);
    Ok(status_of(id, &reply_items(store.one(c).await?)))
}

pub(super) async fn list_jobs(store: &RedisStore, limit: u32) -> StoreResult<Vec<JobStatus>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let k = store.keys();
    let mut c = ::redis::cmd("ZREVRANGE");
    c.arg(k.shared("jobs")).arg(0).arg(limit as i64 - 1);
    let ids: Vec<String> = reply_items(store.one(c).await?)
        .iter()
        .filter_map(reply_string)
        .collect();
    let mut p = ::redis::pipe();
    for id in &ids {
        p.cmd("HMGET").arg(k.meta(id)).arg(&STATUS_FIELDS[..]);
    }
    let rows: Vec<Value> = store.run(&p).await?;
    Ok(ids
        .iter()
        .zip(rows)
        .filter_map(|(id, row)| status_of(id, &reply_items(row)))
        .collect())
}

pub(super) async fn cancel_job(
    store: &RedisStore,
    id: &str,
    now_ms: u64,
) -> StoreResult<Option<JobStatus>> {
    let mut c = store.scripts().cancel.call(&store.keys().job(id));
    c.arg(now_ms);
    // On a replica before the job leaves the indexes: else a failover
    // could bring it back running, and out of every index.
    let meta = store.keys().meta(id);
    let changed = reply_i64(&store.one_failover_safe(c, &[&meta]).await?) == 1;
    let status = store.job(id).await?;
    if let (true, Some(s)) = (changed, &status) {
        store
            .forget_finished(&[(id.to_string(), s.queue.clone())])
            .await?;
    }
    Ok(status)
}

pub(super) async fn job_outputs(
    store: &RedisStore,
    id: &str,
) -> StoreResult<(Vec<u8>, Vec<Vec<u8>>)> {
    let keys = store.keys().job(id);
    let mut p = ::redis::pipe();
    p.cmd("HMGET").arg(&keys[0]).arg("plan").arg("total");
    p.cmd("HGETALL").arg(&keys[6]);
    let mut v: Vec<Value> = store.run(&p).await?;
    let outs = v.pop().unwrap_or(Value::Nil);
    let mut meta = reply_items(v.pop().unwrap_or(Value::Nil)).into_iter();
    let plan = meta
        .next()
        .and_then(reply_bytes)
        .ok_or_else(|| corrupt(format!("job {id} does not exist")))?;
    let total = meta.next().map(|v| reply_i64(&v)).unwrap_or(0) as usize;
    let mut outputs: Vec<(u64, Vec<u8>)> = reply_items(outs)
        .chunks_exact_mut(2)
        .map(|kv| {
            let idx = reply_i64(&kv[0]) as u64;
            (
                idx,
                reply_bytes(std::mem::take(&mut kv[1])).unwrap_or_default(),
            )
        })
        .collect();
    if outputs.len() != total {
        return Err(corrupt(format!(
            "job {id} has {} outputs for {total} tasks",
            outputs.len()
        )));
    }
    outputs.sort_unstable_by_key(|(i, _)| *i);
    Ok((plan, outputs.into_iter().map(|(_, o)| o).collect()))
}

pub(super) async fn finish_job(
    store: &RedisStore,
    id: &str,
    result: Result<Vec<u8>, String>,
    now_ms: u64,
) -> StoreResult<()> {
    let keys = store.keys().job(id);
    let mut c = store.scripts().finish.call(&keys);
    match result {
        Ok(bytes) => c.arg(1).arg(bytes),
        Err(reason) => c.arg(0).arg(reason),
    };
    c.arg(now_ms);
    let mut p = ::redis::pipe();
    p.add_command(c).ignore();
    p.cmd("HGET").arg(&keys[0]).arg("queue");
    p.cmd("HGET").arg(&keys[0]).arg("result_expires_ms");
    // As a cancel: on a replica before the job leaves the indexes.
    let (queue, result_expires): (Option<String>, Option<u64>) =
        store.run_failover_safe(&p, &[&keys[0]]).await?;
    if let Some(at) = result_expires {
        // Idempotent: a second reduce of the job adds the same entry.
        let mut c = ::redis::cmd("ZADD");
        c.arg(store.keys().shared(RESULTS_EXPIRING)).arg(at).arg(id);
        store.one(c).await?;
    }
    if let Some(queue) = queue {
        store.forget_finished(&[(id.to_string(), queue)]).await?;
    }
    Ok(())
}

pub(super) async fn job_result(store: &RedisStore, id: &str) -> StoreResult<Option<Vec<u8>>> {
    let mut c = ::redis::cmd("HMGET");
    c.arg(store.keys().meta(id)).arg("state").arg("result");
    let mut f = reply_items(store.one(c).await?).into_iter();
    match (f.next().as_ref().and_then(reply_string), f.next()) {
        (Some(s), Some(result)) if s == "succeeded" => Ok(reply_bytes(result)),
        _ => Ok(None),
    }
}

pub(super) async fn jobs_to_reduce(store: &RedisStore) -> StoreResult<Vec<String>> {
    let active = store.active_jobs().await?;
    let mut p = ::redis::pipe();
    for (id, _) in &active {
        p.cmd("HMGET")
            .arg(store.keys().meta(id))
            .arg("sealed")
            .arg("total")
            .arg("done")
            .arg("state");
    }
    let rows: Vec<Value> = store.run(&p).await?;
    let mut ready = Vec::new();
    let mut gone = Vec::new();
    for ((id, queue), row) in active.into_iter().zip(rows) {
        let f = reply_items(row);
        let state = f
            .get(3)
            .and_then(reply_string)
            .and_then(|s| JobState::parse(&s));
        match state {
            None => {}
            Some(s) if s.is_finished() => gone.push((id, queue)),
            Some(_) => {
                let total = reply_i64(&f[1]);
                if reply_i64(&f[0]) == 1 && total > 0 && reply_i64(&f[2]) == total {
                    ready.push(id);
                }
            }
        }
    }
    store.forget_finished(&gone).await?;
    Ok(ready)
}

pub(super) async fn purge_finished_inputs(store: &RedisStore, _now_ms: u64) -> StoreResult<u64> {
    // A cancelled job's inputs go in the same script that ends it, and a
    // failed one's expire in Redis after the retention (job_lib.lua's
    // fail_job); what is left to purge is uploads whose coordinator died.
    store.drop_orphan_uploads(false).await
}

pub(super) async fn retry_failed_tasks(
    store: &RedisStore,
    id: &str,
    now_ms: u64,
) -> StoreResult<Result<Retried, RetryRefusal>> {
    let k = store.keys();
    let keys = k.job(id);
    let mut c = ::redis::cmd("HMGET");
    c.arg(&keys[0]).arg("queue").arg("module");
    let mut f = reply_items(store.one(c).await?).into_iter();
    let Some(queue) = f.next().as_ref().and_then(reply_string) else {
        return Ok(Err(RetryRefusal::NotFound));
    };
    // Counted as the module's user before it is looked for, so that a
    // delete from now on sees the job (open again soon) rather than
    // racing the retry; a delete that won the race just before fails the
    // retried tasks with the reason.
    if let Some(module) = f.next().as_ref().and_then(reply_string) {
        let mut p = ::redis::pipe();
        p.cmd("SADD").arg(k.module_users(&module)).arg(id).ignore();
        p.cmd("EXISTS").arg(k.module(&module));
        let (exists,): (i64,) = store.run(&p).await?;
        if exists == 0 {
            return Ok(Err(RetryRefusal::ModuleGone(module)));
        }
    }
    // In the active jobs before any task is pending again, as at
    // submission: no task is ever outside the indexes, even after a
    // failover.
    let active = k.shared("active");
    let mut c = ::redis::cmd("HSET");
    c.arg(&active).arg(id).arg(&queue);
    store.one_failover_safe(c, &[&active]).await?;
    let mut c = store.scripts().retry.call(&keys);
    c.arg(now_ms);
    // On a replica before the admin hears "retried", as a submission.
    let reply = reply_items(store.one_failover_safe(c, &[&keys[0]]).await?);
    let code = reply.first().and_then(reply_string).unwrap_or_default();
    let refusal = match code.as_str() {
        "ok" => None,
        "workflow" => Some(RetryRefusal::WorkflowStep),
        "expired" => Some(RetryRefusal::Expired),
        "gone" => Some(RetryRefusal::InputsGone),
        "state" => {
            let state = reply.get(1).and_then(reply_string);
            match state.as_deref().and_then(JobState::parse) {
                Some(state) => Some(RetryRefusal::NotFailed(state)),
                None => return Err(StoreError::Corrupt(format!("job {id} has state {state:?}"))),
            }
        }
        "none" => Some(RetryRefusal::NotFound),
        other => {
            return Err(StoreError::Corrupt(format!(
                "the retry script answered {other:?} for job {id}"
            )))
        }
    };
    if let Some(refusal) = refusal {
        // The active entry is dropped by the next sweep that meets the
        // job finished (jobs_to_reduce); an open job keeps its own.
        return Ok(Err(refusal));
    }
    let mut p = ::redis::pipe();
    store.put_back(&mut p, id, &reply, 3);
    store.bump_epoch(&mut p);
    store.run::<()>(&p).await?;
    Ok(Ok(Retried {
        requeued: reply.get(1).map(reply_i64).unwrap_or(0) as u64,
        ready: reply.get(2).map(reply_i64) == Some(1),
    }))
}

pub(super) async fn stats(store: &RedisStore) -> StoreResult<Stats> {
    let k = store.keys();
    let mut p = ::redis::pipe();
    p.cmd("ZRANGE").arg(k.shared("jobs")).arg(0).arg(-1);
    p.cmd("ZRANGE").arg(k.shared("agents")).arg(0).arg(-1);
    let (jobs, agents): (Vec<String>, Vec<String>) = store.run(&p).await?;
    let active = store.active_jobs().await?;
    let mut p = ::redis::pipe();
    for id in &jobs {
        p.cmd("HGET").arg(k.meta(id)).arg("state");
    }
    for id in &agents {
        p.cmd("HGET").arg(k.agent(id)).arg("state");
    }
    for (id, _) in &active {
        let keys = k.job(id);
        p.cmd("ZCARD").arg(&keys[1]);
        p.cmd("ZCARD").arg(&keys[2]);
        p.cmd("ZCARD").arg(&keys[3]);
    }
    let v: Vec<Value> = store.run(&p).await?;
    let mut stats = Stats::default();
    let (job_states, rest) = v.split_at(jobs.len());
    let (agent_states, counts) = rest.split_at(agents.len());
    for s in job_states.iter().filter_map(reply_string) {
        *stats.jobs.entry(s).or_default() += 1;
    }
    for s in agent_states.iter().filter_map(reply_string) {
        *stats.agents.entry(s).or_default() += 1;
    }
    for c in counts.chunks(3) {
        stats.tasks_pending += (reply_i64(&c[0]) + reply_i64(&c[1])) as u64;
        stats.tasks_leased += reply_i64(&c[2]) as u64;
    }
    Ok(stats)
}

pub(super) async fn work_epoch(store: &RedisStore, now_ms: u64) -> StoreResult<Option<u64>> {
    let k = store.keys();
    let mut p = ::redis::pipe();
    p.cmd("GET").arg(k.shared("epoch"));
    p.cmd("ZRANGEBYSCORE")
        .arg(k.shared("due"))
        .arg("-inf")
        .arg(now_ms);
    let (epoch, due): (Option<u64>, Vec<String>) = store.run(&p).await?;
    if due.is_empty() {
        return Ok(Some(epoch.unwrap_or(0)));
    }
    // Retries whose backoff ran out: another change every coordinator sees.
    let mut p = ::redis::pipe();
    p.cmd("ZREM").arg(k.shared("due")).arg(&due).ignore();
    p.cmd("INCR").arg(k.shared("epoch"));
    let (epoch,): (u64,) = store.run(&p).await?;
    Ok(Some(epoch))
}

pub(super) async fn job_backlog(
    store: &RedisStore,
    id: &str,
    now_ms: u64,
) -> StoreResult<Option<Backlog>> {
    let k = store.keys();
    let keys = k.job(id);
    let (pend, wait, live, tasks) = (&keys[1], &keys[2], &keys[3], &keys[4]);
    let mut c = ::redis::cmd("HMGET");
    c.arg(&keys[0])
        .arg("queue")
        .arg("priority")
        .arg("labels")
        .arg("sealed");
    let f = reply_items(store.one(c).await?);
    let (Some(queue), Some(priority), Some(labels)) = (
        f.first().and_then(reply_string),
        f.get(1).and_then(reply_opt_i64),
        f.get(2).and_then(reply_string),
    ) else {
        return Ok(None);
    };
    if f.get(3).and_then(reply_string).as_deref() != Some("1") {
        return Ok(None);
    }
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| corrupt(format!("labels of job {id}: {e}")))?;
    let later = format!("({now_ms}");
    let scan = BACKLOG_SCAN as i64 - 1;
    let mut p = ::redis::pipe();
    p.cmd("ZCARD").arg(pend);
    p.cmd("ZCOUNT").arg(wait).arg("-inf").arg(now_ms);
    p.cmd("ZCOUNT").arg(wait).arg(&later).arg("+inf");
    p.cmd("ZRANGEBYSCORE")
        .arg(wait)
        .arg(&later)
        .arg("+inf")
        .arg("LIMIT")
        .arg(0)
        .arg(1);
    p.cmd("ZCARD").arg(live);
    p.cmd("ZRANGE").arg(pend).arg(0).arg(scan);
    p.cmd("ZRANGE").arg(wait).arg(0).arg(scan);
    // Jobs of a higher priority in the same queue: a score below this one's
    // priority band (see `queue_score`).
    p.cmd("ZRANGEBYSCORE")
        .arg(k.queue(&queue))
        .arg("-inf")
        .arg(format!("({}", queue_score(priority as u8, 0)));
    let v: Vec<Value> = store.run(&p).await?;
    let count = |i: usize| v.get(i).map(reply_i64).unwrap_or(0) as u64;
    let strings = |i: usize| -> Vec<String> {
        v.get(i)
            .cloned()
            .map(reply_items)
            .unwrap_or_default()
            .iter()
            .filter_map(reply_string)
            .collect()
    };
    let first_retry = strings(3).into_iter().next();
    let mut slots = strings(5);
    slots.extend(strings(6));
    slots.truncate(BACKLOG_SCAN as usize);
    let higher: Vec<String> = strings(7).into_iter().filter(|j| j != id).collect();

    let mut p = ::redis::pipe();
    p.cmd("ZSCORE")
        .arg(wait)
        .arg(first_retry.as_deref().unwrap_or(""));
    for slot in &slots {
        let idx = slot.parse::<u64>().unwrap_or(0) % (1 << 32);
        p.cmd("HGET").arg(tasks).arg(format!("c{idx}"));
    }
    for other in &higher {
        let keys = k.job(other);
        p.cmd("ZCARD").arg(&keys[1]);
        p.cmd("ZCOUNT").arg(&keys[2]).arg("-inf").arg(now_ms);
    }
    let w: Vec<Value> = store.run(&p).await?;
    // Scores are whole milliseconds, which Redis writes without a point.
    let retry_at_ms = first_retry
        .and(w.first().and_then(reply_opt_i64))
        .map(|t| t as u64);
    let mems: Vec<u64> = w[1..1 + slots.len()]
        .iter()
        .filter_map(reply_string)
        .filter_map(|cost| cost.split_once(':')?.1.parse().ok())
        .collect();
    let ahead = w[1 + slots.len()..]
        .iter()
        .map(|c| reply_i64(c) as u64)
        .sum();
    Ok(Some(Backlog {
        queue,
        priority: priority as u8,
        labels,
        leasable: count(0) + count(1),
        retrying: count(2),
        retry_at_ms,
        leased: count(4),
        mem_min: mems.iter().copied().min().unwrap_or(0),
        mem_max: mems.iter().copied().max().unwrap_or(0),
        ahead,
    }))
}

pub(super) async fn job_tasks(
    store: &RedisStore,
    id: &str,
    limit: usize,
) -> StoreResult<Option<Vec<TaskReplica>>> {
    let mut c = store.scripts().tasks.call(&store.keys().job(id));
    c.arg(limit);
    let v = reply_items(store.one(c).await?);
    if v.is_empty() {
        return Ok(None);
    }
    let text = |v: &Value| reply_string(v).filter(|s| !s.is_empty());
    v[1..]
        .chunks(7)
        .map(|r| {
            let [index, replica, state, attempts, agent, error, verdict] = r else {
                return Err(corrupt(format!("task list of job {id}: a short row")));
            };
            let state = match reply_string(state).as_deref() {
                Some("pending") => TaskState::Pending,
                Some("leased") => TaskState::Leased,
                Some("done") => TaskState::Done,
                Some("failed") => TaskState::Failed,
                _ => TaskState::Cancelled,
            };
            Ok(TaskReplica {
                index: reply_i64(index) as u32,
                replica: reply_i64(replica) as u32,
                state,
                attempts: reply_i64(attempts) as u32,
                agent: text(agent),
                error: text(error),
                agreed: text(verdict).map(|v| v != "0"),
            })
        })
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
}
