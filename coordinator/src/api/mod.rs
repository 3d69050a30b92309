//! The HTTP API: `/v1/jobs` and `/v1/modules` for submitters, `/v1/tokens`
//! and `/v1/agents` for the operator, `/v1/agent/*` for agents, and `/`, `/healthz`,
//! `/metrics` for people and monitors. Every error is
//! `{"error":{"code":..,"message":..}}`, 4xx for the caller's fault.

mod admin;
mod agent;
mod auth;
mod connection;
mod dashboard;
mod error;
mod jobs;
mod metrics;
mod modules;
mod openapi;
pub mod rate_limit;
mod releases;
mod schedules;
pub mod session;
mod space;
mod workflows;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use musketeer_tasks::token::CaPin;

pub use admin::make_token as admin_make_token;
pub use error::ApiError;
pub use releases::SIGNATURE_HEADER;

use crate::scheduler::Scheduler;

/// Largest JSON job body: a million-index Fibonacci list or a few thousand
/// square matrix rows fit; bigger texts go through the streamed endpoint.
pub const MAX_JOB_BODY: usize = 64 << 20;
/// Largest result batch an agent may upload in one call.
pub const MAX_RESULT_BODY: usize = 512 << 20;
/// Largest control message (lease, heartbeat, release, enrol).
pub const MAX_CONTROL_BODY: usize = 4 << 20;

/// What every handler shares.
pub struct AppState {
    /// Leasing, results, reduce.
    pub scheduler: Arc<Scheduler>,
    /// SHA-256 of the admin token; the token itself is never kept in memory
    /// longer than start-up.
    pub admin_token_hash: [u8; 32],
    /// What join tokens made by this coordinator pin.
    pub pin: CaPin,
    /// The CA agents trust, PEM (sent back at enrolment).
    pub ca_pem: String,
    /// Largest streamed word-count upload.
    pub max_upload: u64,
    /// Request-rate buckets per agent and per client address.
    pub limits: rate_limit::RateLimiters,
    /// Signed agent releases and the key agents learn at enrolment.
    pub releases: Arc<crate::releases::Releases>,
    /// Free disk, the upload reserve, and whether the store is full.
    pub space: Arc<crate::space::Space>,
    /// `serve --public-dashboard`: the dashboard's reads are open to
    /// anyone (the API's are not).
    pub public_dashboard: bool,
}

/// Who may call a route: the authorisation matrix test checks each route
/// against every kind of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone; charged to the caller's address by the rate limit.
    Public,
    /// Anyone holding a join token, which travels in the body.
    JoinToken,
    /// An enrolled agent's credential.
    Agent,
    /// The admin token, or an admin's dashboard session (with its CSRF
    /// token): routes that change state.
    Admin,
    /// The admin token or a viewer token, or a dashboard session of
    /// either: routes that only read.
    Read,
    /// What `Read` allows, and anyone when the coordinator runs with
    /// `--public-dashboard`: the dashboard's live data.
    Dashboard,
}

/// One route of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path, with `{id}` for a parameter.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

type Handler = axum::routing::MethodRouter<Arc<AppState>>;

