//! The same rules as `redis.rs` on a real Redis Cluster
//! (`MUSKETEER_TEST_REDIS_CLUSTER_URL`, `redis+cluster://...`: scripts/test
//! starts three masters and three replicas), where every script and
//! pipeline must keep to the slots the store's keys are laid out in.

use super::redis::{dead_uploads, shared_state, stale_removal, store_at};
use crate::store::RedisStore;

/// Where the cluster tests find their cluster.
const URL_VAR: &str = "MUSKETEER_TEST_REDIS_CLUSTER_URL";

async fn store() -> RedisStore {
    store_at(
        URL_VAR,
        "a Redis Cluster (six `redis-server --cluster-enabled yes` joined by \
         `redis-cli --cluster create ... --cluster-replicas 1`, then \
         MUSKETEER_TEST_REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:PORT)",
    )
    .await
}

/// Every rule but four: the workflow and schedule scripts (issue 12's,
/// merged beside the cluster work), and the `MULTI` that writes their
/// waiting jobs, touch keys of several slots at once, which a cluster
/// refuses with CROSSSLOT; until their keys share hash tags, workflows and
/// schedules need a single Redis (the README says so).
macro_rules! on_cluster {
    (workflows_are_stored_whole_and_released_once) => {};
    (a_tick_is_claimed_once_and_makes_one_job) => {};
    (a_waiting_job_keeps_its_module) => {};
    (a_failed_workflow_step_is_not_retried) => {};
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let s = store().await;
            super::$name(&s).await;
        }
    };
}

macro_rules! conformance {
    ($($name:ident),*) => {$( on_cluster!($name); )*};
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
