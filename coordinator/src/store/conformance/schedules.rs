//! Schedules in the store: a tick is claimed once, makes one waiting job
//! that names its schedule, and only while the schedule is active.

use super::*;

fn fired(id: &str, at: u64) -> NewJob {
    NewJob {
        module: None,
        id: id.into(),
        kernel: "factorial".into(),
        options: JobOptions::default(),
        reduce_plan: Vec::new(),
        created_ms: at,
        timing: JobTiming::default(),
    }
}

fn tick(tick_ms: u64, next_run_ms: u64) -> ScheduleTick {
    ScheduleTick {
        schedule: "s".into(),
        tick_ms,
        next_run_ms,
        now_ms: tick_ms + 5,
    }
}

/// A tick is claimed once however often it is tried, its job is created
/// `waiting` with the schedule's id, a paused schedule fires nothing, and
/// a schedule keeps its newest jobs.
pub async fn a_tick_is_claimed_once_and_makes_one_job(store: &dyn Store) {
    let minute = 60_000;
    let body = serde_json::json!({"kernel": "factorial", "n": 10});
    store
        .create_schedule(NewSchedule {
            id: "s".into(),
            cron: "* * * * *".into(),
            timezone: "Europe/Paris".into(),
            job: body.clone(),
            created_ms: T0,
            next_run_ms: T0 + minute,
        })
        .await
        .unwrap();
    let all = store.list_schedules().await.unwrap();
    assert_eq!(all.len(), 1);
    let s = &all[0];
    assert_eq!(
        (
            s.cron.as_str(),
            s.timezone.as_str(),
            &s.job,
            s.paused,
            s.next_run_ms
        ),
        ("* * * * *", "Europe/Paris", &body, false, T0 + minute)
    );
    assert!(s.last_jobs.is_empty() && s.claimed_ms.is_none());

    assert!(store
        .claim_tick(tick(T0 + minute, T0 + 2 * minute), fired("j1", T0 + minute))
        .await
        .unwrap());
    // Another coordinator that read the same tick claims nothing.
    assert!(!store
        .claim_tick(tick(T0 + minute, T0 + 2 * minute), fired("j2", T0 + minute))
        .await
        .unwrap());
    let s = store.list_schedules().await.unwrap().remove(0);
    assert_eq!(s.next_run_ms, T0 + 2 * minute);
    assert_eq!(s.last_jobs, vec!["j1".to_string()]);
    assert_eq!(s.claimed_ms, Some(T0 + minute + 5));
    let j1 = store.job("j1").await.unwrap().unwrap();
    assert_eq!(j1.state, JobState::Waiting);
    assert_eq!(j1.schedule.as_deref(), Some("s"));
    assert!(store.job("j2").await.unwrap().is_none());
    assert!(!store
        .create_fired_job("s", fired("j1", T0 + minute))
        .await
        .unwrap());

    // Paused: no tick fires. Resumed further on: the old tick is gone.
    assert!(store.pause_schedule("s", true, None).await.unwrap());
    assert!(!store
        .claim_tick(tick(T0 + 2 * minute, T0 + 3 * minute), fired("j3", T0))
        .await
        .unwrap());
    let paused = &store.list_schedules().await.unwrap()[0];
    assert!(paused.paused);
    assert_eq!(
        paused.next_run_ms,
        T0 + 2 * minute,
        "a pause keeps the next tick"
    );
    assert!(store
        .pause_schedule("s", false, Some(T0 + 3 * minute))
        .await
        .unwrap());
    // A resume computed before a claim and stored after it does not undo it.
    assert!(store
        .pause_schedule("s", false, Some(T0 + minute))
        .await
        .unwrap());
    assert_eq!(
        store.list_schedules().await.unwrap()[0].next_run_ms,
        T0 + 3 * minute,
        "a resume never moves the next tick back"
    );
    assert!(!store
        .claim_tick(tick(T0 + 2 * minute, T0 + 3 * minute), fired("j3", T0))
        .await
        .unwrap());
    let claims = LAST_JOBS as u64 + 2;
    for i in 0..claims {
        let at = T0 + (3 + i) * minute;
        assert!(store
            .claim_tick(tick(at, at + minute), fired(&format!("k{i}"), at))
            .await
            .unwrap());
    }
    let s = store.list_schedules().await.unwrap().remove(0);
    assert_eq!(s.last_jobs.len(), LAST_JOBS);
    assert_eq!(s.last_jobs[0], format!("k{}", claims - 1));

    // A claimer that died before creating its job: created once, later.
    assert!(store
        .create_fired_job("s", fired("late", T0))
        .await
        .unwrap());
    assert_eq!(
        store
            .job("late")
            .await
            .unwrap()
            .unwrap()
            .schedule
            .as_deref(),
        Some("s")
    );

    assert!(!store.pause_schedule("nope", true, None).await.unwrap());
    assert!(store.delete_schedule("s").await.unwrap());
    assert!(!store.delete_schedule("s").await.unwrap());
    assert!(store.list_schedules().await.unwrap().is_empty());
    // Its jobs stay.
    assert!(store.job("j1").await.unwrap().is_some());
}
