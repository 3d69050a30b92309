//! The HTTP API: `/v1/jobs` for submitters, `/v1/tokens` and `/v1/agents`
//! for the operator, `/v1/agent/*` for agents, and `/`, `/healthz`,
//! `/metrics` for people and monitors. Every error is
//! `{"error":{"code":..,"message":..}}`, 4xx for the caller's fault.

mod admin;
mod agent;
mod auth;
mod dashboard;
mod error;
mod jobs;
mod releases;

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
    /// Signed agent releases and the key agents learn at enrolment.
    pub releases: Arc<crate::releases::Releases>,
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(dashboard::healthz))
        .route("/metrics", get(dashboard::metrics))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/wordcount", post(jobs::submit_wordcount_stream))
        .route("/v1/jobs/{id}", get(jobs::status).delete(jobs::cancel))
        .route("/v1/jobs/{id}/result", get(jobs::result))
        .route(
            "/v1/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route("/v1/agents", get(admin::list_agents))
        .route(
            "/v1/agents/{id}",
            axum::routing::delete(admin::remove_agent),
        )
        .route("/v1/agents/{id}/drain", post(admin::drain_agent))
        .route("/v1/agent/enrol", post(agent::enrol))
        .route("/v1/agent/lease", post(agent::lease))
        .route("/v1/agent/results", post(agent::results))
        .route("/v1/agent/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/release", post(agent::release))
        .route("/v1/releases", get(releases::list))
        .route("/v1/releases/{target}/{version}", post(releases::publish))
        .route("/v1/agent/update", get(releases::latest))
        .route(
            "/v1/agent/update/{target}/{version}",
            get(releases::download),
        )
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Each handler reads its body with its own limit (see `body`).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
