//! What every [`Store`] must do, as tests over `&dyn Store`: the embedded
//! store runs them here, and any other implementation runs the same ones.

use std::collections::BTreeMap;

use musketeer_tasks::protocol::{Capacity, TaskOutcome, TaskRef, TaskReport};
use musketeer_tasks::{Cost, JobOptions};

use super::*;

/// The time every rule starts at.
pub(crate) const T0: u64 = 1_000_000;
/// The lease TTL of every rule's queries.
pub(crate) const TTL: u64 = 5_000;

fn capacity() -> Capacity {
    Capacity {
        cpus: 2,
        memory_bytes: 1 << 30,
        arch: "x86_64".into(),
        os: "linux".into(),
        ..Capacity::default()
    }
}

/// A lease query with room for anything, as most rules want.
pub(crate) fn query(agent: &str, now_ms: u64, max_tasks: u32) -> LeaseQuery {
    LeaseQuery {
        agent_id: agent.into(),
        queues: Vec::new(),
        labels: BTreeMap::new(),
        mem_bytes: 1 << 30,
        max_work: u64::MAX,
        max_tasks,
        max_bytes: u64::MAX,
        now_ms,
        ttl_ms: TTL,
        capacity: capacity(),
    }
}

/// An encoded Fibonacci output: the store only checks the kernel tag.
fn fib_output() -> Vec<u8> {
    musketeer_tasks::TaskOutput::Fibonacci(musketeer_tasks::fibonacci::FibonacciOutput {
        digits: "55".into(),
        ends: vec![2],
    })
    .encode()
}

fn done(task: &TaskRef) -> TaskReport {
    TaskReport {
        task: task.clone(),
        cpu_ms: 3,
        outcome: TaskOutcome::Done(fib_output()),
    }
}

fn failed(task: &TaskRef, why: &str) -> TaskReport {
    TaskReport {
        task: task.clone(),
        cpu_ms: 1,
        outcome: TaskOutcome::Failed(why.into()),
    }
}

/// Enrols `agent` with an active state, as every rule's agents are.
pub(crate) async fn enrol(store: &dyn Store, agent: &str) {
    let token_hash = musketeer_tasks::token::secret_hash("tok");
    let _ = store.create_token("t", token_hash, T0).await;
    store
        .enrol_agent(
            token_hash,
            NewAgent {
                id: agent.into(),
                secret_hash: [1; 32],
                capacity: capacity(),
                now_ms: T0,
            },
        )
        .await
        .unwrap()
        .unwrap();
}

async fn job(store: &dyn Store, id: &str, tasks: usize, options: JobOptions) {
    store
        .begin_job(NewJob {
            id: id.into(),
            kernel: "fibonacci".into(),
            options,
            reduce_plan: vec![0],
            created_ms: T0,
        })
        .await
        .unwrap();
    let tasks = (0..tasks)
        .map(|i| NewTask {
            input: vec![i as u8; 8],
            cost: Cost {
                work: 10,
                mem_bytes: 100,
            },
        })
        .collect();
    store.add_tasks(id, tasks).await.unwrap();
    store.seal_job(id).await.unwrap();
}

