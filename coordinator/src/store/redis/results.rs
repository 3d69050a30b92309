//! Results: one result script per job, with the voter's trust read
//! before it for replicated jobs.

use super::*;

impl RedisStore {
    /// The cluster's shared trust material: stores this coordinator's CA
    /// certificate, CA key and admin token unless another coordinator
    /// stored its own first, and returns what is stored.
    pub async fn share_trust(
        &self,
        ca_pem: &str,
        ca_key_pem: &str,
        admin_token: &str,
    ) -> StoreResult<(String, String, String)> {
        let mut c = self
            .scripts()
            .trust_share
            .call(&[self.keys().shared("trust")]);
        c.arg(ca_pem).arg(ca_key_pem).arg(admin_token);
        // Every coordinator must adopt the same CA, failover or not.
        let key = self.keys().shared("trust");
        let v = reply_items(self.one_failover_safe(c, &[&key]).await?);
        match v.as_slice() {
            [a, b, c] => Ok((
                reply_string(a).ok_or_else(|| corrupt("no shared CA"))?,
                reply_string(b).ok_or_else(|| corrupt("no shared CA key"))?,
                reply_string(c).ok_or_else(|| corrupt("no shared admin token"))?,
            )),
            _ => Err(corrupt("the shared trust material is malformed")),
        }
    }

    /// Whether this coordinator knows `job` to have redundancy above 1.
    pub(super) fn is_replicated(&self, job: &str) -> bool {
        self.inner
            .replicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(job)
    }

    /// Remembers that `job` has redundancy above 1.
    pub(super) fn remember_replicated(&self, job: &str) {
        let mut known = self
            .inner
            .replicated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_KNOWN_REPLICATED {
            known.clear();
        }
        known.insert(job.to_string());
    }

    /// Whether the agent's record earns it unreplicated work.
    pub(super) async fn trusted(&self, agent_id: &str) -> StoreResult<bool> {
        let mut c = ::redis::cmd("HMGET");
        c.arg(self.keys().agent(agent_id))
            .arg("results_valid")
            .arg("results_invalid")
            .arg("valid_streak");
        let f: Vec<i64> = reply_items(self.one(c).await?)
            .iter()
            .map(reply_i64)
            .collect();
        let [valid, invalid, streak] = f[..] else {
            return Err(corrupt("malformed agent record"));
        };
        let record = validation::TrustRecord {
            valid: valid as u64,
            invalid: invalid as u64,
            streak: streak as u64,
        };
        Ok(record.trust() == Trust::Trusted)
    }

    /// The result script's call for one job's reports. With `trusted`
    /// (the job is replicated), each result also carries its digest and
    /// whether the agent's answer may stand alone.
    pub(super) fn complete_call(
        &self,
        job: &str,
        reports: &[TaskReport],
        agent_id: &str,
        now_ms: u64,
        trusted: Option<bool>,
    ) -> Cmd {
        let mut c = self.scripts().complete.call(&self.keys().job(job));
        c.arg(agent_id)
            .arg(now_ms)
            .arg(if trusted.is_some() { "v" } else { "-" });
        for r in reports {
            c.arg(r.task.index).arg(r.task.lease);
            match &r.outcome {
                TaskOutcome::Done(bytes) => c.arg("d").arg(bytes),
                TaskOutcome::Failed(why) => c.arg("f").arg(why),
            };
            // Clamped by the scheduler to rules::MAX_REPORTED_CPU_MS.
            c.arg(r.cpu_ms);
            if let Some(trusted) = trusted {
                match &r.outcome {
                    TaskOutcome::Done(bytes) => c.arg(hex::encode(validation::digest(bytes))),
                    TaskOutcome::Failed(_) => c.arg(""),
                };
                let solo = trusted && !validation::is_spot_check(job, r.task.index);
                c.arg(if solo { "1" } else { "0" });
            }
        }
        c
    }
}

