//! The authorisation matrix: every route the router serves, called by every
//! kind of caller, answers with exactly the status its access class says,
//! and every refusal is a JSON error that says what to do.
//!
//! The routes come from the router's own table
//! (`musketeer_coordinator::api::routes`), and this file keeps its own list
//! of who may call what: a route added without a row here fails the test.

use std::collections::BTreeSet;

use musketeer_coordinator::api::{routes, Access};
use musketeer_coordinator::releases::SigningKey;
use musketeer_tasks::protocol::{encode, ResultBatch};
use musketeer_tests::{capacity, wasm, Coordinator, CoordinatorOptions, ManualAgent};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Who may call each route, written down independently of the code.
const MATRIX: [(&str, &str, Access); 46] = [
    ("GET", "/", Access::Public),
    ("GET", "/dashboard/app.js", Access::Public),
    ("GET", "/dashboard/app.css", Access::Public),
    ("POST", "/login", Access::Public),
    ("POST", "/logout", Access::Public),
    ("GET", "/dashboard/snapshot", Access::Dashboard),
    ("GET", "/dashboard/events", Access::Dashboard),
    ("GET", "/healthz", Access::Public),
    ("GET", "/metrics", Access::Public),
    ("GET", "/v1/openapi.json", Access::Public),
    ("POST", "/v1/jobs", Access::Admin),
    ("GET", "/v1/jobs", Access::Read),
    ("POST", "/v1/jobs/wordcount", Access::Admin),
    ("GET", "/v1/jobs/{id}", Access::Read),
    ("DELETE", "/v1/jobs/{id}", Access::Admin),
    ("POST", "/v1/jobs/{id}/retry", Access::Admin),
    ("GET", "/v1/jobs/{id}/result", Access::Read),
    ("GET", "/v1/jobs/{id}/why", Access::Read),
    ("POST", "/v1/schedules", Access::Admin),
    ("GET", "/v1/schedules", Access::Read),
    ("POST", "/v1/schedules/{id}/pause", Access::Admin),
    ("POST", "/v1/schedules/{id}/resume", Access::Admin),
    ("DELETE", "/v1/schedules/{id}", Access::Admin),
    ("POST", "/v1/workflows", Access::Admin),
    ("GET", "/v1/workflows/{id}", Access::Read),
    ("DELETE", "/v1/workflows/{id}", Access::Admin),
    ("POST", "/v1/tokens", Access::Admin),
    ("GET", "/v1/tokens", Access::Read),
    ("DELETE", "/v1/tokens/{id}", Access::Admin),
    ("GET", "/v1/agents", Access::Read),
    ("DELETE", "/v1/agents/{id}", Access::Admin),
    ("POST", "/v1/agents/{id}/drain", Access::Admin),
    ("POST", "/v1/agent/enrol", Access::JoinToken),
    ("POST", "/v1/agent/lease", Access::Agent),
    ("POST", "/v1/agent/results", Access::Agent),
    ("POST", "/v1/agent/heartbeat", Access::Agent),
    ("POST", "/v1/agent/release", Access::Agent),
    ("GET", "/v1/agent/self", Access::Agent),
    ("GET", "/v1/releases", Access::Read),
    ("POST", "/v1/releases/{target}/{version}", Access::Admin),
    ("GET", "/v1/agent/update", Access::Agent),
    ("GET", "/v1/agent/update/{target}/{version}", Access::Agent),
    ("POST", "/v1/modules", Access::Admin),
    ("GET", "/v1/modules", Access::Read),
    ("DELETE", "/v1/modules/{id}", Access::Admin),
    ("GET", "/v1/agent/modules/{id}", Access::Agent),
];

/// The target and version of the release published while setting up, and
/// of the one the matrix publishes.
const TARGET: &str = "x86_64-unknown-linux-musl";
const PUBLISHED: &str = "1.0.0";
const NEXT: &str = "1.0.1";

/// A second valid module (the echo with one more function), to delete.
fn spare_module() -> Vec<u8> {
    wasm::module_with(&format!("{} (func $spare)", wasm::ECHO_MAP))
}

