//! Workflows in the store: created whole with every step's job waiting,
//! read back, each job released once with its tasks, finished once.

use super::*;

fn waiting_job(id: &str, timing: JobTiming) -> NewJob {
    NewJob {
        module: None,
        id: id.into(),
        kernel: "fibonacci".into(),
        options: JobOptions::default(),
        reduce_plan: Vec::new(),
        created_ms: T0,
        timing,
    }
}

fn step(name: &str, job: &str, needs: &[&str]) -> WorkflowStep {
    WorkflowStep {
        name: name.into(),
        job: job.into(),
        needs: needs.iter().map(|n| n.to_string()).collect(),
        body: serde_json::json!({"kernel": "fibonacci", "n": [1, 2]}),
    }
}

fn two_tasks() -> Vec<NewTask> {
    vec![
        NewTask {
            input: vec![1; 8],
            cost: Cost {
                work: 10,
                mem_bytes: 100,
            },
        };
        2
    ]
}

/// A workflow and its jobs are stored at once, the jobs visible and
/// `waiting` with nothing to lease; a job is released once, then runs as
/// any other; a waiting job can fail or be cancelled instead; a workflow
/// finishes once.
pub async fn workflows_are_stored_whole_and_released_once(store: &dyn Store) {
    enrol(store, "a").await;
    let steps = vec![step("a", "ja", &[]), step("b", "jb", &["a"])];
    store
        .create_workflow(NewWorkflow {
            id: "w".into(),
            created_ms: T0,
            steps: steps.clone(),
            jobs: vec![
                waiting_job("ja", JobTiming::default()),
                waiting_job("jb", JobTiming::default()),
            ],
        })
        .await
        .unwrap();
    let wf = store.workflow("w").await.unwrap().unwrap();
    assert_eq!(
        (wf.state, wf.created_ms, wf.finished_ms),
        (WorkflowState::Running, T0, None)
    );
    assert_eq!(wf.steps, steps);
    assert!(store.workflow("nope").await.unwrap().is_none());
    assert_eq!(store.open_workflows().await.unwrap(), vec!["w".to_string()]);
    for id in ["ja", "jb"] {
        let j = store.job(id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Waiting, "{id}");
        assert_eq!(j.workflow.as_deref(), Some("w"));
        assert_eq!(j.progress, Progress::default());
    }
    assert_eq!(store.list_jobs(10).await.unwrap().len(), 2);
    assert!(store.lease(query("a", T0, 10)).await.unwrap().is_empty());
    assert!(store.jobs_to_reduce().await.unwrap().is_empty());
    assert!(store.expire_jobs(T0 + 1).await.unwrap().is_empty());

    assert!(store
        .start_waiting_job("ja", vec![9], two_tasks())
        .await
        .unwrap());
    assert!(
        !store
            .start_waiting_job("ja", vec![9], two_tasks())
            .await
            .unwrap(),
        "released twice"
    );
    let ja = store.job("ja").await.unwrap().unwrap();
    assert_eq!((ja.state, ja.progress.total), (JobState::Queued, 2));
    let got = store.lease(query("a", T0, 10)).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|t| t.task.job == "ja"));
    let out = store
        .complete("a", got.iter().map(|t| done(&t.task)).collect(), T0)
        .await
        .unwrap();
    assert_eq!(out.ready, vec!["ja".to_string()]);
    let (plan, outputs) = store.job_outputs("ja").await.unwrap();
    assert_eq!((plan, outputs.len()), (vec![9], 2));
    store.finish_job("ja", Ok(vec![5]), T0).await.unwrap();
    assert_eq!(store.job_result("ja").await.unwrap(), Some(vec![5]));

    // A step whose need failed fails without running.
    store
        .finish_job("jb", Err("step a failed".into()), T0 + 1)
        .await
        .unwrap();
    let jb = store.job("jb").await.unwrap().unwrap();
    assert_eq!(jb.state, JobState::Failed);
    assert_eq!(jb.error.as_deref(), Some("step a failed"));
    assert!(!store
        .start_waiting_job("jb", vec![9], two_tasks())
        .await
        .unwrap());

    assert!(store
        .finish_workflow("w", WorkflowState::Failed, T0 + 5)
        .await
        .unwrap());
    assert!(!store
        .finish_workflow("w", WorkflowState::Succeeded, T0 + 6)
        .await
        .unwrap());
    let wf = store.workflow("w").await.unwrap().unwrap();
    assert_eq!(
        (wf.state, wf.finished_ms),
        (WorkflowState::Failed, Some(T0 + 5))
    );
    assert!(store.open_workflows().await.unwrap().is_empty());

    // A waiting job cancelled is never released; one released with a
    // countdown holds its tasks back until then.
    let later = JobTiming {
        not_before_ms: T0 + 1_000,
        ..JobTiming::default()
    };
    store
        .create_workflow(NewWorkflow {
            id: "w2".into(),
            created_ms: T0,
            steps: vec![step("c", "jc", &[]), step("d", "jd", &[])],
            jobs: vec![
                waiting_job("jc", JobTiming::default()),
                waiting_job("jd", later),
            ],
        })
        .await
        .unwrap();
    let jc = store.cancel_job("jc", T0).await.unwrap().unwrap();
    assert_eq!(jc.state, JobState::Cancelled);
    assert!(!store
        .start_waiting_job("jc", vec![9], two_tasks())
        .await
        .unwrap());
    assert!(store
        .start_waiting_job("jd", vec![9], two_tasks())
        .await
        .unwrap());
    assert!(store
        .lease(query("a", T0 + 999, 10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.lease(query("a", T0 + 1_000, 10)).await.unwrap().len(),
        2
    );
}

/// A workflow's step that failed is not retried: the workflow failed with
/// it. Nothing of it was kept for a retry.
pub async fn a_failed_workflow_step_is_not_retried(store: &dyn Store) {
    enrol(store, "a").await;
    store
        .create_workflow(NewWorkflow {
            id: "w".into(),
            created_ms: T0,
            steps: vec![step("a", "ja", &[])],
            jobs: vec![waiting_job("ja", JobTiming::default())],
        })
        .await
        .unwrap();
    assert!(store
        .start_waiting_job("ja", Vec::new(), two_tasks())
        .await
        .unwrap());
    let t = store.lease(query("a", T0, 1)).await.unwrap();
    store
        .finish_job("ja", Err("the step failed".into()), T0)
        .await
        .unwrap();
    assert_eq!(
        store.job("ja").await.unwrap().unwrap().state,
        JobState::Failed
    );
    assert_eq!(
        store.retry_failed_tasks("ja", T0 + 1).await.unwrap(),
        Err(RetryRefusal::WorkflowStep)
    );
    let stale = store
        .complete("a", vec![done(&t[0].task)], T0)
        .await
        .unwrap();
    assert_eq!(stale.accepted, 0, "the failed step's lease ended");
    assert!(store.lease(query("a", T0 + 1, 5)).await.unwrap().is_empty());
}
