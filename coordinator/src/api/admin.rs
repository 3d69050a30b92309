//! The operator's endpoints: join tokens and agents.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use musketeer_tasks::token::{secret_hash, JoinToken};
use serde_json::json;

use super::auth::Admin;
use super::{ApiError, AppState};
use crate::pki::random_secret;

/// Makes a join token for this coordinator and stores its hash.
pub async fn make_token(st: &AppState) -> Result<JoinToken, ApiError> {
    let token = JoinToken {
        ca: st.pin,
        secret: random_secret(32),
    };
    st.scheduler
        .store
        .create_token(
            &token.id(),
            secret_hash(&token.secret),
            st.scheduler.now_ms(),
        )
        .await?;
    Ok(token)
}

/// `POST /v1/tokens`: `{"id":..,"token":..}`; the only time the token is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", responses((status = 201, description = "A join token, shown this once", body = serde_json::Value)))]
pub async fn create_token(
    State(st): State<Arc<AppState>>,
    _: Admin,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let token = make_token(&st).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": token.id(), "token": token.to_string()})),
    ))
}

/// `GET /v1/tokens`.
#[utoipa::path(get, path = "/v1/tokens", tag = "admin", responses((status = 200, description = "Every join token, never its secret", body = serde_json::Value)))]
pub async fn list_tokens(
    State(st): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens = st.scheduler.store.list_tokens().await?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /v1/tokens/{id}`: agents can no longer enrol with it (those
/// already enrolled keep working; remove them one by one).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "admin", params(("id" = String, Path, description = "The token's id")), responses((status = 200, description = "Revoked", body = serde_json::Value)))]
pub async fn revoke_token(
    State(st): State<Arc<AppState>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if st.scheduler.store.revoke_token(&id).await? {
        Ok(Json(json!({"id": id, "revoked": true})))
    } else {
        Err(ApiError::not_found("token", &id))
    }
}

/// `GET /v1/agents`.
#[utoipa::path(get, path = "/v1/agents", tag = "admin", responses((status = 200, description = "Every agent, with capacity, state and credit", body = serde_json::Value)))]
pub async fn list_agents(
    State(st): State<Arc<AppState>>,
    _: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let agents = st.scheduler.store.list_agents().await?;
    Ok(Json(
        json!({ "now_ms": st.scheduler.now_ms(), "agents": agents }),
    ))
}

/// `POST /v1/agents/{id}/drain`: finish what it holds, take nothing new.
#[utoipa::path(post, path = "/v1/agents/{id}/drain", tag = "admin", params(("id" = String, Path, description = "The agent's id")), responses((status = 200, description = "Draining", body = serde_json::Value)))]
pub async fn drain_agent(
    State(st): State<Arc<AppState>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if st.scheduler.store.drain_agent(&id).await? {
        Ok(Json(json!({"id": id, "state": "draining"})))
    } else {
        Err(ApiError::not_found("active agent", &id))
    }
}

/// `DELETE /v1/agents/{id}`: its credential stops working and its leases
/// go back to the queue at once.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "admin", params(("id" = String, Path, description = "The agent's id")), responses((status = 200, description = "Removed; its leases are back in the queue", body = serde_json::Value)))]
pub async fn remove_agent(
    State(st): State<Arc<AppState>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if st
        .scheduler
        .store
        .remove_agent(&id, st.scheduler.now_ms())
        .await?
    {
        st.scheduler.signal_work();
        Ok(Json(json!({"id": id, "state": "removed"})))
    } else {
        Err(ApiError::not_found("agent", &id))
    }
}
