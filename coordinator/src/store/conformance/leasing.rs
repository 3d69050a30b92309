//! The leasing rules: once per task, expiry, retries, matching and
//! priority, cancel and release, unsealed jobs, tokens, active agents.

use super::*;

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
            module: None,
            timing: JobTiming::default(),
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

/// Tokens: enrolment needs a known, unrevoked join token; a viewer
/// token is found by its hash and enrols nobody.
pub async fn tokens(store: &dyn Store) {
    let hash = musketeer_tasks::token::secret_hash("s");
    store
        .create_token("t1", hash, TokenRole::Join, T0)
        .await
        .unwrap();
    let viewer = musketeer_tasks::token::secret_hash("v");
    store
        .create_token("v1", viewer, TokenRole::Viewer, T0 + 1)
        .await
        .unwrap();
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
    assert_eq!(
        store.enrol_agent(viewer, agent("d")).await.unwrap(),
        Err(EnrolRefusal::NotAJoinToken)
    );
    let listed = store.list_tokens().await.unwrap();
    assert_eq!((listed[0].uses, listed[0].revoked), (1, true));
    assert_eq!(listed[0].role, TokenRole::Join);
    assert_eq!(
        listed[1],
        TokenRecord {
            id: "v1".into(),
            role: TokenRole::Viewer,
            created_ms: T0 + 1,
            revoked: false,
            uses: 0,
        }
    );
    assert_eq!(
        store.token_by_hash(viewer).await.unwrap(),
        Some(listed[1].clone())
    );
    assert_eq!(store.token_by_hash([9; 32]).await.unwrap(), None);
    assert!(store.revoke_token("v1").await.unwrap());
    assert!(store.token_by_hash(viewer).await.unwrap().unwrap().revoked);
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
            module: None,
            timing: JobTiming::default(),
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

/// What a job has waiting: leasable, leased and retrying tasks, their
/// memory estimates, its labels, and the higher-priority work before it.
pub async fn backlog_counts_what_waits(store: &dyn Store) {
    enrol(store, "a").await;
    assert_eq!(store.job_backlog("nope", T0).await.unwrap(), None);
    let labelled = JobOptions {
        labels: BTreeMap::from([("gpu".to_string(), "yes".to_string())]),
        priority: 3,
        max_attempts: 3,
        ..JobOptions::default()
    };
    let tasks = (0..4u64)
        .map(|i| NewTask {
            input: vec![i as u8; 8],
            cost: Cost {
                work: 10,
                mem_bytes: 100 * (i + 1),
            },
        })
        .collect();
    add_job(store, "w", labelled, tasks).await;
    let b = store.job_backlog("w", T0).await.unwrap().unwrap();
    assert_eq!(
        b,
        Backlog {
            queue: "default".into(),
            priority: 3,
            labels: BTreeMap::from([("gpu".to_string(), "yes".to_string())]),
            leasable: 4,
            retrying: 0,
            retry_at_ms: None,
            leased: 0,
            mem_min: 100,
            mem_max: 400,
            ahead: 0,
        }
    );
    // Two tasks of a higher priority in the same queue go first; one in
    // another queue and one of a lower priority do not count.
    let high = JobOptions {
        priority: 7,
        ..JobOptions::default()
    };
    job(store, "high", 2, high).await;
    let low = JobOptions {
        priority: 1,
        ..JobOptions::default()
    };
    job(store, "low", 1, low).await;
    let elsewhere = JobOptions {
        priority: 9,
        queue: "video".into(),
        ..JobOptions::default()
    };
    job(store, "video", 1, elsewhere).await;
    let b = store.job_backlog("w", T0).await.unwrap().unwrap();
    assert_eq!(b.ahead, 2);
    // Once leased, they no longer stand before it.
    let got = store.lease(query("a", T0, 2)).await.unwrap();
    assert!(got.iter().all(|t| t.task.job == "high"), "{got:?}");
    assert_eq!(store.job_backlog("w", T0).await.unwrap().unwrap().ahead, 0);

    // A leased task, and a failed one waiting out its backoff.
    let mut q = query("a", T0, 2);
    q.labels = BTreeMap::from([("gpu".to_string(), "yes".to_string())]);
    let got = store.lease(q).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|t| t.task.job == "w"), "{got:?}");
    store
        .complete("a", vec![failed(&got[0].task, "boom")], T0)
        .await
        .unwrap();
    let b = store.job_backlog("w", T0).await.unwrap().unwrap();
    assert_eq!((b.leasable, b.retrying, b.leased), (2, 1, 1), "{b:?}");
    assert_eq!(b.retry_at_ms, Some(T0 + retry_backoff_ms(1)));
    // The leased task's estimate (200) is not waiting; the retry's (100) is.
    assert_eq!((b.mem_min, b.mem_max), (100, 400), "{b:?}");
    // After the backoff the retry is leasable again.
    let later = T0 + retry_backoff_ms(1);
    let b = store.job_backlog("w", later).await.unwrap().unwrap();
    assert_eq!(
        (b.leasable, b.retrying, b.retry_at_ms),
        (3, 0, None),
        "{b:?}"
    );
}