/// Every route with its handler: the router is built from this table and
/// nothing else, so [`routes`] lists exactly what is served.
fn table() -> Vec<(Route, Handler)> {
    use axum::routing::delete;
    use Access::*;
    let r = |method, path, access, handler| {
        (
            Route {
                method,
                path,
                access,
            },
            handler,
        )
    };
    vec![
        r("GET", "/", Public, get(dashboard::page)),
        r("GET", "/dashboard/app.js", Public, get(dashboard::script)),
        r("GET", "/dashboard/app.css", Public, get(dashboard::style)),
        r("POST", "/login", Public, post(dashboard::login)),
        r("POST", "/logout", Public, post(dashboard::logout)),
        r(
            "GET",
            "/dashboard/snapshot",
            Dashboard,
            get(dashboard::snapshot),
        ),
        r(
            "GET",
            "/dashboard/events",
            Dashboard,
            get(dashboard::events),
        ),
        r("GET", "/healthz", Public, get(metrics::healthz)),
        r("GET", "/metrics", Public, get(metrics::metrics)),
        r("GET", "/v1/openapi.json", Public, get(openapi::document)),
        r("POST", "/v1/jobs", Admin, post(jobs::submit)),
        r("GET", "/v1/jobs", Read, get(jobs::list)),
        r(
            "POST",
            "/v1/jobs/wordcount",
            Admin,
            post(jobs::submit_wordcount_stream),
        ),
        r("GET", "/v1/jobs/{id}", Read, get(jobs::status)),
        r("DELETE", "/v1/jobs/{id}", Admin, delete(jobs::cancel)),
        r("POST", "/v1/jobs/{id}/retry", Admin, post(jobs::retry)),
        r("GET", "/v1/jobs/{id}/result", Read, get(jobs::result)),
        r("GET", "/v1/jobs/{id}/why", Read, get(jobs::why)),
        r("POST", "/v1/schedules", Admin, post(schedules::create)),
        r("GET", "/v1/schedules", Read, get(schedules::list)),
        r(
            "POST",
            "/v1/schedules/{id}/pause",
            Admin,
            post(schedules::pause),
        ),
        r(
            "POST",
            "/v1/schedules/{id}/resume",
            Admin,
            post(schedules::resume),
        ),
        r(
            "DELETE",
            "/v1/schedules/{id}",
            Admin,
            delete(schedules::delete),
        ),
        r("POST", "/v1/workflows", Admin, post(workflows::submit)),
        r("GET", "/v1/workflows/{id}", Read, get(workflows::status)),
        r(
            "DELETE",
            "/v1/workflows/{id}",
            Admin,
            delete(workflows::cancel),
        ),
        r("POST", "/v1/tokens", Admin, post(admin::create_token)),
        r("GET", "/v1/tokens", Read, get(admin::list_tokens)),
        r(
            "DELETE",
            "/v1/tokens/{id}",
            Admin,
            delete(admin::revoke_token),
        ),
        r("GET", "/v1/agents", Read, get(admin::list_agents)),
        r(
            "DELETE",
            "/v1/agents/{id}",
            Admin,
            delete(admin::remove_agent),
        ),
        r(
            "POST",
            "/v1/agents/{id}/drain",
            Admin,
            post(admin::drain_agent),
        ),
        r("POST", "/v1/agent/enrol", JoinToken, post(agent::enrol)),
        r("POST", "/v1/agent/lease", Agent, post(agent::lease)),
        r("POST", "/v1/agent/results", Agent, post(agent::results)),
        r("POST", "/v1/agent/heartbeat", Agent, post(agent::heartbeat)),
        r("POST", "/v1/agent/release", Agent, post(agent::release)),
        r("GET", "/v1/agent/self", Agent, get(agent::whoami)),
        r("GET", "/v1/agent/modules/{id}", Agent, get(modules::fetch)),
        r("POST", "/v1/modules", Admin, post(modules::upload)),
        r("GET", "/v1/modules", Read, get(modules::list)),
        r("DELETE", "/v1/modules/{id}", Admin, delete(modules::delete)),
        r("GET", "/v1/releases", Read, get(releases::list)),
        r(
            "POST",
            "/v1/releases/{target}/{version}",
            Admin,
            post(releases::publish),
        ),
        r("GET", "/v1/agent/update", Agent, get(releases::latest)),
        r(
            "GET",
            "/v1/agent/update/{target}/{version}",
            Agent,
            get(releases::download),
        ),
    ]
}

/// Every route the API serves, with who may call it.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
    table()
        .into_iter()
        // Routes on one path with different methods merge. Each carries
        // the guard of its access class: who may call it is decided here,
        // from the table, and nowhere else.
        .fold(Router::new(), |router, (route, handler)| {
            let access = route.access;
            let guard = axum::middleware::from_fn_with_state(
                state.clone(),
                move |st: axum::extract::State<Arc<AppState>>,
                      req: axum::extract::Request,
                      next: axum::middleware::Next| {
                    auth::guard(access, st, req, next)
                },
            );
            router.route(route.path, handler.route_layer(guard))
        })
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Each handler reads its body with its own limit (see `body`).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            space::watch,
        ))
        .layer(axum::middleware::from_fn(connection::close_if_body_unread))
        .with_state(state)
}

#[cfg(test)]
mod tests;
