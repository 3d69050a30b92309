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
    fixture_with(false)
}

fn fixture_with(public_dashboard: bool) -> Fixture {
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
        public_dashboard,
    });
    Fixture {
        router: router(state),
        db,
        _dir: dir,
    }
}

/// Sends a request from 127.0.0.1; returns the response's status, headers
/// and body.
async fn send(f: &Fixture, mut req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    let response = f.router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes.to_vec())
}

/// A request with these headers and no body.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
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

#[tokio::test]
async fn why_a_job_waits_is_served_for_known_jobs() {
    let f = fixture();
    let (status, body) = call(
        &f,
        "POST",
        "/v1/jobs",
        r#"{"kernel":"factorial","n":50,"labels":{"gpu":"yes"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = call(&f, "GET", &format!("/v1/jobs/{id}/why"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["state"], "queued");
    assert_eq!(body["reasons"][0]["code"], "no_agent", "{body}");
    assert!(body["waiting"].as_u64().unwrap() >= 1, "{body}");
    let (status, body) = call(&f, "GET", "/v1/jobs/nope/why", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

/// Makes a viewer token as the admin; returns (id, token).
async fn viewer_token(f: &Fixture) -> (String, String) {
    let (status, body) = call(f, "POST", "/v1/tokens", r#"{"role":"viewer"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["role"], "viewer");
    let token = body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("MSKVWR-"), "{token}");
    (body["id"].as_str().unwrap().to_string(), token)
}

#[tokio::test]
async fn a_viewer_token_reads_and_is_refused_every_change() {
    let f = fixture();
    let (id, token) = viewer_token(&f).await;
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    for path in [
        "/v1/jobs",
        "/v1/agents",
        "/v1/tokens",
        "/dashboard/snapshot",
    ] {
        let (status, _, body) = send(&f, request("GET", path, &auth)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, _, body) = send(&f, request("POST", "/v1/tokens", &auth)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "forbidden");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only reads"),
        "{v}"
    );
    // Revoked, it reads nothing either.
    let (status, _) = call(&f, "DELETE", &format!("/v1/tokens/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&f, request("GET", "/v1/jobs", &auth)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The session cookie and the CSRF token of a login with `token`.
async fn login(f: &Fixture, token: &str) -> (String, String) {
    let mut req = request(
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    *req.body_mut() = Body::from(format!("token={token}"));
    let (status, headers, _) = send(f, req).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers["set-cookie"].to_str().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let (status, _, page) = send(f, request("GET", "/", &[("cookie", &cookie)])).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string();
    (cookie, csrf)
}

#[tokio::test]
async fn a_dashboard_session_reads_and_acts_only_with_its_csrf_token() {
    let f = fixture();
    let (_, body) = call(&f, "POST", "/v1/jobs", r#"{"kernel":"factorial","n":50}"#).await;
    let job = format!("/v1/jobs/{}", body["id"].as_str().unwrap());
    // Without a session, the page is the login form.
    let (_, _, page) = send(&f, request("GET", "/", &[])).await;
    assert!(String::from_utf8(page).unwrap().contains("login-form"));
    let (status, _, _) = send(&f, request("GET", "/dashboard/snapshot", &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (cookie, csrf) = login(&f, ADMIN).await;
    assert_eq!(csrf.len(), 32, "{csrf}");
    let (status, _, _) = send(&f, request("GET", &job, &[("cookie", &cookie)])).await;
    assert_eq!(status, StatusCode::OK);
    // A change without the CSRF token, or with another, is refused.
    for given in ["", "00000000000000000000000000000000"] {
        let (status, _, body) = send(
            &f,
            request(
                "DELETE",
                &job,
                &[("cookie", &cookie), ("x-csrf-token", given)],
            ),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, _, _) = send(
        &f,
        request(
            "DELETE",
            &job,
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A viewer's session reads and cannot act, CSRF token or not.
    let (_, token) = viewer_token(&f).await;
    let (cookie, csrf) = login(&f, &token).await;
    let (status, _, snap) = send(
        &f,
        request("GET", "/dashboard/snapshot", &[("cookie", &cookie)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let snap: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(snap["role"], "viewer");
    assert_eq!(snap["jobs"]["items"][0]["state"], "cancelled", "{snap}");
    let (status, _, _) = send(
        &f,
        request(
            "POST",
            "/v1/tokens",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A wrong token is the login page again, 401; logging out clears it.
    let mut req = request(
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    *req.body_mut() = Body::from("token=wrong");
    let (status, _, page) = send(&f, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8(page).unwrap().contains("login-error"));
    let (status, headers, _) = send(&f, request("POST", "/logout", &[])).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // A form posted from another site's page is refused.
    let mut req = request(
        "POST",
        "/login",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "127.0.0.1:7443"),
            ("origin", "https://evil.example"),
        ],
    );
    *req.body_mut() = Body::from(format!("token={ADMIN}"));
    let (status, _, _) = send(&f, req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_public_dashboard_shows_all_but_tokens_and_opens_no_api() {
    let f = fixture_with(true);
    let (status, headers, page) = send(&f, request("GET", "/", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("data-role=\"public\""), "{page}");
    // Only the coordinator's own scripts run: nothing from a CDN.
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!page.contains("https://"), "an outside address in the page");
    let (status, _, snap) = send(&f, request("GET", "/dashboard/snapshot", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let snap: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(snap["role"], "public");
    assert!(snap["tokens"].is_null(), "{snap}");
    assert_eq!(snap["throughput"].as_array().unwrap().len(), 360);
    for path in ["/v1/jobs", "/v1/agents", "/v1/tokens"] {
        let (status, _, _) = send(&f, request("GET", path, &[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn the_event_stream_sends_snapshots() {
    let f = fixture();
    let req = request(
        "GET",
        "/dashboard/events",
        &[("authorization", &format!("Bearer {ADMIN}"))],
    );
    let mut req = req;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
    let response = f.router.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    // Two snapshots: the first at once, the next a second later.
    while text.matches("event: snapshot").count() < 2 {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut body))
                .await
                .expect("a snapshot within 5 s")
                .unwrap()
                .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("\"role\":\"admin\""), "{text}");
}

/// The Grafana dashboard in `packaging/` names only metrics `/metrics`
/// serves, so it cannot drift from them.
#[tokio::test]
async fn the_grafana_dashboard_uses_the_served_metric_names() {
    let f = fixture();
    let (status, _, text) = send(&f, request("GET", "/metrics", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    let dashboard = include_str!("../../../packaging/grafana-dashboard.json");
    let mut names: Vec<&str> = dashboard
        .match_indices("musketeer_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard uses {name}, which /metrics does not serve"
        );
    }
}