/// The kinds of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    NoToken,
    Malformed,
    UnknownToken,
    UnknownAgent,
    Removed,
    Agent,
    Admin,
    /// Holds a valid join token, which only enrols.
    Join,
    /// Holds a viewer token, which only reads.
    Viewer,
    /// Holds a revoked viewer token.
    RevokedViewer,
}

const CALLERS: [Caller; 10] = [
    Caller::NoToken,
    Caller::Malformed,
    Caller::UnknownToken,
    Caller::UnknownAgent,
    Caller::Removed,
    Caller::Agent,
    Caller::Admin,
    Caller::Join,
    Caller::Viewer,
    Caller::RevokedViewer,
];

/// The secrets of one cluster, and the objects the paths name.
struct World {
    c: Coordinator,
    agent: ManualAgent,
    removed: ManualAgent,
    revoked_join_token: String,
    viewer_token: String,
    revoked_viewer_token: String,
    /// A finished job (its result exists).
    done_job: String,
    /// A queued job to cancel.
    queued_job: String,
    /// A failed job to retry.
    failed_job: String,
    /// A workflow to look at and cancel (its one step stays queued).
    workflow: String,
    /// A schedule to pause, resume and delete (it fires in a year).
    schedule: String,
    /// A token to revoke.
    spare_token_id: String,
    /// Agents to drain and to remove.
    drain_me: String,
    remove_me: String,
    /// The operator's release key (kept off the coordinator, as in life).
    release_key: SigningKey,
    /// A stored module that agents fetch, and one to delete.
    module: String,
    spare_module: String,
}

