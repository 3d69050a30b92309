//! The router in-process, over a real SQLite store in a temporary
//! directory: requests go through `ServiceExt::oneshot`, without TLS or a
//! socket, to check how errors map to statuses and bodies.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::clock::ManualClock;
use crate::store::SqliteStore;

const ADMIN: &str = "admin-secret";

struct Fixture {
    router: Router,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let store = Arc::new(SqliteStore::open(&db).unwrap());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let scheduler = Scheduler::with_clock(store, Duration::from_secs(10), clock);
    let state = Arc::new(AppState {
        scheduler,
        admin_token_hash: musketeer_tasks::token::secret_hash(ADMIN),
        pin: CaPin::Public,
        ca_pem: String::new(),
        max_upload: 1 << 20,
        limits: rate_limit::RateLimiters::new(Default::default()),
        releases: Arc::new(crate::releases::Releases::open(dir.path(), None).unwrap()),
        space: Arc::new(crate::space::Space::new(dir.path(), Some(0), true).unwrap()),
    });
    Fixture {
        router: router(state),
        db,
        _dir: dir,
    }
}

/// Sends one request as the admin from 127.0.0.1; returns the status and
/// the JSON body.
async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    let response = f.router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn bad_job_bodies_map_to_4xx_with_their_codes() {
    let f = fixture();
    let (status, body) = call(&f, "POST", "/v1/jobs", "{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "malformed_json");
    let (status, body) = call(&f, "POST", "/v1/jobs", r#"{"kernel":"sort"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "unknown_kernel");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("fibonacci, factorial, matmul, wordcount"),
        "{message}"
    );
    let (status, body) = call(&f, "GET", "/v1/jobs/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = call(&f, "GET", "/v1/nothing", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
}

#[tokio::test]
async fn a_job_is_accepted_and_listed() {
    let f = fixture();
    let (status, body) = call(&f, "POST", "/v1/jobs", r#"{"kernel":"factorial","n":50}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = call(&f, "GET", &format!("/v1/jobs/{id}"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "queued");
}

/// A store failure is a 500 whose body says where to look, never the
/// database driver's text.
#[tokio::test]
async fn a_store_failure_is_a_500_without_the_drivers_text() {
    let f = fixture();
    // Break the store under the coordinator: its next read fails in SQLite.
    rusqlite::Connection::open(&f.db)
        .unwrap()
        .execute_batch("DROP TABLE jobs;")
        .unwrap();
    let (status, body) = call(&f, "GET", "/v1/jobs", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "store_error");
    assert_eq!(body["error"]["message"], error::STORE_ERROR_MESSAGE);
    let text = body.to_string();
    assert!(
        !text.contains("jobs") && !text.to_lowercase().contains("sqlite"),
        "{text}"
    );
}
