//! Delays and expiry end to end: a countdown honoured to the lease
//! (measured with a hand-driven agent that asks every 50 ms), a job never
//! leased by its `expires` ends `expired` while one leased in time runs
//! on, and a result past its TTL answers `410 result_expired` and its
//! bytes are gone from the store, on both stores.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use musketeer_client::ClientError;
use musketeer_coordinator::timing::rfc3339;
use musketeer_tests::redis::RedisServer;
use musketeer_tests::{capacity, Coordinator, CoordinatorOptions};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn arch() -> Value {
    capacity(std::env::consts::ARCH, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_countdown_is_honoured_to_the_lease() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let agent = c.enrol_manual().await.unwrap();
    let id = c
        .submit(&json!({"kernel": "fibonacci", "n": [10, 20, 30], "countdown_s": 3}))
        .await
        .unwrap();
    let status = c.job_status(&id).await.unwrap();
    let created = status["created_ms"].as_u64().unwrap();
    let not_before = status["not_before_ms"].as_u64().expect("not_before_ms");
    assert_eq!(not_before - created, 3000, "{status}");
    let mut refused = 0;
    let (asked, leased) = loop {
        let asked = now_ms();
        let got = c.lease_manual(&agent, arch(), 10).await.unwrap();
        if !got.tasks.is_empty() {
            break (asked, got);
        }
        refused += 1;
        assert!(now_ms() < not_before + 10_000, "never leased");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The coordinator stamps the job's start with the lease's own time.
    let status = c.job_status(&id).await.unwrap();
    let started = status["started_ms"].as_u64().unwrap();
    println!(
        "countdown 3000 ms: {refused} lease calls refused; the first granted was asked \
         {} ms after submission and the job started {} ms after it (not_before + {} ms)",
        asked.saturating_sub(created),
        started - created,
        started - not_before
    );
    assert!(
        started >= not_before,
        "leased {} ms early",
        not_before - started
    );
    assert!(
        refused >= 20,
        "only {refused} calls were made before the countdown ran out"
    );
    assert!(
        started - not_before < 1000,
        "the countdown held the job {} ms too long",
        started - not_before
    );
    c.complete_manual(&agent, &leased).await.unwrap();
    let result = c.result(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(result["values"], json!(["55", "6765", "832040"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_never_leased_by_its_expiry_ends_expired() {
    // Leases that outlive the wait: the hand-driven agent sends no heartbeats.
    let c = Coordinator::start(CoordinatorOptions {
        lease_ttl: 20.0,
        ..CoordinatorOptions::default()
    })
    .unwrap();
    let agent = c.enrol_manual().await.unwrap();
    let expires = now_ms() + 2_000;
    // One job is leased in time and finishes after its expiry; the other,
    // never leased, expires.
    let leased_in_time = c
        .submit(&json!({"kernel": "fibonacci", "n": [10], "expires": rfc3339(expires)}))
        .await
        .unwrap();
    let batch = c.lease_manual(&agent, arch(), 1).await.unwrap();
    assert_eq!(batch.tasks.len(), 1);
    let never = c
        .submit(&json!({"kernel": "fibonacci", "n": [20], "expires": rfc3339(expires)}))
        .await
        .unwrap();
    let status = c.wait(&never, Duration::from_secs(30)).await.unwrap();
    assert_eq!(status["state"], "expired", "{status}");
    let finished = status["finished_ms"].as_u64().unwrap();
    println!(
        "expires at {}: the job was expired {} ms after it",
        rfc3339(expires),
        finished - expires
    );
    assert!(
        finished >= expires,
        "expired {} ms early",
        expires - finished
    );
    assert!(
        status["error"].as_str().unwrap().contains("`expires`"),
        "{status}"
    );
    assert!(c
        .lease_manual(&agent, arch(), 10)
        .await
        .unwrap()
        .tasks
        .is_empty());
    match musketeer_client::result_bytes(&c.client(), &never, "json").await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status.as_u16(), code.as_str()), (409, "not_finished"))
        }
        other => panic!("the result of an expired job answered {other:?}"),
    }
    c.complete_manual(&agent, &batch).await.unwrap();
    let result = c
        .result(&leased_in_time, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(result["values"], json!(["55"]));
}

/// Runs a job with a 2 s result TTL through a hand-driven agent, and
/// checks that its result answers 410 from then on and that
/// `bytes_in_store` of it falls to 0 soon after.
async fn result_ttl_is_kept(c: &Coordinator, bytes_in_store: impl Fn(&str) -> Result<i64>) {
    let agent = c.enrol_manual().await.unwrap();
    let id = c
        .submit(&json!({"kernel": "fibonacci", "n": [1000, 2000], "result_ttl_s": 2}))
        .await
        .unwrap();
    let batch = c.lease_manual(&agent, arch(), 10).await.unwrap();
    c.complete_manual(&agent, &batch).await.unwrap();
    let result = c.result(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(result["values"].as_array().unwrap().len(), 2);
    assert!(bytes_in_store(&id).unwrap() > 400, "the result is stored");
    let status = c.job_status(&id).await.unwrap();
    let finished = status["finished_ms"].as_u64().unwrap();
    let gone_at = status["result_expires_ms"]
        .as_u64()
        .expect("result_expires_ms");
    assert_eq!(gone_at - finished, 2000, "{status}");
    tokio::time::sleep(Duration::from_millis(gone_at.saturating_sub(now_ms()) + 10)).await;
    match musketeer_client::result_bytes(&c.client(), &id, "json").await {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status.as_u16(), code.as_str()), (410, "result_expired"));
            assert!(message.contains("result_ttl_s"), "{message}");
        }
        other => panic!("a result past its TTL answered {other:?}"),
    }
    let end = Instant::now() + Duration::from_secs(15);
    while bytes_in_store(&id).unwrap() > 0 {
        assert!(Instant::now() < end, "the result's bytes are still stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "result deleted from the store {} ms after its TTL ran out",
        now_ms() - gone_at
    );
    // The job itself is kept, succeeded.
    assert_eq!(c.job_status(&id).await.unwrap()["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_past_its_ttl_is_gone_from_the_embedded_store() {
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();
    let db = c.data_dir().join(musketeer_coordinator::server::DB_FILE);
    result_ttl_is_kept(&c, |id| {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(conn.query_row(
            "SELECT COALESCE(length(result), 0) FROM jobs WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_past_its_ttl_is_gone_from_redis() {
    let redis = RedisServer::start().unwrap();
    let c = Coordinator::start(CoordinatorOptions {
        extra: vec!["--redis".into(), redis.url()],
        ..CoordinatorOptions::default()
    })
    .unwrap();
    result_ttl_is_kept(&c, |id| {
        redis.integer_command(&["HSTRLEN", &format!("{{musketeer:j:{id}}}:m"), "result"])
    })
    .await;
}
