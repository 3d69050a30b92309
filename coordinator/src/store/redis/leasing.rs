//! Leasing: a queue's head, then the lease script job by job until the
//! batch is full; heartbeats, releases and expiry.

use super::*;

impl RedisStore {
    /// The lease script's answer for one job: its status (finished or gone),
    /// the version of its queue place if it has no work left, its tasks.
    pub(super) fn parse_lease(
        job: &str,
        v: Value,
    ) -> StoreResult<(i64, Option<i64>, Vec<LeasedTask>)> {
        let mut it = reply_items(v).into_iter();
        let status = it.next().map(|v| reply_i64(&v)).unwrap_or(1);
        let timeout = it.next().map(|v| reply_i64(&v)).unwrap_or(-1);
        let has_work = it.next().map(|v| reply_i64(&v)).unwrap_or(0) == 1;
        let version = it.next().map(|v| reply_i64(&v)).unwrap_or(0);
        let rest: Vec<Value> = it.collect();
        if !rest.len().is_multiple_of(5) {
            return Err(corrupt("malformed lease reply"));
        }
        let mut tasks = Vec::with_capacity(rest.len() / 5);
        let mut rest = rest.into_iter();
        while let (Some(idx), Some(lease), Some(work), Some(mem), Some(input)) = (
            rest.next(),
            rest.next(),
            rest.next(),
            rest.next(),
            rest.next(),
        ) {
            tasks.push(LeasedTask {
                task: TaskRef {
                    job: job.to_string(),
                    index: reply_i64(&idx) as u32,
                    lease: reply_i64(&lease) as u64,
                },
                cost: Cost {
                    work: reply_i64(&work) as u64,
                    mem_bytes: reply_i64(&mem) as u64,
                },
                timeout_ms: (timeout >= 0).then(|| timeout as u64 * 1000),
                input: reply_bytes(input).unwrap_or_default(),
            });
        }
        Ok((status, (!has_work).then_some(version), tasks))
    }
}

pub(super) async fn lease(store: &RedisStore, q: LeaseQuery) -> StoreResult<Vec<LeasedTask>> {
    let k = store.keys();
    let queues: Vec<&str> = if q.queues.is_empty() {
        vec![musketeer_tasks::job::DEFAULT_QUEUE]
    } else {
        q.queues.iter().map(String::as_str).collect()
    };
    let capacity = serde_json::to_string(&q.capacity).map_err(|e| corrupt(e.to_string()))?;
    // 1. The agent's state (checked at every call: a long-poll can
    //    outlast a drain or removal) and the head of each queue.
    let mut p = ::redis::pipe();
    p.cmd("HGET").arg(k.agent(&q.agent_id)).arg("state");
    p.cmd("HSET")
        .arg(k.agent(&q.agent_id))
        .arg("last_seen_ms")
        .arg(q.now_ms)
        .arg("capacity")
        .arg(capacity)
        .ignore();
    for queue in &queues {
        p.cmd("ZRANGE")
            .arg(k.queue(queue))
            .arg(0)
            .arg(QUEUE_HEAD - 1)
            .arg("WITHSCORES");
    }
    let mut v: Vec<Value> = store.run(&p).await?;
    let heads = v.split_off(1);
    if v.first().and_then(reply_string).as_deref() != Some("active") {
        return Ok(Vec::new());
    }
    let mut candidates: Vec<(f64, String, String)> = Vec::new();
    for (queue, head) in queues.iter().zip(heads) {
        for kv in reply_items(head).chunks(2) {
            let (Some(id), Some(score)) = (kv.first().and_then(reply_string), kv.get(1)) else {
                continue;
            };
            let score = reply_string(score)
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::MAX);
            candidates.push((score, id, queue.to_string()));
        }
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // 2. Lease job by job until the batch is full.
    let deadline = q.now_ms + q.ttl_ms;
    let labels = serde_json::to_string(&q.labels).map_err(|e| corrupt(e.to_string()))?;
    let mut granted: Vec<LeasedTask> = Vec::new();
    let mut batch = Batch::default();
    // Jobs finished or gone, and jobs without work left: out of the
    // queue index.
    let mut finished = Vec::new();
    let mut drained_jobs = Vec::new();
    for (_, id, queue) in candidates {
        if batch.is_full(&q) {
            break;
        }
        let mut c = store.scripts().lease.call(&k.job(&id));
        c.arg(&q.agent_id)
            .arg(q.now_ms)
            .arg(deadline)
            .arg(q.max_tasks)
            .arg(q.max_work.min(1 << 52))
            .arg(q.max_bytes.min(1 << 52))
            .arg(batch.work)
            .arg(batch.bytes)
            .arg(batch.tasks)
            .arg(q.mem_bytes.min(1 << 52))
            .arg(&labels);
        let (status, drained, tasks) = RedisStore::parse_lease(&id, store.one(c).await?)?;
        if status == 1 {
            finished.push((id, queue));
        } else if let Some(version) = drained {
            drained_jobs.push((id, queue, version));
        }
        for t in tasks {
            batch.add(t.cost.work, t.input.len() as u64);
            granted.push(t);
        }
    }
    store.forget_finished(&finished).await?;
    if !drained_jobs.is_empty() {
        let mut p = ::redis::pipe();
        for (id, queue, version) in &drained_jobs {
            let mut c = store
                .scripts()
                .queue_remove
                .call(&[k.queue(queue), k.shared("qver")]);
            c.arg(id).arg(*version);
            p.add_command(c).ignore();
        }
        store.run::<()>(&p).await?;
    }
    Ok(granted)
}

