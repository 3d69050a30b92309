//! The rules of time: a countdown holds tasks back, a job with tasks
//! never leased by its `expires` ends expired, a result goes at its TTL.

use super::*;

fn timed(not_before_ms: u64, expires_ms: Option<u64>, result_ttl_ms: Option<u64>) -> JobTiming {
    JobTiming {
        not_before_ms,
        expires_ms,
        result_ttl_ms,
    }
}

/// No task of a job with a countdown is leased before its time, however
/// often agents ask, and all of them are once it comes.
pub async fn a_countdown_holds_every_task_back(store: &dyn Store) {
    enrol(store, "a").await;
    let tasks = |n: usize| {
        (0..n)
            .map(|i| NewTask {
                input: vec![i as u8],
                cost: Cost {
                    work: 1,
                    mem_bytes: 1,
                },
            })
            .collect::<Vec<_>>()
    };
    let start = T0 + 2_000;
    add_timed_job(
        store,
        "later",
        JobOptions::default(),
        timed(start, None, None),
        tasks(3),
    )
    .await;
    let status = store.job("later").await.unwrap().unwrap();
    assert_eq!(status.not_before_ms, Some(start));
    for now in [T0, T0 + 1_000, start - 1] {
        assert!(
            store.lease(query("a", now, 10)).await.unwrap().is_empty(),
            "leased at {now}, before {start}"
        );
    }
    // A job without a countdown, submitted later, goes first.
    job(store, "now", 1, JobOptions::default()).await;
    let got = store.lease(query("a", T0 + 1_500, 10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task.job, "now");
    let got = store.lease(query("a", start, 10)).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|t| t.task.job == "later"));
    assert_eq!(
        store.job("later").await.unwrap().unwrap().state,
        JobState::Running
    );
}

/// At its `expires`, a job with a task never leased ends `expired`: the
/// task is not leased from then on, the ones running are cancelled (their
/// results are stale). A job whose every task was leased runs on.
pub async fn unleased_jobs_expire_and_leased_ones_run_on(store: &dyn Store) {
    enrol(store, "a").await;
    let expires = T0 + 1_000;
    let tasks = |n: usize| {
        (0..n)
            .map(|i| NewTask {
                input: vec![i as u8],
                cost: Cost {
                    work: 1,
                    mem_bytes: 1,
                },
            })
            .collect::<Vec<_>>()
    };
    add_timed_job(
        store,
        "whole",
        JobOptions::default(),
        timed(0, Some(expires), None),
        tasks(1),
    )
    .await;
    add_timed_job(
        store,
        "half",
        JobOptions::default(),
        timed(0, Some(expires), None),
        tasks(2),
    )
    .await;
    let first = store.lease(query("a", T0, 2)).await.unwrap();
    let jobs: Vec<&str> = first.iter().map(|t| t.task.job.as_str()).collect();
    assert_eq!(jobs, ["whole", "half"], "{first:?}");
    assert!(store.expire_jobs(expires - 1).await.unwrap().is_empty());
    // Past its time, the task never leased is not leased any more.
    assert!(store
        .lease(query("a", expires, 10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.expire_jobs(expires).await.unwrap(), vec!["half"]);
    let half = store.job("half").await.unwrap().unwrap();
    assert_eq!(half.state, JobState::Expired);
    assert_eq!(half.finished_ms, Some(expires));
    assert!(half.error.unwrap().contains("expires"));
    let out = store
        .complete("a", first.iter().map(|t| done(&t.task)).collect(), expires)
        .await
        .unwrap();
    assert_eq!(
        (out.accepted, out.stale),
        (1, 1),
        "the expired job's task is stale"
    );
    assert_eq!(out.ready, vec!["whole".to_string()]);
    // Once settled, a job leaves the sweep for good.
    assert!(store.expire_jobs(expires + 10).await.unwrap().is_empty());
    assert!(store
        .job("half")
        .await
        .unwrap()
        .unwrap()
        .state
        .is_finished());
    // An expired job cannot be cancelled or finished.
    store
        .finish_job("half", Ok(vec![1]), expires + 20)
        .await
        .unwrap();
    assert_eq!(
        store.job("half").await.unwrap().unwrap().state,
        JobState::Expired
    );
    assert_eq!(
        store
            .cancel_job("half", expires + 20)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Expired
    );
}

/// A succeeded job's result is deleted `result_ttl` after it finished; a
/// job without a TTL keeps its result.
pub async fn results_are_deleted_when_their_ttl_runs_out(store: &dyn Store) {
    enrol(store, "a").await;
    let tasks = || {
        vec![NewTask {
            input: vec![1],
            cost: Cost {
                work: 1,
                mem_bytes: 1,
            },
        }]
    };
    add_timed_job(
        store,
        "brief",
        JobOptions::default(),
        timed(0, None, Some(10_000)),
        tasks(),
    )
    .await;
    job(store, "kept", 1, JobOptions::default()).await;
    let got = store.lease(query("a", T0, 10)).await.unwrap();
    store
        .complete("a", got.iter().map(|t| done(&t.task)).collect(), T0)
        .await
        .unwrap();
    let finished = T0 + 500;
    let result = vec![7u8; 4096];
    for id in ["brief", "kept"] {
        store
            .finish_job(id, Ok(result.clone()), finished)
            .await
            .unwrap();
    }
    let brief = store.job("brief").await.unwrap().unwrap();
    assert_eq!(brief.result_expires_ms, Some(finished + 10_000));
    assert!(!brief.result_expired(finished + 9_999));
    assert!(brief.result_expired(finished + 10_000));
    assert_eq!(
        store.job("kept").await.unwrap().unwrap().result_expires_ms,
        None
    );
    assert_eq!(
        store.purge_expired_results(finished + 9_999).await.unwrap(),
        0
    );
    assert_eq!(
        store.job_result("brief").await.unwrap(),
        Some(result.clone())
    );
    assert_eq!(
        store
            .purge_expired_results(finished + 10_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.job_result("brief").await.unwrap(), None);
    assert_eq!(store.job_result("kept").await.unwrap(), Some(result));
    // The job itself stays, succeeded, with when its result went.
    let brief = store.job("brief").await.unwrap().unwrap();
    assert_eq!(brief.state, JobState::Succeeded);
    assert!(brief.result_expired(finished + 10_000));
    assert_eq!(
        store
            .purge_expired_results(finished + 20_000)
            .await
            .unwrap(),
        0
    );
}
