//! The rules of results and votes: replicas, disputes, trust, a removed
//! voter, and the first reduce winning.

use super::*;

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
