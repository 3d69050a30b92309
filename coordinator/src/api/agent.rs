//! The agent protocol's endpoints (see `musketeer_tasks::protocol`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use musketeer_tasks::protocol::{
    Capacity, EnrolRequest, EnrolResponse, Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse,
    Release, ReleaseAck, ResultAck, ResultBatch, UploadError, POSTCARD_CONTENT_TYPE,
};
use musketeer_tasks::token::{secret_hash, AgentCredential, JoinToken};
use serde::de::DeserializeOwned;

use super::auth::{Agent, Anonymous};
use super::error::read_body;
use super::{ApiError, AppState, MAX_CONTROL_BODY, MAX_RESULT_BODY};
use crate::pki::random_secret;
use crate::store::{EnrolRefusal, LeaseQuery, NewAgent};

/// Most tasks one lease call may take: bounds the response and the
/// transaction behind it.
const MAX_TASKS_PER_LEASE: u32 = 1024;

/// Most results in one upload: four full leases' worth. No agent holds
/// more; a larger batch would only hold the store's writer for longer.
const MAX_REPORTS_PER_BATCH: usize = 4 * MAX_TASKS_PER_LEASE as usize;

/// Most input bytes in one lease response. An agent cannot start a batch
/// before the whole response has arrived, so a batch sized by work alone
/// (a 200 MiB text is "1.5 s of work") made one agent download everything
/// while the other idled; a few chunks per call lets batches stream in
/// behind the work in progress and spreads a job over the agents.
const MAX_LEASE_BYTES: u64 = 16 << 20;

async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_CONTROL_BODY, "control messages are small").await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not a valid message: {e}"),
        )
    })
}

fn check_capacity(c: &Capacity) -> Result<(), ApiError> {
    let too_long = |s: &str| s.len() > 255;
    if too_long(&c.hostname)
        || too_long(&c.arch)
        || too_long(&c.os)
        || too_long(&c.version)
        || c.queues.len() > 64
        || c.labels.len() > 64
        || c.queues.iter().any(|q| too_long(q))
        || c.labels.iter().any(|(k, v)| too_long(k) || too_long(v))
    {
        return Err(ApiError::bad_request(
            "invalid_capacity",
            "capacity fields are limited to 255 characters, and to 64 queues and 64 labels",
        ));
    }
    Ok(())
}

/// `POST /v1/agent/enrol`.
#[utoipa::path(post, path = "/v1/agent/enrol", tag = "agent protocol", request_body(content = serde_json::Value, content_type = "application/json", description = "The join token and the capacity the agent offers"), responses((status = 200, description = "The agent's id and credential", body = serde_json::Value)))]
pub async fn enrol(
    State(st): State<Arc<AppState>>,
    _: Anonymous,
    body: Body,
) -> Result<Json<EnrolResponse>, ApiError> {
    let req: EnrolRequest = json_body(body).await?;
    check_capacity(&req.capacity)?;
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", m);
    let token = JoinToken::parse(&req.token).map_err(|e| unauthorized(&e.to_string()))?;
    if token.ca != st.pin {
        return Err(unauthorized(
            "this join token was made for another coordinator: ask this coordinator's operator for a token",
        ));
    }
    let cred = AgentCredential {
        agent_id: hex::encode(rand::random::<[u8; 8]>()),
        secret: random_secret(40),
    };
    let agent = NewAgent {
        id: cred.agent_id.clone(),
        secret_hash: secret_hash(&cred.secret),
        capacity: req.capacity,
        now_ms: st.scheduler.now_ms(),
    };
    match st
        .scheduler
        .store
        .enrol_agent(secret_hash(&token.secret), agent)
        .await?
    {
        Ok(()) => {
            tracing::info!(agent = %cred.agent_id, token = %token.id(), "agent enrolled");
            Ok(Json(EnrolResponse {
                agent_id: cred.agent_id.clone(),
                credential: cred.to_string(),
                ca_pem: Some(st.ca_pem.clone()),
                release_key: st.releases.key().map(|k| k.to_hex()),
            }))
        }
        Err(EnrolRefusal::UnknownToken) => Err(unauthorized(
            "unknown join token: ask the operator for one (`musketeer-coordinator token create`)",
        )),
        Err(EnrolRefusal::RevokedToken) => Err(unauthorized(
            "this join token was revoked: ask the operator for a new one",
        )),
        Err(EnrolRefusal::NotAJoinToken) => Err(unauthorized(
            "this is not a join token: ask the operator for one (`musketeer-coordinator token create`)",
        )),
    }
}