/// Leases go out once, results are accepted once and only from the
/// holder, and the last one makes the job ready to reduce.
pub async fn lease_and_complete_once(store: &dyn Store) {
    enrol(store, "a").await;
    enrol(store, "b").await;
    job(store, "j", 3, JobOptions::default()).await;

    let first = store.lease(query("a", T0, 2)).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].input, vec![0u8; 8]);
    let second = store.lease(query("b", T0, 10)).await.unwrap();
    assert_eq!(second.len(), 1, "a task must not be leased twice");
    assert_eq!(
        store.job("j").await.unwrap().unwrap().state,
        JobState::Running
    );

    // b may not report a's task; a reports its own once.
    let out = store
        .complete("b", vec![done(&first[0].task)], T0)
        .await
        .unwrap();
    assert_eq!((out.accepted, out.stale), (0, 1));
    let out = store
        .complete("a", vec![done(&first[0].task), done(&first[1].task)], T0)
        .await
        .unwrap();
    assert_eq!((out.accepted, out.stale), (2, 0));
    let out = store
        .complete("a", vec![done(&first[0].task)], T0)
        .await
        .unwrap();
    assert_eq!(
        (out.accepted, out.stale),
        (0, 1),
        "a result is accepted once"
    );
    assert!(out.ready.is_empty());

    let out = store
        .complete("b", vec![done(&second[0].task)], T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
    let (_, outputs) = store.job_outputs("j").await.unwrap();
    assert_eq!(outputs.len(), 3);
    store.finish_job("j", Ok(vec![9]), T0).await.unwrap();
    assert_eq!(
        store.job("j").await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(store.job_result("j").await.unwrap(), Some(vec![9]));
    let agents = store.list_agents().await.unwrap();
    let a = agents.iter().find(|x| x.id == "a").unwrap();
    assert_eq!(
        (a.tasks_done, a.cpu_ms),
        (2, 6),
        "credit for accepted results only"
    );
}

/// An expired lease goes back to the queue, and its late result is stale.
pub async fn expired_leases_return(store: &dyn Store) {
    enrol(store, "a").await;
    enrol(store, "b").await;
    job(store, "j", 1, JobOptions::default()).await;
    let lost = store.lease(query("a", T0, 1)).await.unwrap();
    assert_eq!(store.expire_leases(T0 + TTL - 1).await.unwrap(), 0);
    let ack = store
        .heartbeat("a", vec![lost[0].task.clone()], T0 + 1_000, TTL)
        .await
        .unwrap();
    assert!(ack.lost.is_empty(), "a heartbeat renews the lease");
    assert_eq!(
        store.expire_leases(T0 + TTL + 500).await.unwrap(),
        0,
        "renewed"
    );
    assert_eq!(store.expire_leases(T0 + 1_000 + TTL + 1).await.unwrap(), 1);

    let again = store.lease(query("b", T0 + 7_000, 1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].task.lease, lost[0].task.lease);
    let out = store
        .complete("a", vec![done(&lost[0].task)], T0 + 7_000)
        .await
        .unwrap();
    assert_eq!(out.stale, 1, "the expired lease's result must not count");
    let ack = store
        .heartbeat("a", vec![lost[0].task.clone()], T0 + 7_000, TTL)
        .await
        .unwrap();
    assert_eq!(ack.lost, vec![lost[0].task.clone()]);
    let out = store
        .complete("b", vec![done(&again[0].task)], T0 + 7_000)
        .await
        .unwrap();
    assert_eq!(out.ready.len(), 1);
}

/// A failed task waits out its backoff, is retried, and fails the job with
/// the last reason once attempts run out.
pub async fn retries_then_fails(store: &dyn Store) {
    enrol(store, "a").await;
    let options = JobOptions {
        max_attempts: 2,
        ..JobOptions::default()
    };
    job(store, "j", 2, options).await;
    let leased = store.lease(query("a", T0, 1)).await.unwrap();
    let out = store
        .complete("a", vec![failed(&leased[0].task, "out of memory")], T0)
        .await
        .unwrap();
    assert_eq!(out.requeued, 1);
    // The other task is next; the failed one waits for its backoff.
    let next = store.lease(query("a", T0, 5)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].task.index, leased[0].task.index);
    let later = T0 + retry_backoff_ms(1);
    let retry = store.lease(query("a", later, 5)).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].task.index, leased[0].task.index);
    let out = store
        .complete(
            "a",
            vec![failed(&retry[0].task, "out of memory again")],
            later,
        )
        .await
        .unwrap();
    assert_eq!(out.requeued, 0);
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("out of memory again"));
    assert_eq!(status.progress.failed, 1);
    // What was left of the job is cancelled: the other lease is stale now.
    let ack = store
        .heartbeat("a", vec![next[0].task.clone()], later, TTL)
        .await
        .unwrap();
    assert_eq!(ack.lost.len(), 1);
}

