//! Results: recording outputs and failures, and counting the votes of
//! replicated tasks.

use super::*;

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
                record_verdict(tx, &b, voter, *digest == answer)?;
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
            for (voter, _, _) in &votes {
                record_verdict(tx, &b, voter, false)?;
            }
            tx.execute(
                "UPDATE jobs SET failed = failed + 1 WHERE seq = ?1",
                [b.seq],
            )?;
            fail_job(tx, b.seq, &format!("task {}: {why}", b.idx), now)?;
            Ok(VoteOutcome::Decided)
        }
    }
}

/// Marks a voter's replica of a decided task agreed or not (shown on the
/// job's page; the credit and trust that follow are the agent's).
fn record_verdict(
    tx: &Transaction<'_>,
    b: &Ballot<'_>,
    voter: &str,
    agreed: bool,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE tasks SET verdict = ?4 WHERE job_seq = ?1 AND idx = ?2 AND agent = ?3 AND state = ?5",
    )?
    .execute(params![b.seq, b.idx, voter, agreed as i64, DONE])?;
    Ok(())
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

pub(super) async fn complete(
    store: &SqliteStore,
    agent_id: &str,
    reports: Vec<TaskReport>,
    now_ms: u64,
) -> StoreResult<CompleteOutcome> {
    let agent_id = agent_id.to_string();
    store.write_relaxed(move |tx| {
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
                    // Clamped by the scheduler to MAX_REPORTED_CPU_MS.
                    let cpu_ms = report.cpu_ms.min(i64::MAX as u64) as i64;
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