impl World {
    async fn new() -> World {
        let release_key = SigningKey::generate().unwrap();
        let c = Coordinator::start(CoordinatorOptions {
            // Ten kinds of caller on every route make a few hundred refusals
            // from one address in a second, past its rate limit's burst: the
            // limit is tested on its own (`security.rs`), here it would only
            // turn refusals into 429s.
            extra: vec![
                "--release-key".into(),
                release_key.public().to_hex(),
                "--address-requests-per-s".into(),
                "0".into(),
            ],
            ..CoordinatorOptions::default()
        })
        .unwrap();
        let admin = c.client();
        let agent = c.enrol_manual().await.unwrap();
        let removed = c.enrol_manual().await.unwrap();
        let drain_me = c.enrol_manual().await.unwrap().id;
        let remove_me = c.enrol_manual().await.unwrap().id;
        admin
            .send(admin.request(Method::DELETE, &format!("/v1/agents/{}", removed.id)))
            .await
            .unwrap();

        // A job run to the end by hand, over the real protocol.
        let done_job = c
            .submit(&json!({"kernel": "factorial", "n": 30}))
            .await
            .unwrap();
        let leased = c
            .lease_manual(&agent, capacity(std::env::consts::ARCH, &[]), 64)
            .await
            .unwrap();
        assert!(!leased.tasks.is_empty());
        c.complete_manual(&agent, &leased).await.unwrap();
        let status = c
            .wait(&done_job, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(status["state"], "succeeded", "{status}");

        // A job of one attempt that the manual agent fails: to retry.
        let failed_job = c
            .submit(&json!({"kernel": "factorial", "n": 30, "max_attempts": 1, "agent": agent.id}))
            .await
            .unwrap();
        let leased = c
            .lease_manual(&agent, capacity(std::env::consts::ARCH, &[]), 64)
            .await
            .unwrap();
        assert!(!leased.tasks.is_empty());
        c.fail_manual(&agent, &leased, "made to fail")
            .await
            .unwrap();
        let status = c
            .wait(&failed_job, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(status["state"], "failed", "{status}");

        // A job only an agent that does not exist may take: it stays queued.
        let queued_job = c
            .submit(&json!({"kernel": "factorial", "n": 30, "agent": "nobody"}))
            .await
            .unwrap();

        let workflow = c
            .submit_workflow(&json!({"steps": [
                {"name": "a", "job": {"kernel": "factorial", "n": 30, "agent": "nobody"}}
            ]}))
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        let schedule: Value = admin
            .send(admin.request(Method::POST, "/v1/schedules").json(&json!({
                "cron": "0 0 1 1 *", "job": {"kernel": "factorial", "n": 10}
            })))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let schedule = schedule["id"].as_str().unwrap().to_string();

        let make_token = || async {
            let v: Value = admin
                .send(admin.request(Method::POST, "/v1/tokens"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["token"].as_str().unwrap().to_string(),
            )
        };
        let (spare_token_id, _) = make_token().await;
        let make_viewer = || async {
            let v: Value = admin
                .send(
                    admin
                        .request(Method::POST, "/v1/tokens")
                        .json(&json!({"role": "viewer"})),
                )
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["role"], "viewer", "{v}");
            (
                v["id"].as_str().unwrap().to_string(),
                v["token"].as_str().unwrap().to_string(),
            )
        };
        let (_, viewer_token) = make_viewer().await;
        let (revoked_viewer_id, revoked_viewer_token) = make_viewer().await;
        admin
            .send(admin.request(Method::DELETE, &format!("/v1/tokens/{revoked_viewer_id}")))
            .await
            .unwrap();
        let (revoked_id, revoked_join_token) = make_token().await;
        admin
            .send(admin.request(Method::DELETE, &format!("/v1/tokens/{revoked_id}")))
            .await
            .unwrap();
        // A release to ask for and download.
        let binary = b"an agent build".to_vec();
        let info = release_key.sign(TARGET, PUBLISHED, &binary).unwrap();
        admin
            .send(
                admin
                    .request(Method::POST, &format!("/v1/releases/{TARGET}/{PUBLISHED}"))
                    .header("x-musketeer-signature", info.signature)
                    .body(binary),
            )
            .await
            .unwrap();
        // Modules to fetch and to delete.
        let module = wasm::push(&c, wasm::echo()).await.unwrap();
        let spare_module = wasm::push(&c, spare_module()).await.unwrap();
        World {
            module,
            spare_module,
            release_key,
            c,
            agent,
            removed,
            revoked_join_token,
            viewer_token,
            revoked_viewer_token,
            done_job,
            queued_job,
            failed_job,
            workflow,
            schedule,
            spare_token_id,
            drain_me,
            remove_me,
        }
    }

    /// The bearer token a caller sends, if any.
    fn bearer(&self, caller: Caller) -> Option<String> {
        match caller {
            Caller::NoToken => None,
            Caller::Malformed => Some("%%% not a token %%%".into()),
            // Shaped like the admin token, but not it.
            Caller::UnknownToken => Some("Q".repeat(self.c.admin_token.len())),
            Caller::UnknownAgent => Some(format!("MSKAGT-0123456789abcdef-{}", "Q".repeat(40))),
            Caller::Removed => Some(self.removed.credential.clone()),
            Caller::Agent => Some(self.agent.credential.clone()),
            Caller::Admin => Some(self.c.admin_token.clone()),
            Caller::Join => Some(self.c.join_token.clone()),
            Caller::Viewer => Some(self.viewer_token.clone()),
            Caller::RevokedViewer => Some(self.revoked_viewer_token.clone()),
        }
    }

    /// The join token a caller puts in an enrolment body.
    fn join_token(&self, caller: Caller) -> Option<String> {
        match caller {
            Caller::NoToken => None,
            Caller::Malformed => Some("MSKTKN-1-nonsense".into()),
            Caller::UnknownToken => {
                let (prefix, _) = self.c.join_token.rsplit_once('-').unwrap();
                Some(format!("{prefix}-{}", "Q".repeat(32)))
            }
            Caller::UnknownAgent => Some(format!("MSKAGT-0123456789abcdef-{}", "Q".repeat(40))),
            Caller::Removed => Some(self.revoked_join_token.clone()),
            Caller::Agent => Some(self.agent.credential.clone()),
            Caller::Admin => Some(self.c.admin_token.clone()),
            Caller::Join => Some(self.c.join_token.clone()),
            Caller::Viewer => Some(self.viewer_token.clone()),
            Caller::RevokedViewer => Some(self.revoked_viewer_token.clone()),
        }
    }

    /// The concrete path of a route: real ids, so a 404 cannot hide a
    /// missing check.
    fn path(&self, template: &str) -> String {
        match template {
            "/v1/jobs/{id}" | "/v1/jobs/{id}/result" | "/v1/jobs/{id}/why" => {
                template.replace("{id}", &self.done_job)
            }
            "/v1/jobs/{id}/retry" => template.replace("{id}", &self.failed_job),
            "/v1/tokens/{id}" => template.replace("{id}", &self.spare_token_id),
            "/v1/workflows/{id}" => template.replace("{id}", &self.workflow),
            "/v1/schedules/{id}" | "/v1/schedules/{id}/pause" | "/v1/schedules/{id}/resume" => {
                template.replace("{id}", &self.schedule)
            }
            "/v1/agents/{id}/drain" => template.replace("{id}", &self.drain_me),
            "/v1/agents/{id}" => template.replace("{id}", &self.remove_me),
            "/v1/releases/{target}/{version}" => format!("/v1/releases/{TARGET}/{NEXT}"),
            "/v1/agent/update/{target}/{version}" => {
                format!("/v1/agent/update/{TARGET}/{PUBLISHED}")
            }
            "/v1/agent/update" => format!("/v1/agent/update?target={TARGET}"),
            "/v1/agent/modules/{id}" => template.replace("{id}", &self.module),
            "/v1/modules/{id}" => template.replace("{id}", &self.spare_module),
            p => p.to_string(),
        }
    }

    /// A well-formed request of `route` by `caller`.
    fn request(&self, method: &str, template: &str, caller: Caller) -> reqwest::RequestBuilder {
        let token = match template {
            "/v1/agent/enrol" => String::new(),
            _ => self.bearer(caller).unwrap_or_default(),
        };
        let client = self.c.client_with_token(&token);
        let mut path = self.path(template);
        if method == "DELETE" && template == "/v1/jobs/{id}" {
            path = format!("/v1/jobs/{}", self.queued_job);
        }
        let req = client.request(Method::from_bytes(method.as_bytes()).unwrap(), &path);
        let cap = capacity(std::env::consts::ARCH, &[]);
        match (method, template) {
            ("POST", "/v1/jobs") => req.json(&json!({"kernel": "factorial", "n": 10})),
            ("POST", "/v1/jobs/wordcount") => req.body("the cat and the hat"),
            // Whoever calls, the form holds the admin token: a login is
            // public, and its own refusals are tested in `dashboard.rs`.
            ("POST", "/login") => req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={}", self.c.admin_token)),
            ("POST", "/v1/schedules") => req.json(&json!({
                "cron": "0 0 1 1 *", "job": {"kernel": "factorial", "n": 10}
            })),
            ("POST", "/v1/workflows") => req.json(&json!({"steps": [
                {"name": "a", "job": {"kernel": "factorial", "n": 10}}
            ]})),
            ("POST", "/v1/agent/enrol") => match self.join_token(caller) {
                Some(t) => req.json(&json!({"token": t, "capacity": cap})),
                None => req.json(&json!({"capacity": cap})),
            },
            ("POST", "/v1/agent/lease") => {
                req.json(&json!({"max_work": 1000, "max_tasks": 1, "wait_ms": 0, "capacity": cap}))
            }
            ("POST", "/v1/agent/results") => req
                .header("content-type", "application/x-musketeer-postcard")
                .body(encode(&ResultBatch::default()).unwrap()),
            ("POST", "/v1/modules") => req
                .header("content-type", "application/wasm")
                .body(wasm::echo()),
            ("POST", "/v1/agent/heartbeat") => req.json(&json!({"running": []})),
            ("POST", "/v1/agent/release") => req.json(&json!({"tasks": []})),
            ("POST", "/v1/releases/{target}/{version}") => {
                let binary = b"the next agent build".to_vec();
                let info = self.release_key.sign(TARGET, NEXT, &binary).unwrap();
                req.header("x-musketeer-signature", info.signature)
                    .body(binary)
            }
            _ => req,
        }
    }
}

/// The status a caller must get from a route of `access`.
fn expected(access: Access, caller: Caller) -> StatusCode {
    use Caller::*;
    match (access, caller) {
        (Access::Public, _) => StatusCode::OK,
        (Access::Admin, Admin) => StatusCode::OK,
        (Access::Read | Access::Dashboard, Admin | Viewer) => StatusCode::OK,
        // Anything shaped like an agent credential, valid or not, is told
        // that agents have no business here; a viewer, that it only reads.
        (Access::Admin | Access::Read | Access::Dashboard, UnknownAgent | Removed | Agent) => {
            StatusCode::FORBIDDEN
        }
        (Access::Admin, Viewer) => StatusCode::FORBIDDEN,
        (Access::Admin | Access::Read | Access::Dashboard, _) => StatusCode::UNAUTHORIZED,
        (Access::Agent, Agent) => StatusCode::OK,
        (Access::Agent, _) => StatusCode::UNAUTHORIZED,
        (Access::JoinToken, Join) => StatusCode::OK,
        // No token at all is a malformed body.
        (Access::JoinToken, NoToken) => StatusCode::BAD_REQUEST,
        (Access::JoinToken, _) => StatusCode::UNAUTHORIZED,
    }
}

/// Checks one refusal's body: the JSON error shape, a stable code, a message
/// that says what to do.
fn check_error(what: &str, status: StatusCode, body: &[u8]) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("{what}: {status} with a body that is not JSON ({e}): {body:?}")
    });
    let code = v["error"]["code"].as_str().unwrap_or("");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(!code.is_empty(), "{what}: no error code in {v}");
    assert!(
        message.len() > 20,
        "{what}: the message should say what is wrong: {v}"
    );
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // "what is wrong: what to do"
        assert!(message.contains(':'), "{what}: say what to do: {v}");
    }
    let codes: &[&str] = match status {
        StatusCode::UNAUTHORIZED => &["unauthorized", "invalid_token"],
        StatusCode::FORBIDDEN => &["forbidden"],
        _ => &[code],
    };
    assert!(codes.contains(&code), "{what}: code {code} for {status}");
}