/// Matching: queues, labels and memory decide who may take a task, and
/// higher priorities go first.
pub async fn matching_and_priority(store: &dyn Store) {
    enrol(store, "a").await;
    let labelled = JobOptions {
        labels: BTreeMap::from([("gpu".to_string(), "yes".to_string())]),
        ..JobOptions::default()
    };
    job(store, "labelled", 1, labelled).await;
    let other_queue = JobOptions {
        queue: "video".into(),
        ..JobOptions::default()
    };
    job(store, "video", 1, other_queue).await;
    let low = JobOptions {
        priority: 1,
        ..JobOptions::default()
    };
    job(store, "low", 1, low).await;
    let high = JobOptions {
        priority: 9,
        ..JobOptions::default()
    };
    job(store, "high", 1, high).await;

    let got = store.lease(query("a", T0, 10)).await.unwrap();
    let jobs: Vec<&str> = got.iter().map(|t| t.task.job.as_str()).collect();
    assert_eq!(
        jobs,
        vec!["high", "low"],
        "priority first; no label, no other queue"
    );

    let mut q = query("a", T0, 10);
    q.queues = vec!["video".into()];
    q.labels = BTreeMap::from([("gpu".to_string(), "yes".to_string())]);
    q.mem_bytes = 50;
    assert!(
        store.lease(q.clone()).await.unwrap().is_empty(),
        "too little memory"
    );
    q.mem_bytes = 1 << 20;
    let got = store.lease(q).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task.job, "video");
}

/// Cancelling stops a job's tasks; releasing gives a task back without
/// using up an attempt; removing an agent frees its leases.
pub async fn cancel_release_remove(store: &dyn Store) {
    enrol(store, "a").await;
    job(store, "c", 2, JobOptions::default()).await;
    let leased = store.lease(query("a", T0, 1)).await.unwrap();
    let status = store.cancel_job("c", T0).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    assert!(store.lease(query("a", T0, 5)).await.unwrap().is_empty());
    let out = store
        .complete("a", vec![done(&leased[0].task)], T0)
        .await
        .unwrap();
    assert_eq!(out.stale, 1);

    let once = JobOptions {
        max_attempts: 1,
        ..JobOptions::default()
    };
    job(store, "r", 1, once).await;
    let leased = store.lease(query("a", T0, 1)).await.unwrap();
    assert_eq!(
        store
            .release("a", vec![leased[0].task.clone()])
            .await
            .unwrap(),
        1
    );
    let again = store.lease(query("a", T0, 1)).await.unwrap();
    assert_eq!(again.len(), 1, "released work is offered again");
    assert!(store.remove_agent("a", T0).await.unwrap());
    assert_eq!(
        store.agent_auth("a").await.unwrap().unwrap().state,
        AgentState::Removed
    );
    enrol(store, "b").await;
    let taken = store.lease(query("b", T0, 1)).await.unwrap();
    assert_eq!(taken.len(), 1, "a removed agent's lease goes back at once");
    // With max_attempts 1, neither the release nor the removal used it up.
    let out = store
        .complete("b", vec![done(&taken[0].task)], T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["r".to_string()]);
}

/// Unsealed jobs (uploads cut off) are invisible and dropped on recovery.
pub async fn unsealed_jobs_are_dropped(store: &dyn Store) {
    store
        .begin_job(NewJob {
            id: "u".into(),
            kernel: "wordcount".into(),
            options: JobOptions::default(),
            reduce_plan: vec![],
            created_ms: T0,
        })
        .await
        .unwrap();
    store
        .add_tasks(
            "u",
            vec![NewTask {
                input: vec![7; 1 << 20],
                cost: Cost::default(),
            }],
        )
        .await
        .unwrap();
    assert!(store.job("u").await.unwrap().is_none());
    assert!(store.list_jobs(10).await.unwrap().is_empty());
    assert_eq!(store.abort_unsealed_jobs().await.unwrap(), 1);
    assert!(store.lease(query("x", T0, 5)).await.unwrap().is_empty());
}

