//! Retrying a failed job: only its tasks not done run again, with their
//! inputs kept since the failure, and the job finishes as any job does.

use super::*;
use crate::store::rules::FAILED_JOB_RETENTION_MS;

/// A job of `tasks` tasks with one attempt each, every task leased by "a":
/// the first done, the second failed (which fails the job and cancels the
/// third). Returns the leases, by task index.
pub(super) async fn failed_job(store: &dyn Store, id: &str, tasks: usize) -> Vec<LeasedTask> {
    let options = JobOptions {
        max_attempts: 1,
        ..JobOptions::default()
    };
    job(store, id, tasks, options).await;
    let mut leased = store.lease(query("a", T0, tasks as u32)).await.unwrap();
    leased.sort_by_key(|t| t.task.index);
    assert_eq!(leased.len(), tasks);
    let out = store
        .complete(
            "a",
            vec![done(&leased[0].task), failed(&leased[1].task, "trap")],
            T0,
        )
        .await
        .unwrap();
    assert_eq!(out.accepted, 2);
    let status = store.job(id).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.progress.failed, 1);
    leased
}

/// A failed job retried runs its failed and cancelled tasks again, from
/// their kept inputs, never its done one, and succeeds with every output;
/// a result under a lease from before the failure counts for nothing.
pub async fn a_retried_job_reruns_only_what_was_not_done(store: &dyn Store) {
    enrol(store, "a").await;
    let before = failed_job(store, "j", 3).await;
    let now = T0 + 1_000;
    let retried = store.retry_failed_tasks("j", now).await.unwrap().unwrap();
    assert_eq!(
        retried,
        Retried {
            requeued: 2,
            ready: false
        }
    );
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Running);
    assert_eq!(status.error, None);
    assert_eq!(status.finished_ms, None);
    assert_eq!(
        (status.progress.done, status.progress.failed),
        (1, 0),
        "{status:?}"
    );
    // The third task's old lease ended with the failure.
    let stale = store
        .complete("a", vec![done(&before[2].task)], now)
        .await
        .unwrap();
    assert_eq!((stale.accepted, stale.stale), (0, 1));
    let mut again = store.lease(query("a", now, 10)).await.unwrap();
    again.sort_by_key(|t| t.task.index);
    let indexes: Vec<u32> = again.iter().map(|t| t.task.index).collect();
    assert_eq!(indexes, vec![1, 2], "the done task is not run again");
    for t in &again {
        assert_eq!(t.input, vec![t.task.index as u8; 8], "its input was kept");
    }
    let out = store
        .complete("a", again.iter().map(|t| done(&t.task)).collect(), now)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
    let (_, outputs) = store.job_outputs("j").await.unwrap();
    assert_eq!(outputs.len(), 3, "the first run's output is kept");
    store
        .finish_job("j", Ok(b"result".to_vec()), now)
        .await
        .unwrap();
    assert_eq!(
        store.job("j").await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        store.job_result("j").await.unwrap(),
        Some(b"result".to_vec())
    );
}

