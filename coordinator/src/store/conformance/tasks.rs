//! The rules of a job's task list (the dashboard's): each replica's state,
//! attempts, agent, error and vote, failures first, capped.

use super::*;

/// (index, replica, state, attempts, agent, error, agreed) of each listed
/// replica, in the listed order: easy to compare whole.
type Row = (
    u32,
    u32,
    TaskState,
    u32,
    Option<String>,
    Option<String>,
    Option<bool>,
);

async fn rows(store: &dyn Store, id: &str, limit: usize) -> Vec<Row> {
    store
        .job_tasks(id, limit)
        .await
        .unwrap()
        .expect("the job exists")
        .into_iter()
        .map(|r| {
            (
                r.index, r.replica, r.state, r.attempts, r.agent, r.error, r.agreed,
            )
        })
        .collect()
}

fn some(s: &str) -> Option<String> {
    Some(s.into())
}

/// A job's tasks, listed: who ran each, why one failed, failures first,
/// at most the limit; a failed job's rest is cancelled.
pub async fn a_jobs_tasks_are_listed_failures_first(store: &dyn Store) {
    enrol(store, "a").await;
    assert!(store.job_tasks("nope", 10).await.unwrap().is_none());
    let options = JobOptions {
        max_attempts: 2,
        ..JobOptions::default()
    };
    job(store, "j", 3, options).await;
    let leased = store.lease(query("a", T0, 3)).await.unwrap();
    let task = |i: u32| &leased.iter().find(|t| t.task.index == i).unwrap().task;
    store
        .complete("a", vec![done(task(0)), failed(task(1), "boom")], T0)
        .await
        .unwrap();
    use TaskState::*;
    assert_eq!(
        rows(store, "j", 50).await,
        [
            (1, 0, Pending, 1, None, some("boom"), None),
            (2, 0, Leased, 1, some("a"), None, None),
            (0, 0, Done, 1, some("a"), None, None),
        ]
    );
    assert_eq!(rows(store, "j", 1).await.len(), 1, "capped");
    let later = T0 + retry_backoff_ms(1);
    let retry = store.lease(query("a", later, 5)).await.unwrap();
    store
        .complete("a", vec![failed(&retry[0].task, "boom again")], later)
        .await
        .unwrap();
    assert_eq!(
        rows(store, "j", 50).await,
        [
            (1, 0, Failed, 2, None, some("boom again"), None),
            (0, 0, Done, 1, some("a"), None, None),
            (2, 0, Cancelled, 1, None, None, None),
        ]
    );
}

/// A replicated task's votes: undecided until a majority agrees, then
/// each voter agreed or not.
pub async fn a_replicated_tasks_votes_are_listed(store: &dyn Store) {
    for a in ["a", "b", "c"] {
        enrol(store, a).await;
    }
    let options = JobOptions {
        redundancy: 2,
        ..JobOptions::default()
    };
    job(store, "r", 1, options).await;
    for (agent, digits) in [("a", "55"), ("b", "89")] {
        let t = store.lease(query(agent, T0, 1)).await.unwrap();
        store
            .complete(agent, vec![answer_report(&t[0].task, digits)], T0)
            .await
            .unwrap();
    }
    use TaskState::*;
    assert_eq!(
        rows(store, "r", 50).await,
        [
            (0, 2, Pending, 0, None, None, None),
            (0, 0, Done, 1, some("a"), None, None),
            (0, 1, Done, 1, some("b"), None, None),
        ],
        "the replicas disagree: a third is asked"
    );
    let t = store.lease(query("c", T0, 1)).await.unwrap();
    store
        .complete("c", vec![answer_report(&t[0].task, "55")], T0)
        .await
        .unwrap();
    assert_eq!(
        rows(store, "r", 50).await,
        [
            (0, 0, Done, 1, some("a"), None, Some(true)),
            (0, 1, Done, 1, some("b"), None, Some(false)),
            (0, 2, Done, 1, some("c"), None, Some(true)),
        ]
    );
}

/// A Fibonacci result with these digits: distinct answers for votes.
fn answer_report(task: &TaskRef, digits: &str) -> TaskReport {
    TaskReport {
        task: task.clone(),
        cpu_ms: 5,
        outcome: TaskOutcome::Done(
            musketeer_tasks::TaskOutput::Fibonacci(musketeer_tasks::fibonacci::FibonacciOutput {
                digits: digits.into(),
                ends: vec![digits.len() as u64],
            })
            .encode(),
        ),
    }
}