/// Tokens: enrolment needs a known, unrevoked token.
pub async fn tokens(store: &dyn Store) {
    let hash = musketeer_tasks::token::secret_hash("s");
    store.create_token("t1", hash, T0).await.unwrap();
    let agent = |id: &str| NewAgent {
        id: id.into(),
        secret_hash: [2; 32],
        capacity: capacity(),
        now_ms: T0,
    };
    assert_eq!(store.enrol_agent(hash, agent("a")).await.unwrap(), Ok(()));
    assert_eq!(
        store.enrol_agent([0; 32], agent("b")).await.unwrap(),
        Err(EnrolRefusal::UnknownToken)
    );
    assert!(store.revoke_token("t1").await.unwrap());
    assert_eq!(
        store.enrol_agent(hash, agent("c")).await.unwrap(),
        Err(EnrolRefusal::RevokedToken)
    );
    let listed = store.list_tokens().await.unwrap();
    assert_eq!((listed[0].uses, listed[0].revoked), (1, true));
}

/// Tasks an agent cannot take (labels it lacks, more memory than it has)
/// must not hide the work behind them in the queue.
pub async fn unmatchable_tasks_do_not_block_the_queue(store: &dyn Store) {
    enrol(store, "a").await;
    let gpu = JobOptions {
        labels: BTreeMap::from([("gpu".to_string(), "yes".to_string())]),
        priority: 9,
        ..JobOptions::default()
    };
    job(store, "gpu", 50, gpu).await;
    job(store, "plain", 3, JobOptions::default()).await;
    let mut q = query("a", T0, 1);
    q.labels = BTreeMap::from([("arch".to_string(), "arm".to_string())]);
    let got = store.lease(q).await.unwrap();
    assert_eq!(
        got.len(),
        1,
        "labelled tasks ahead must not starve an agent"
    );
    assert_eq!(got[0].task.job, "plain");
    let got = store.lease(query("a", T0, 1)).await.unwrap();
    assert_eq!(got[0].task.job, "plain", "also for an agent with no labels");
    let mut small = query("a", T0, 1);
    small.mem_bytes = 10;
    assert!(
        store.lease(small).await.unwrap().is_empty(),
        "every task needs 100 bytes"
    );
}

/// Leases that expire together: once one fails the job, the others stay
/// cancelled (the job must not come back to life).
pub async fn expiries_do_not_revive_a_failed_job(store: &dyn Store) {
    enrol(store, "a").await;
    enrol(store, "b").await;
    let once = JobOptions {
        max_attempts: 1,
        ..JobOptions::default()
    };
    job(store, "j", 3, once).await;
    assert_eq!(store.lease(query("a", T0, 3)).await.unwrap().len(), 3);
    store.expire_leases(T0 + TTL + 1).await.unwrap();
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(
        status.progress.failed, 1,
        "one task failed; the rest were cancelled"
    );
    assert!(store
        .lease(query("b", T0 + TTL + 2, 10))
        .await
        .unwrap()
        .is_empty());
    // And tasks still arriving for a failed streamed job never run.
    store
        .begin_job(NewJob {
            id: "s".into(),
            kernel: "wordcount".into(),
            options: JobOptions {
                max_attempts: 1,
                ..JobOptions::default()
            },
            reduce_plan: vec![],
            created_ms: T0,
        })
        .await
        .unwrap();
    let one = |i: u8| NewTask {
        input: vec![i],
        cost: Cost::default(),
    };
    store.add_tasks("s", vec![one(0)]).await.unwrap();
    let leased = store.lease(query("b", T0, 1)).await.unwrap();
    store
        .complete("b", vec![failed(&leased[0].task, "bad chunk")], T0)
        .await
        .unwrap();
    store.add_tasks("s", vec![one(1), one(2)]).await.unwrap();
    assert!(store.lease(query("b", T0, 10)).await.unwrap().is_empty());
}