#[test]
fn the_matrix_lists_every_route_exactly_once() {
    let served: BTreeSet<(&str, &str)> = routes().iter().map(|r| (r.method, r.path)).collect();
    let listed: BTreeSet<(&str, &str)> = MATRIX.iter().map(|(m, p, _)| (*m, *p)).collect();
    assert_eq!(listed.len(), MATRIX.len(), "a route is listed twice");
    assert_eq!(
        served, listed,
        "the router and this matrix disagree: give every new route a row"
    );
    for r in routes() {
        let (_, _, access) = MATRIX
            .iter()
            .find(|(m, p, _)| (*m, *p) == (r.method, r.path))
            .unwrap();
        assert_eq!(
            r.access, *access,
            "{} {} is declared {:?} in the router",
            r.method, r.path, r.access
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_against_every_caller() {
    let w = World::new().await;
    // Refusals first, so the state they must not change is checked before
    // the admin's own calls change it.
    let mut refusals = 0;
    for caller in CALLERS {
        for (method, template, access) in MATRIX {
            let want = expected(access, caller);
            if want.is_success() {
                continue;
            }
            let what = format!("{method} {template} by {caller:?}");
            let resp = w.request(method, template, caller).send().await.unwrap();
            let status = resp.status();
            let body = resp.bytes().await.unwrap();
            assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
            check_error(&what, status, &body);
            refusals += 1;
        }
    }
    assert!(refusals > 80, "{refusals} refusals checked");

    // Nothing a refused caller asked for happened.
    let admin = w.c.client();
    let queued = admin
        .get_json(&format!("/v1/jobs/{}", w.queued_job))
        .await
        .unwrap();
    assert_eq!(queued["state"], "queued", "{queued}");
    let failed = admin
        .get_json(&format!("/v1/jobs/{}", w.failed_job))
        .await
        .unwrap();
    assert_eq!(failed["state"], "failed", "not retried: {failed}");
    let jobs = admin.get_json("/v1/jobs").await.unwrap();
    // The three jobs, and the workflow's one step.
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 4, "{jobs}");
    let tokens = admin.get_json("/v1/tokens").await.unwrap();
    let spare = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == w.spare_token_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(spare["revoked"], false, "{spare}");
    assert!(
        !tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "viewer" && t["uses"] != 0),
        "a viewer token enrolled an agent: {tokens}"
    );
    let agents = w.c.agents().await.unwrap();
    // Four enrolled by hand, one removed; enrolments with bad tokens made none.
    assert_eq!(agents.len(), 4, "{agents:?}");
    for id in [&w.drain_me, &w.remove_me] {
        let a = agents.iter().find(|a| a["id"] == id.as_str()).unwrap();
        assert_eq!(a["state"], "active", "{a}");
    }
    let modules = musketeer_client::list_modules(&admin).await.unwrap();
    assert_eq!(
        modules.len(),
        2,
        "refused callers neither added nor deleted one: {modules:?}"
    );

    // Then the callers each route is for.
    for caller in CALLERS {
        for (method, template, access) in MATRIX {
            if !expected(access, caller).is_success() {
                continue;
            }
            let what = format!("{method} {template} by {caller:?}");
            let resp = w.request(method, template, caller).send().await.unwrap();
            let status = resp.status();
            if template == "/dashboard/events" {
                // A stream that never ends: its status and type say enough.
                assert_eq!(status, StatusCode::OK, "{what}");
                let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
                assert!(kind.starts_with("text/event-stream"), "{what}: {kind}");
                continue;
            }
            let body = resp.bytes().await.unwrap();
            assert!(
                status.is_success(),
                "{what}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // The one enrolment with the right token made an agent.
    assert_eq!(w.c.agents().await.unwrap().len(), 5);
    let result = admin
        .get_json(&format!("/v1/jobs/{}/result", w.done_job))
        .await
        .unwrap();
    assert_eq!(
        result["value"].as_str().unwrap(),
        musketeer_tests::reference::factorial(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_caller_with_a_bad_body_gets_a_clear_4xx() {
    let w = World::new().await;
    let bad: [(&str, &str, Caller, &[u8]); 8] = [
        ("POST", "/v1/jobs", Caller::Admin, b"{\"kernel\":"),
        ("POST", "/v1/modules", Caller::Admin, b"not a module"),
        ("POST", "/v1/agent/enrol", Caller::Agent, b"[]"),
        (
            "POST",
            "/v1/agent/lease",
            Caller::Agent,
            b"{\"max_work\":-1}",
        ),
        (
            "POST",
            "/v1/agent/results",
            Caller::Agent,
            b"\xff\xff\xff\xff\xff",
        ),
        ("POST", "/v1/agent/heartbeat", Caller::Agent, b"not json"),
        ("POST", "/v1/agent/release", Caller::Agent, b"{\"tasks\":7}"),
        ("POST", "/v1/agents/{id}/drain", Caller::Admin, b""),
    ];
    for (method, template, caller, body) in bad {
        let what = format!("{method} {template} with a bad body");
        let token = w.bearer(caller).unwrap();
        let client = w.c.client_with_token(&token);
        let mut path = w.path(template);
        if template.contains("{id}") {
            // A path naming nothing is the path's bad input.
            path = path.replace(&w.drain_me, "no-such-agent");
        }
        let resp = client
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &path)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        assert!(
            status.is_client_error()
                && status != StatusCode::UNAUTHORIZED
                && status != StatusCode::FORBIDDEN,
            "{what}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        check_error(&what, status, &bytes);
    }
}