/// A retried task that fails again fails the job again, with the new
/// reason; and the job can be retried once more.
pub async fn a_retry_that_fails_again_can_be_retried_again(store: &dyn Store) {
    enrol(store, "a").await;
    failed_job(store, "j", 2).await;
    let now = T0 + 1_000;
    store.retry_failed_tasks("j", now).await.unwrap().unwrap();
    let again = store.lease(query("a", now, 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    store
        .complete("a", vec![failed(&again[0].task, "trap again")], now)
        .await
        .unwrap();
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("trap again"));
    let later = now + 1_000;
    let retried = store.retry_failed_tasks("j", later).await.unwrap().unwrap();
    assert_eq!(retried.requeued, 1);
    let last = store.lease(query("a", later, 10)).await.unwrap();
    let out = store
        .complete("a", vec![done(&last[0].task)], later)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
}

/// Only a failed job whose inputs are still kept is retried; every
/// refusal changes nothing.
pub async fn only_a_failed_job_with_its_inputs_is_retried(store: &dyn Store) {
    enrol(store, "a").await;
    assert_eq!(
        store.retry_failed_tasks("nope", T0).await.unwrap(),
        Err(RetryRefusal::NotFound)
    );
    job(store, "open", 1, JobOptions::default()).await;
    assert_eq!(
        store.retry_failed_tasks("open", T0).await.unwrap(),
        Err(RetryRefusal::NotFailed(JobState::Queued))
    );
    let t = store.lease(query("a", T0, 1)).await.unwrap();
    store
        .complete("a", vec![done(&t[0].task)], T0)
        .await
        .unwrap();
    store.finish_job("open", Ok(vec![1]), T0).await.unwrap();
    assert_eq!(
        store.retry_failed_tasks("open", T0).await.unwrap(),
        Err(RetryRefusal::NotFailed(JobState::Succeeded))
    );
    job(store, "cancelled", 1, JobOptions::default()).await;
    store.cancel_job("cancelled", T0).await.unwrap();
    assert_eq!(
        store.retry_failed_tasks("cancelled", T0).await.unwrap(),
        Err(RetryRefusal::NotFailed(JobState::Cancelled))
    );
    failed_job(store, "old", 2).await;
    // The failure was at T0: its inputs are gone from then on.
    let too_late = T0 + FAILED_JOB_RETENTION_MS;
    store.purge_finished_inputs(too_late).await.unwrap();
    assert_eq!(
        store.retry_failed_tasks("old", too_late).await.unwrap(),
        Err(RetryRefusal::InputsGone)
    );
    let status = store.job("old").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.is_some());
    assert!(store
        .lease(query("a", too_late, 10))
        .await
        .unwrap()
        .is_empty());
    // A cancel of a failed job keeps it failed and frees its inputs.
    failed_job(store, "freed", 2).await;
    let status = store.cancel_job("freed", T0 + 1).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(
        store.retry_failed_tasks("freed", T0 + 1).await.unwrap(),
        Err(RetryRefusal::InputsGone)
    );
    // Within the retention the purge keeps them, and the retry works.
    failed_job(store, "recent", 2).await;
    store.purge_finished_inputs(T0 + 1).await.unwrap();
    assert!(store
        .retry_failed_tasks("recent", T0 + 1)
        .await
        .unwrap()
        .is_ok());
}

/// A job whose every task was done but whose reduce failed is ready to
/// reduce again at once.
pub async fn a_job_whose_reduce_failed_is_reduced_again(store: &dyn Store) {
    enrol(store, "a").await;
    job(store, "j", 2, JobOptions::default()).await;
    let t = store.lease(query("a", T0, 2)).await.unwrap();
    let out = store
        .complete("a", t.iter().map(|t| done(&t.task)).collect(), T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
    store
        .finish_job("j", Err("module gone".into()), T0)
        .await
        .unwrap();
    let retried = store
        .retry_failed_tasks("j", T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        retried,
        Retried {
            requeued: 0,
            ready: true
        }
    );
    assert_eq!(store.jobs_to_reduce().await.unwrap(), vec!["j".to_string()]);
    let (_, outputs) = store.job_outputs("j").await.unwrap();
    assert_eq!(outputs.len(), 2);
    store.finish_job("j", Ok(vec![7]), T0 + 2).await.unwrap();
    assert_eq!(
        store.job("j").await.unwrap().unwrap().state,
        JobState::Succeeded
    );
}

/// A replicated job retried runs every replica of its undecided tasks
/// again (the votes its failure discarded included), and keeps its
/// decided ones.
pub async fn a_retried_replicated_job_votes_again(store: &dyn Store) {
    for a in ["a", "b"] {
        enrol(store, a).await;
    }
    let options = JobOptions {
        redundancy: 2,
        max_attempts: 1,
        ..JobOptions::default()
    };
    job(store, "j", 2, options).await;
    let mut a = store.lease(query("a", T0, 10)).await.unwrap();
    let mut b = store.lease(query("b", T0, 10)).await.unwrap();
    a.sort_by_key(|t| t.task.index);
    b.sort_by_key(|t| t.task.index);
    store
        .complete("a", a.iter().map(|t| done(&t.task)).collect(), T0)
        .await
        .unwrap();
    store
        .complete("b", vec![done(&b[0].task), failed(&b[1].task, "trap")], T0)
        .await
        .unwrap();
    let status = store.job("j").await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.progress.done, 1);
    let retried = store
        .retry_failed_tasks("j", T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.requeued, 2, "both replicas of task 1");
    let a = store.lease(query("a", T0 + 1, 10)).await.unwrap();
    let b = store.lease(query("b", T0 + 1, 10)).await.unwrap();
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!((a[0].task.index, b[0].task.index), (1, 1));
    store
        .complete("a", vec![done(&a[0].task)], T0 + 1)
        .await
        .unwrap();
    let out = store
        .complete("b", vec![done(&b[0].task)], T0 + 1)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
}
