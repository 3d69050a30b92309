//! The same rules against a real Redis server (`MUSKETEER_TEST_REDIS_URL`),
//! each test under its own key prefix so they run in parallel on one server;
//! `redis_cluster.rs` runs them all again on a Redis Cluster.

use crate::store::RedisStore;

/// Where the Redis tests find their server.
const URL_VAR: &str = "MUSKETEER_TEST_REDIS_URL";

/// A store under a fresh prefix on the Redis that `var` names; fails (does
/// not skip) when it is not set, saying how to start one (`how`).
pub(super) async fn store_at(var: &str, how: &str) -> RedisStore {
    let url = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the Redis store's tests need {how}. Run scripts/test \
             (it starts one), or start one and set {var}"
        )
    });
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    RedisStore::connect(&url, &prefix)
        .await
        .unwrap_or_else(|e| panic!("cannot use the Redis at {url} ({var}): {e}"))
}

/// A second coordinator's store on the same Redis and prefix as `a`.
pub(super) async fn same_store(var: &str, a: &RedisStore) -> RedisStore {
    let url = std::env::var(var).unwrap();
    RedisStore::connect(&url, &a.prefix()).await.unwrap()
}

async fn store() -> RedisStore {
    store_at(
        URL_VAR,
        "a Redis server (`redis-server --port 6390`, then \
         MUSKETEER_TEST_REDIS_URL=redis://127.0.0.1:6390)",
    )
    .await
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

#[tokio::test]
async fn coordinators_share_one_state() {
    shared_state(store().await, URL_VAR).await;
}

#[tokio::test]
async fn only_dead_coordinators_uploads_are_dropped() {
    dead_uploads(store().await, URL_VAR).await;
}

#[tokio::test]
async fn a_stale_removal_does_not_hide_work() {
    stale_removal(store().await).await;
}

/// Several coordinators: each opens its own store on the same server
/// and prefix; a task is leased once across them, and results and
/// expiry from any of them count.
pub(super) async fn shared_state(a: RedisStore, var: &str) {
    use super::*;
    let b = same_store(var, &a).await;
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
pub(super) async fn dead_uploads(a: RedisStore, var: &str) {
    use super::*;
    let b = same_store(var, &a).await;
    let upload = |id: &str| NewJob {
        id: id.into(),
        kernel: "wordcount".into(),
        options: JobOptions::default(),
        reduce_plan: vec![],
        created_ms: T0,
        module: None,
        timing: JobTiming::default(),
    };
    a.begin_job(upload("mine")).await.unwrap();
    assert_eq!(b.abort_unsealed_jobs().await.unwrap(), 0, "a is alive");
    assert_eq!(
        a.purge_finished_inputs(T0).await.unwrap(),
        0,
        "the periodic purge leaves a's own upload in flight alone"
    );
    assert_eq!(b.purge_finished_inputs(T0).await.unwrap(), 0);
    a.forget_alive().await.unwrap();
    assert_eq!(b.abort_unsealed_jobs().await.unwrap(), 1, "a is gone");
}

/// A lease that saw a job drained must not take it out of its queue's
/// index after a release gave it work again (a newer version).
pub(super) async fn stale_removal(s: RedisStore) {
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

/// A sweep that read a failed job before a retry reopened it, and forgets
/// it only after, leaves it in the indexes: its tasks are leased again.
#[tokio::test]
async fn a_retry_outlives_a_sweep_that_saw_the_job_failed() {
    use super::*;
    let s = store().await;
    enrol(&s, "a").await;
    retry::failed_job(&s, "j", 3).await;
    s.retry_failed_tasks("j", T0 + 1).await.unwrap().unwrap();
    s.forget_stale("j").await.unwrap();
    let again = s.lease(query("a", T0 + 2, 10)).await.unwrap();
    assert_eq!(again.len(), 2, "the failed and the cancelled task");
    let out = s
        .complete("a", again.iter().map(|t| done(&t.task)).collect(), T0 + 2)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["j".to_string()]);
}