/// A removed or draining agent is handed nothing, even by a lease call
/// already in flight; a restart renews leases instead of expiring them.
pub async fn only_active_agents_lease_and_restarts_renew(store: &dyn Store) {
    enrol(store, "a").await;
    enrol(store, "b").await;
    job(store, "j", 2, JobOptions::default()).await;
    assert!(store.drain_agent("b").await.unwrap());
    assert!(store.lease(query("b", T0, 5)).await.unwrap().is_empty());
    assert!(store.remove_agent("b", T0).await.unwrap());
    assert!(store.lease(query("b", T0, 5)).await.unwrap().is_empty());
    let held = store.lease(query("a", T0, 1)).await.unwrap();
    assert_eq!(store.renew_all_leases(T0 + 60_000, TTL).await.unwrap(), 1);
    assert_eq!(store.expire_leases(T0 + 60_000 + TTL - 1).await.unwrap(), 0);
    let out = store
        .complete("a", vec![done(&held[0].task)], T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(out.accepted, 1);
}

/// An encoded Fibonacci output with these digits: distinct answers for votes.
fn answer(digits: &str) -> Vec<u8> {
    musketeer_tasks::TaskOutput::Fibonacci(musketeer_tasks::fibonacci::FibonacciOutput {
        digits: digits.into(),
        ends: vec![digits.len() as u64],
    })
    .encode()
}

fn vote(task: &TaskRef, digits: &str) -> TaskReport {
    TaskReport {
        task: task.clone(),
        cpu_ms: 5,
        outcome: TaskOutcome::Done(answer(digits)),
    }
}

fn replicated(n: u32) -> JobOptions {
    JobOptions {
        redundancy: n,
        ..JobOptions::default()
    }
}

fn agent<'a>(agents: &'a [AgentRecord], id: &str) -> &'a AgentRecord {
    agents.iter().find(|a| a.id == id).expect("agent listed")
}