pub(super) async fn heartbeat(
    store: &RedisStore,
    agent_id: &str,
    running: Vec<TaskRef>,
    now_ms: u64,
    ttl_ms: u64,
) -> StoreResult<HeartbeatAck> {
    let k = store.keys();
    let groups = by_job(running, |t| &t.job);
    let mut p = ::redis::pipe();
    p.cmd("HGET").arg(k.agent(agent_id)).arg("state");
    p.cmd("HSET")
        .arg(k.agent(agent_id))
        .arg("last_seen_ms")
        .arg(now_ms)
        .ignore();
    for (job, tasks) in &groups {
        let mut c = store.scripts().heartbeat.call(&k.job(job));
        c.arg(agent_id).arg(now_ms + ttl_ms);
        for t in tasks {
            c.arg(t.index).arg(t.lease);
        }
        p.add_command(c);
    }
    let mut v: Vec<Value> = store.run(&p).await?;
    let lost_rows = v.split_off(1);
    let mut ack = HeartbeatAck {
        drain: v.first().and_then(reply_string).as_deref() != Some("active"),
        ..HeartbeatAck::default()
    };
    for ((_, tasks), lost) in groups.into_iter().zip(lost_rows) {
        let lost: HashSet<i64> = reply_items(lost).iter().map(reply_i64).collect();
        ack.lost.extend(
            tasks
                .into_iter()
                .enumerate()
                .filter(|(i, _)| lost.contains(&(*i as i64 + 1)))
                .map(|(_, t)| t),
        );
    }
    Ok(ack)
}

pub(super) async fn release(
    store: &RedisStore,
    agent_id: &str,
    tasks: Vec<TaskRef>,
) -> StoreResult<u32> {
    let k = store.keys();
    let groups = by_job(tasks, |t| &t.job);
    if groups.is_empty() {
        return Ok(0);
    }
    let mut p = ::redis::pipe();
    for (job, tasks) in &groups {
        let mut c = store.scripts().release.call(&k.job(job));
        c.arg(agent_id);
        for t in tasks {
            c.arg(t.index).arg(t.lease);
        }
        p.add_command(c);
    }
    let rows: Vec<Value> = store.run(&p).await?;
    let mut n = 0;
    let mut p = ::redis::pipe();
    for ((job, _), row) in groups.iter().zip(rows) {
        let row = reply_items(row);
        n += row.first().map(reply_i64).unwrap_or(0);
        store.put_back(&mut p, job, &row, 1);
    }
    if n > 0 {
        store.bump_epoch(&mut p);
    }
    store.run::<()>(&p).await?;
    Ok(n as u32)
}

pub(super) async fn expire_leases(store: &RedisStore, now_ms: u64) -> StoreResult<u32> {
    let active = store.active_jobs().await?;
    if active.is_empty() {
        return Ok(0);
    }
    let mut p = ::redis::pipe();
    for (id, _) in &active {
        let mut c = store.scripts().expire.call(&store.keys().job(id));
        c.arg(now_ms);
        p.add_command(c);
    }
    let rows: Vec<Value> = store.run(&p).await?;
    let mut expired = 0;
    let mut finished = Vec::new();
    let mut p = ::redis::pipe();
    for (job, row) in active.into_iter().zip(rows) {
        let row = reply_items(row);
        store.put_back(&mut p, &job.0, &row, 2);
        let f: Vec<i64> = row.iter().take(2).map(reply_i64).collect();
        expired += f.first().copied().unwrap_or(0);
        // Only a sealed job is done being written; an unsealed one that
        // vanished is its upload's to clean up.
        if f.get(1) == Some(&1) {
            finished.push(job);
        }
    }
    if expired > 0 {
        store.bump_epoch(&mut p);
    }
    store.run::<()>(&p).await?;
    store.forget_finished(&finished).await?;
    Ok(expired as u32)
}

pub(super) async fn renew_all_leases(
    store: &RedisStore,
    now_ms: u64,
    ttl_ms: u64,
) -> StoreResult<u64> {
    let active = store.active_jobs().await?;
    if active.is_empty() {
        return Ok(0);
    }
    let mut p = ::redis::pipe();
    for (id, _) in &active {
        let mut c = store.scripts().renew_all.call(&store.keys().job(id));
        c.arg(now_ms + ttl_ms);
        p.add_command(c);
    }
    let n: Vec<i64> = store.run(&p).await?;
    Ok(n.iter().sum::<i64>() as u64)
}