pub(super) async fn complete(
    store: &RedisStore,
    agent_id: &str,
    reports: Vec<TaskReport>,
    now_ms: u64,
) -> StoreResult<CompleteOutcome> {
    let k = store.keys();
    let groups = by_job(reports, |r| &r.task.job);
    // Votes of replicated jobs need the voter's trust (the solo rule),
    // which lives with the agent, outside the job's slot: read first,
    // once for the batch.
    let votes_in = |i: &usize| {
        groups[*i]
            .1
            .iter()
            .any(|r| matches!(r.outcome, TaskOutcome::Done(_)))
    };
    let replicated: Vec<usize> = (0..groups.len())
        .filter(|i| store.is_replicated(&groups[*i].0))
        .collect();
    let mut trusted = None;
    if replicated.iter().any(votes_in) {
        trusted = Some(store.trusted(agent_id).await?);
    }
    let mut p = ::redis::pipe();
    for (i, (job, reports)) in groups.iter().enumerate() {
        let t = replicated.contains(&i).then(|| trusted.unwrap_or(false));
        p.add_command(store.complete_call(job, reports, agent_id, now_ms, t));
    }
    let mut rows: Vec<Value> = if groups.is_empty() {
        Vec::new()
    } else {
        store.run(&p).await?
    };
    // Replicated jobs this coordinator did not know of: their script
    // changed nothing and asked for the votes' digests.
    let retry: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| matches!(row, Value::Array(a) if a.len() == 1 && reply_i64(&a[0]) == -1))
        .map(|(i, _)| i)
        .collect();
    if !retry.is_empty() {
        for &i in &retry {
            store.remember_replicated(&groups[i].0);
        }
        if trusted.is_none() && retry.iter().any(votes_in) {
            trusted = Some(store.trusted(agent_id).await?);
        }
        let mut p = ::redis::pipe();
        for &i in &retry {
            let (job, reports) = &groups[i];
            let t = Some(trusted.unwrap_or(false));
            p.add_command(store.complete_call(job, reports, agent_id, now_ms, t));
        }
        let again: Vec<Value> = store.run(&p).await?;
        for (i, row) in retry.into_iter().zip(again) {
            rows[i] = row;
        }
    }
    let mut out = CompleteOutcome::default();
    let (mut credit_tasks, mut credit_cpu) = (0i64, 0i64);
    let mut added = 0;
    // (agent, what its vote came to, cpu ms) of each judged vote.
    let mut voters: Vec<(String, Ballot, i64)> = Vec::new();
    let mut p = ::redis::pipe();
    for ((job, _), row) in groups.iter().zip(rows) {
        let mut row = reply_items(row);
        let f: Vec<i64> = row.iter().take(9).map(reply_i64).collect();
        let [accepted, stale, requeued, ready, tasks, cpu, due, _finished, more] = f[..] else {
            return Err(corrupt("malformed result reply"));
        };
        let decided = reply_items(row.get_mut(9).map(std::mem::take).unwrap_or(Value::Nil));
        voters.extend(judged_votes(job, &decided)?);
        store.put_back(&mut p, job, &row, 10);
        out.accepted += accepted as u32;
        out.stale += stale as u32;
        out.requeued += requeued as u32;
        added += more;
        if ready == 1 {
            out.ready.push(job.clone());
        }
        credit_tasks += tasks;
        credit_cpu += cpu;
        if due > now_ms as i64 {
            p.cmd("ZADD")
                .arg(k.shared("due"))
                .arg(due)
                .arg(job)
                .ignore();
        }
    }
    if out.requeued > 0 || added > 0 {
        store.bump_epoch(&mut p);
    }
    // Scripts and idempotent commands only: `run` may send it twice.
    store.run::<()>(&p).await?;
    let p = credits(k, agent_id, now_ms, (credit_tasks, credit_cpu), &voters);
    store.run::<()>(&p).await?;
    Ok(out)
}

/// The votes a result script decided (agent, agreed flag, cpu ms in
/// threes), with what each came to.
fn judged_votes(job: &str, decided: &[Value]) -> StoreResult<Vec<(String, Ballot, i64)>> {
    let mut voters = Vec::new();
    for v in decided.chunks(3) {
        let [agent, agreed, cpu] = v else {
            return Err(corrupt("malformed voter in a result reply"));
        };
        let agent = reply_string(agent).ok_or_else(|| corrupt("voter without an agent"))?;
        let ballot = match reply_i64(agreed) {
            1 => Ballot::Agreed,
            0 => {
                tracing::warn!(agent = %agent, job = %job, "outvoted: its result disagreed with the majority");
                Ballot::Outvoted
            }
            _ => Ballot::Disputed,
        };
        voters.push((agent, ballot, reply_i64(cpu)));
    }
    Ok(voters)
}

/// The agent's credit for its accepted tasks (`credit`: tasks and cpu ms)
/// and its last sign of life, and each decided voter's credit and trust,
/// as one pipeline.
fn credits(
    k: &Keys,
    agent_id: &str,
    now_ms: u64,
    credit: (i64, i64),
    voters: &[(String, Ballot, i64)],
) -> Pipeline {
    let (credit_tasks, credit_cpu) = credit;
    let mut p = ::redis::pipe();
    let agent = k.agent(agent_id);
    p.cmd("HINCRBY")
        .arg(&agent)
        .arg("tasks_done")
        .arg(credit_tasks)
        .ignore();
    p.cmd("HINCRBY")
        .arg(&agent)
        .arg("cpu_ms")
        .arg(credit_cpu)
        .ignore();
    p.cmd("HSET")
        .arg(&agent)
        .arg("last_seen_ms")
        .arg(now_ms)
        .ignore();
    // Decided votes, in the order they were decided: credit and trust
    // for agreeing voters, a mark for outvoted ones.
    for (voter, ballot, cpu) in voters {
        let key = k.agent(voter);
        if *ballot == Ballot::Disputed {
            p.cmd("HSET").arg(&key).arg("valid_streak").arg(0).ignore();
        } else if *ballot == Ballot::Agreed {
            p.cmd("HINCRBY")
                .arg(&key)
                .arg("results_valid")
                .arg(1)
                .ignore();
            p.cmd("HINCRBY")
                .arg(&key)
                .arg("valid_streak")
                .arg(1)
                .ignore();
            p.cmd("HINCRBY").arg(&key).arg("tasks_done").arg(1).ignore();
            p.cmd("HINCRBY").arg(&key).arg("cpu_ms").arg(*cpu).ignore();
        } else {
            p.cmd("HINCRBY")
                .arg(&key)
                .arg("results_invalid")
                .arg(1)
                .ignore();
            p.cmd("HSET").arg(&key).arg("valid_streak").arg(0).ignore();
        }
    }
    p
}
