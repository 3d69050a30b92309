//! What every [`Store`] must do, as tests over `&dyn Store`: the rules of
//! leasing (`leasing.rs`), of results and votes (`results.rs`), of a job's
//! task list (`tasks.rs`) and more, run by the embedded store (`sqlite.rs`)
//! and by the Redis store (`redis.rs`).

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
    let _ = store
        .create_token("t", token_hash, TokenRole::Join, T0)
        .await;
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

/// A sealed job of `tasks` small Fibonacci tasks.
pub(crate) async fn job(store: &dyn Store, id: &str, tasks: usize, options: JobOptions) {
    let tasks = (0..tasks)
        .map(|i| NewTask {
            input: vec![i as u8; 8],
            cost: Cost {
                work: 10,
                mem_bytes: 100,
            },
        })
        .collect();
    add_job(store, id, options, tasks).await;
}

/// A sealed Fibonacci job of these tasks.
pub(crate) async fn add_job(store: &dyn Store, id: &str, options: JobOptions, tasks: Vec<NewTask>) {
    add_timed_job(store, id, options, JobTiming::default(), tasks).await
}

/// A sealed Fibonacci job of these tasks, with these times.
pub(crate) async fn add_timed_job(
    store: &dyn Store,
    id: &str,
    options: JobOptions,
    timing: JobTiming,
    tasks: Vec<NewTask>,
) {
    store
        .begin_job(NewJob {
            id: id.into(),
            kernel: "fibonacci".into(),
            options,
            reduce_plan: vec![0],
            created_ms: T0,
            module: None,
            timing,
        })
        .await
        .unwrap();
    store.add_tasks(id, tasks).await.unwrap();
    store.seal_job(id).await.unwrap();
}

mod expiry;
mod leasing;
mod modules;
mod results;
mod retry;
mod schedules;
mod tasks;
mod workflows;

pub use expiry::*;
pub use leasing::*;
pub use modules::*;
pub use results::*;
pub use retry::*;
pub use schedules::*;
pub use tasks::*;
pub use workflows::*;

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
            a_removed_agents_votes_are_discarded,
            modules_are_content_addressed,
            a_module_in_use_is_kept,
            a_waiting_job_keeps_its_module,
            backlog_counts_what_waits,
            a_countdown_holds_every_task_back,
            unleased_jobs_expire_and_leased_ones_run_on,
            results_are_deleted_when_their_ttl_runs_out,
            workflows_are_stored_whole_and_released_once,
            a_tick_is_claimed_once_and_makes_one_job,
            a_jobs_tasks_are_listed_failures_first,
            a_replicated_tasks_votes_are_listed,
            a_retried_job_reruns_only_what_was_not_done,
            a_retry_that_fails_again_can_be_retried_again,
            only_a_failed_job_with_its_inputs_is_retried,
            a_job_whose_reduce_failed_is_reduced_again,
            a_retried_replicated_job_votes_again,
            a_failed_workflow_step_is_not_retried
        );
    };
}

#[cfg(test)]
mod redis;
#[cfg(test)]
mod redis_cluster;
#[cfg(test)]
mod sqlite;