/// `POST /v1/agent/lease`: JSON in, postcard out.
#[utoipa::path(post, path = "/v1/agent/lease", tag = "agent protocol", request_body(content = serde_json::Value, content_type = "application/json", description = "How much work the agent wants, how long it may wait, its capacity"), responses((status = 200, description = "Leased tasks, postcard-encoded", content_type = "application/x-postcard", body = Vec<u8>)))]
pub async fn lease(
    State(st): State<Arc<AppState>>,
    agent: Agent,
    body: Body,
) -> Result<Response, ApiError> {
    let req: LeaseRequest = json_body(body).await?;
    check_capacity(&req.capacity)?;
    let tasks = if agent.draining {
        Vec::new()
    } else {
        let query = LeaseQuery {
            labels: crate::scheduler::matching::agent_labels(&agent.id, &req.capacity),
            agent_id: agent.id,
            queues: req.capacity.queues.clone(),
            mem_bytes: req.capacity.memory_bytes,
            max_work: req.max_work.max(1),
            max_tasks: req.max_tasks.clamp(1, MAX_TASKS_PER_LEASE),
            max_bytes: MAX_LEASE_BYTES,
            now_ms: st.scheduler.now_ms(),
            ttl_ms: st.scheduler.lease_ttl.as_millis() as u64,
            capacity: req.capacity,
        };
        st.scheduler
            .lease(query, Duration::from_millis(req.wait_ms))
            .await?
    };
    let response = LeaseResponse {
        tasks,
        lease_ttl_ms: st.scheduler.lease_ttl.as_millis() as u64,
    };
    let bytes = musketeer_tasks::protocol::encode(&response)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, POSTCARD_CONTENT_TYPE)], bytes).into_response())
}

/// `POST /v1/agent/results`: postcard in, JSON out.
#[utoipa::path(post, path = "/v1/agent/results", tag = "agent protocol", request_body(content = Vec<u8>, content_type = "application/x-postcard", description = "A postcard-encoded batch of task reports"), responses((status = 200, description = "Which results were accepted", body = serde_json::Value)))]
pub async fn results(
    State(st): State<Arc<AppState>>,
    agent: Agent,
    body: Body,
) -> Result<Json<ResultAck>, ApiError> {
    let bytes = read_body(body, MAX_RESULT_BODY, "upload results in smaller batches").await?;
    let batch = ResultBatch::decode_upload(&bytes, MAX_REPORTS_PER_BATCH).map_err(|e| {
        let (status, code) = match e {
            UploadError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_results"),
            UploadError::TooMany { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_results"),
            UploadError::BadTaskRef(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_results"),
        };
        ApiError::new(status, code, e.to_string())
    })?;
    drop(bytes);
    let outcome = st.scheduler.complete(&agent.id, batch.results).await?;
    Ok(Json(ResultAck {
        accepted: outcome.accepted,
        stale: outcome.stale,
    }))
}

/// `POST /v1/agent/heartbeat`.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agent protocol", request_body(content = serde_json::Value, content_type = "application/json", description = "The tasks the agent still works on"), responses((status = 200, description = "Leases renewed", body = serde_json::Value)))]
pub async fn heartbeat(
    State(st): State<Arc<AppState>>,
    agent: Agent,
    body: Body,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let hb: Heartbeat = json_body(body).await?;
    let ttl = st.scheduler.lease_ttl.as_millis() as u64;
    let ack = st
        .scheduler
        .store
        .heartbeat(&agent.id, hb.running, st.scheduler.now_ms(), ttl)
        .await?;
    Ok(Json(ack))
}

/// `POST /v1/agent/release`.
#[utoipa::path(post, path = "/v1/agent/release", tag = "agent protocol", request_body(content = serde_json::Value, content_type = "application/json", description = "Tasks the agent gives back unfinished"), responses((status = 200, description = "Given back", body = serde_json::Value)))]
pub async fn release(
    State(st): State<Arc<AppState>>,
    agent: Agent,
    body: Body,
) -> Result<Json<ReleaseAck>, ApiError> {
    let r: Release = json_body(body).await?;
    if r.stopping {
        st.scheduler.agent_stopping(&agent.id);
    }
    let released = st.scheduler.store.release(&agent.id, r.tasks).await?;
    if released > 0 {
        st.scheduler.signal_work();
    }
    Ok(Json(ReleaseAck { released }))
}

/// `GET /v1/agent/self`: the calling agent's own record, as `GET
/// /v1/agents` lists it, for `musketeer status` (its credit, leases, trust).
#[utoipa::path(get, path = "/v1/agent/self", tag = "agent protocol", responses((status = 200, description = "The calling agent's own record: capacity, state, leases, credit, trust", body = serde_json::Value)))]
pub async fn whoami(
    State(st): State<Arc<AppState>>,
    agent: Agent,
) -> Result<Json<crate::store::AgentRecord>, ApiError> {
    // A scan of the agent list: `status` is asked for by a person now and
    // then, not on any hot path, and the store needs no query of its own.
    st.scheduler
        .store
        .list_agents()
        .await?
        .into_iter()
        .find(|a| a.id == agent.id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("agent", &agent.id))
}