/// Redundancy: each replica goes to a different agent, the majority's
/// answer is kept, disagreement brings in another agent, and only agreeing
/// results earn credit.
pub async fn replicas_agree_or_ask_another_agent(store: &dyn Store) {
    for a in ["a", "b", "c"] {
        enrol(store, a).await;
    }
    job(store, "j", 2, replicated(2)).await;
    let a = store.lease(query("a", T0, 10)).await.unwrap();
    assert_eq!(a.len(), 2, "one replica of each task, never two");
    assert_ne!(a[0].task.index, a[1].task.index);
    let b = store.lease(query("b", T0, 10)).await.unwrap();
    assert_eq!(b.len(), 2);
    assert!(
        store.lease(query("c", T0, 10)).await.unwrap().is_empty(),
        "two replicas per task, both out"
    );
    let out = store
        .complete(
            "a",
            vec![vote(&a[0].task, "55"), vote(&a[1].task, "89")],
            T0,
        )
        .await
        .unwrap();
    assert_eq!(out.accepted, 2);
    assert!(out.ready.is_empty(), "one vote of two decides nothing");
    assert_eq!(store.job("j").await.unwrap().unwrap().progress.done, 0);
    let (b0, b1) = if b[0].task.index == a[0].task.index {
        (&b[0], &b[1])
    } else {
        (&b[1], &b[0])
    };
    let out = store
        .complete("b", vec![vote(&b0.task, "55"), vote(&b1.task, "90")], T0)
        .await
        .unwrap();
    assert!(out.ready.is_empty());
    assert_eq!(
        store.job("j").await.unwrap().unwrap().progress.done,
        1,
        "the agreeing task is done, the disputed one is not"
    );
    assert!(
        store.lease(query("a", T0, 10)).await.unwrap().is_empty(),
        "an agent that voted on a task gets no second vote"
    );
    let c = store.lease(query("c", T0, 10)).await.unwrap();
    assert_eq!(c.len(), 1, "disagreement brings in a third agent");
    assert_eq!(c[0].task.index, a[1].task.index);
    let out = store
        .complete("c", vec![vote(&c[0].task, "89")], T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
    let (_, outputs) = store.job_outputs("j").await.unwrap();
    assert_eq!(
        outputs,
        vec![answer("55"), answer("89")],
        "the majority's answers, in task order"
    );
    let agents = store.list_agents().await.unwrap();
    let (ra, rb, rc) = (
        agent(&agents, "a"),
        agent(&agents, "b"),
        agent(&agents, "c"),
    );
    assert_eq!(
        (ra.tasks_done, ra.results_valid, ra.results_invalid),
        (2, 2, 0)
    );
    assert_eq!(
        (rb.tasks_done, rb.results_valid, rb.results_invalid),
        (1, 1, 1)
    );
    assert_eq!((rc.tasks_done, rc.results_valid, rc.cpu_ms), (1, 1, 5));
    assert_eq!(ra.trust, Trust::New);
}

/// Replicas that never reach a majority fail the task, with a reason, once
/// the extra replicas are used up; an agent that keeps losing votes is
/// flagged.
pub async fn endless_disagreement_fails_and_flags(store: &dyn Store) {
    let names = ["a", "b", "c", "d", "e"];
    for a in names {
        enrol(store, a).await;
    }
    job(store, "j", 1, replicated(2)).await;
    let mut voters = 0;
    for (i, a) in names.iter().enumerate() {
        let got = store.lease(query(a, T0, 10)).await.unwrap();
        if got.is_empty() {
            continue;
        }
        voters += 1;
        store
            .complete(a, vec![vote(&got[0].task, &format!("{i}"))], T0)
            .await
            .unwrap();
    }
    assert_eq!(voters, 4, "two replicas, then two extra, then it gives up");
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(
        status
            .error
            .unwrap()
            .contains("no answer reached a majority"),
        "the reason says why"
    );

    // A liar outvoted twice in a short record is flagged. It votes first:
    // once two agree, the third replica is no longer needed.
    job(store, "k", 2, replicated(3)).await;
    for a in ["c", "a", "b"] {
        let got = store.lease(query(a, T0, 10)).await.unwrap();
        assert_eq!(got.len(), 2);
        let digits = if a == "c" { "lie" } else { "truth" };
        let votes = got.iter().map(|t| vote(&t.task, digits)).collect();
        store.complete(a, votes, T0).await.unwrap();
    }
    assert_eq!(store.job("k").await.unwrap().unwrap().progress.done, 2);
    let agents = store.list_agents().await.unwrap();
    assert_eq!(agent(&agents, "c").trust, Trust::Suspect);
    assert_eq!(agent(&agents, "c").results_invalid, 2);
    assert_eq!(agent(&agents, "a").trust, Trust::New);
}

/// Adaptive replication: after enough agreeing results an agent's answer
/// stands alone, except on spot checks, and the other replicas never run.
pub async fn trusted_agents_earn_unreplicated_work(store: &dyn Store) {
    enrol(store, "a").await;
    enrol(store, "b").await;
    let n = validation::TRUST_AFTER as usize;
    job(store, "warmup", n, replicated(2)).await;
    for a in ["a", "b"] {
        let got = store.lease(query(a, T0, 100)).await.unwrap();
        assert_eq!(got.len(), n);
        let votes = got.iter().map(|t| vote(&t.task, "1")).collect();
        store.complete(a, votes, T0).await.unwrap();
    }
    let agents = store.list_agents().await.unwrap();
    assert_eq!(agent(&agents, "a").trust, Trust::Trusted);

    job(store, "next", 30, replicated(2)).await;
    let got = store.lease(query("a", T0, 100)).await.unwrap();
    assert_eq!(got.len(), 30, "first replicas go out before second ones");
    let votes = got.iter().map(|t| vote(&t.task, "2")).collect();
    store.complete("a", votes, T0).await.unwrap();
    let checks: Vec<u32> = (0..30)
        .filter(|i| validation::is_spot_check("next", *i))
        .collect();
    assert!(
        !checks.is_empty() && checks.len() < 30,
        "some of 30 are spot checks"
    );
    let status = store.job("next").await.unwrap().unwrap();
    assert_eq!(
        status.progress.done as usize,
        30 - checks.len(),
        "a trusted answer stands alone"
    );
    let second = store.lease(query("b", T0, 100)).await.unwrap();
    let mut indexes: Vec<u32> = second.iter().map(|t| t.task.index).collect();
    indexes.sort();
    assert_eq!(indexes, checks, "only spot checks are replicated");

    // A dispute costs every side its streak at once, before any tie-break:
    // a liar must not keep trust while its lies wait for a third agent.
    let votes = second.iter().map(|t| vote(&t.task, "3")).collect();
    store.complete("b", votes, T0).await.unwrap();
    let agents = store.list_agents().await.unwrap();
    assert_eq!(agent(&agents, "a").trust, Trust::New);
    assert_eq!(agent(&agents, "a").results_invalid, 0, "not outvoted yet");
}

/// A removed agent's votes on undecided tasks are discarded: its replicas
/// run again elsewhere, and it earns nothing.
pub async fn a_removed_agents_votes_are_discarded(store: &dyn Store) {
    for a in ["a", "b", "c"] {
        enrol(store, a).await;
    }
    job(store, "j", 1, replicated(2)).await;
    let a = store.lease(query("a", T0, 10)).await.unwrap();
    store
        .complete("a", vec![vote(&a[0].task, "bad")], T0)
        .await
        .unwrap();
    assert!(store.remove_agent("a", T0).await.unwrap());
    let b = store.lease(query("b", T0, 10)).await.unwrap();
    let c = store.lease(query("c", T0, 10)).await.unwrap();
    assert_eq!(
        (b.len(), c.len()),
        (1, 1),
        "the removed vote is asked again"
    );
    store
        .complete("b", vec![vote(&b[0].task, "good")], T0)
        .await
        .unwrap();
    let out = store
        .complete("c", vec![vote(&c[0].task, "good")], T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
    let agents = store.list_agents().await.unwrap();
    assert_eq!(agent(&agents, "a").tasks_done, 0);
    let (_, outputs) = store.job_outputs("j").await.unwrap();
    assert_eq!(outputs, vec![answer("good")]);
}

/// Instantiates `$m!(rule, ...)` with every rule above, so that each store
/// runs the same list.
macro_rules! every_rule {
    ($m:ident) => {
        $m!(
            lease_and_complete_once,
            expired_leases_return,
            retries_then_fails,
            matching_and_priority,
            cancel_release_remove,
            unsealed_jobs_are_dropped,
            tokens,
            unmatchable_tasks_do_not_block_the_queue,
            expiries_do_not_revive_a_failed_job,
            only_active_agents_lease_and_restarts_renew,
            finishing_twice_keeps_the_first,
            replicas_agree_or_ask_another_agent,
            endless_disagreement_fails_and_flags,
            trusted_agents_earn_unreplicated_work,
            a_removed_agents_votes_are_discarded
        );
    };
}

/// Two coordinators that reduce the same job: the first result stays.
pub async fn finishing_twice_keeps_the_first(store: &dyn Store) {
    enrol(store, "a").await;
    job(store, "j", 1, JobOptions::default()).await;
    let leased = store.lease(query("a", T0, 1)).await.unwrap();
    let out = store
        .complete("a", vec![done(&leased[0].task)], T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
    assert_eq!(store.jobs_to_reduce().await.unwrap(), vec!["j".to_string()]);
    store.finish_job("j", Ok(vec![1]), T0).await.unwrap();
    store.finish_job("j", Ok(vec![2]), T0 + 1).await.unwrap();
    store
        .finish_job("j", Err("late failure".into()), T0 + 2)
        .await
        .unwrap();
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(status.finished_ms, Some(T0));
    assert_eq!(store.job_result("j").await.unwrap(), Some(vec![1]));
    assert!(store.jobs_to_reduce().await.unwrap().is_empty());
}

#[cfg(test)]
mod sqlite {
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
        })
        .await
        .unwrap();
        let big = NewTask {
            input: vec![1; super::super::blobs::INLINE_MAX + 1],
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
            c.execute_batch(include_str!("testdata/schema_v1.sql"))
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
        assert_eq!(s.purge_finished_inputs().await.unwrap(), 1);
        assert_eq!(files(), 0);
        assert_eq!(s.purge_finished_inputs().await.unwrap(), 0);
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
}

/// The same rules against a real Redis server, each test under its own key
/// prefix so they run in parallel on one server.
#[cfg(test)]
mod redis {
    use crate::store::RedisStore;

    /// Where the Redis tests find their server.
    const URL_VAR: &str = "MUSKETEER_TEST_REDIS_URL";

    async fn store() -> RedisStore {
        let url = std::env::var(URL_VAR).unwrap_or_else(|_| {
            panic!(
                "{URL_VAR} is not set: the Redis store's tests need a Redis server. \
                 Run scripts/test (it starts one), or start `redis-server --port 6390` \
                 and set {URL_VAR}=redis://127.0.0.1:6390"
            )
        });
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        RedisStore::connect(&url, &prefix)
            .await
            .unwrap_or_else(|e| panic!("cannot use the Redis at {url} ({URL_VAR}): {e}"))
    }

    macro_rules! conformance {
        ($($name:ident),*) => {$(
            #[tokio::test]
            async fn $name() {
                let s = store().await;
                super::$name(&s).await;
            }
        )*};
    }

    every_rule!(conformance);

    /// Several coordinators: each opens its own store on the same server
    /// and prefix; a task is leased once across them, and results and
    /// expiry from any of them count.
    #[tokio::test]
    async fn coordinators_share_one_state() {
        use super::*;
        let a = store().await;
        let url = std::env::var(URL_VAR).unwrap();
        let b = RedisStore::connect(&url, &a.prefix()).await.unwrap();
        enrol(&a, "x").await;
        enrol(&b, "y").await;
        job(&a, "j", 4, JobOptions::default()).await;
        let ra = a.lease(query("x", T0, 2)).await.unwrap();
        let rb = b.lease(query("y", T0, 4)).await.unwrap();
        assert_eq!((ra.len(), rb.len()), (2, 2), "every task leased once");
        // y finishes its own through a; x's tasks expire through b.
        let out = a
            .complete("y", rb.iter().map(|t| done(&t.task)).collect(), T0)
            .await
            .unwrap();
        assert_eq!(out.accepted as usize, rb.len());
        let epoch = b.work_epoch(T0).await.unwrap().unwrap();
        assert_eq!(
            b.expire_leases(T0 + TTL + 1).await.unwrap() as usize,
            ra.len()
        );
        assert_ne!(
            a.work_epoch(T0).await.unwrap(),
            Some(epoch),
            "b's expiry wakes a's long-polls"
        );
        let again = b.lease(query("y", T0 + TTL + 2, 4)).await.unwrap();
        assert_eq!(again.len(), ra.len());
        let out = b
            .complete("y", again.iter().map(|t| done(&t.task)).collect(), T0)
            .await
            .unwrap();
        assert_eq!(out.ready, vec!["j".to_string()]);
        assert_eq!(a.list_agents().await.unwrap().len(), 2);
    }

    /// An upload in flight on a live coordinator survives another's start;
    /// one whose coordinator is gone is dropped.
    #[tokio::test]
    async fn only_dead_coordinators_uploads_are_dropped() {
        use super::*;
        let a = store().await;
        let url = std::env::var(URL_VAR).unwrap();
        let b = RedisStore::connect(&url, &a.prefix()).await.unwrap();
        let upload = |id: &str| NewJob {
            id: id.into(),
            kernel: "wordcount".into(),
            options: JobOptions::default(),
            reduce_plan: vec![],
            created_ms: T0,
        };
        a.begin_job(upload("mine")).await.unwrap();
        assert_eq!(b.abort_unsealed_jobs().await.unwrap(), 0, "a is alive");
        assert_eq!(
            a.purge_finished_inputs().await.unwrap(),
            0,
            "the periodic purge leaves a's own upload in flight alone"
        );
        assert_eq!(b.purge_finished_inputs().await.unwrap(), 0);
        a.forget_alive().await.unwrap();
        assert_eq!(b.abort_unsealed_jobs().await.unwrap(), 1, "a is gone");
    }

    /// A lease that saw a job drained must not take it out of its queue's
    /// index after a release gave it work again (a newer version).
    #[tokio::test]
    async fn a_stale_removal_does_not_hide_work() {
        let s = store().await;
        assert!(
            s.queue_race("j", "default", 2, 1).await.unwrap(),
            "stale removal ignored"
        );
        assert!(
            !s.queue_race("k", "default", 1, 1).await.unwrap(),
            "current removal applies"
        );
        assert!(!s.queue_race("l", "default", 1, 3).await.unwrap());
    }
}
