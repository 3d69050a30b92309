//! The operator's endpoints: join tokens and agents.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use musketeer_tasks::token::{secret_hash, JoinToken, ViewerToken};
use serde::{Deserialize, Serialize};

use super::error::read_body;
use super::{ApiError, AppState, MAX_CONTROL_BODY};
use crate::pki::random_secret;
use crate::store::{AgentRecord, AgentState, TokenRecord, TokenRole};

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
            TokenRole::Join,
            st.scheduler.now_ms(),
        )
        .await?;
    Ok(token)
}

/// Makes a viewer token and stores its hash.
async fn make_viewer_token(st: &AppState) -> Result<ViewerToken, ApiError> {
    let token = ViewerToken {
        secret: random_secret(40),
    };
    st.scheduler
        .store
        .create_token(
            &token.id(),
            secret_hash(&token.secret),
            TokenRole::Viewer,
            st.scheduler.now_ms(),
        )
        .await?;
    Ok(token)
}

/// `POST /v1/tokens`' body, optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// `join` (the default: enrols agents) or `viewer` (reads everything
    /// the admin can, changes nothing).
    #[serde(default)]
    role: TokenRole,
}

/// A token just made: the only time its secret is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// Its id, as `token list` shows it.
    id: String,
    /// The token itself.
    token: String,
    /// What it opens.
    role: TokenRole,
}

/// `GET /v1/tokens`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// Every token, oldest first, never a secret.
    tokens: Vec<TokenRecord>,
}

/// `POST /v1/tokens`: `{"id":..,"token":..,"role":..}`; the only time the
/// token is shown. The body may ask for `{"role":"viewer"}`.
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", request_body(content = Option<NewToken>, content_type = "application/json", description = "Optional: `{\"role\":\"viewer\"}` for a viewer token"), responses((status = 201, description = "A token, shown this once", body = CreatedToken)))]
pub async fn create_token(
    State(st): State<Arc<AppState>>,
    body: Body,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let body = read_body(body, MAX_CONTROL_BODY, "send at most a small JSON object").await?;
    let req: NewToken = if body.iter().all(u8::is_ascii_whitespace) {
        NewToken::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "malformed_json",
                format!("the body must be empty or {{\"role\":\"join\"|\"viewer\"}}: {e}"),
            )
        })?
    };
    let created = match req.role {
        TokenRole::Join => {
            let token = make_token(&st).await?;
            CreatedToken {
                id: token.id(),
                token: token.to_string(),
                role: TokenRole::Join,
            }
        }
        TokenRole::Viewer => {
            let token = make_viewer_token(&st).await?;
            CreatedToken {
                id: token.id(),
                token: token.to_string(),
                role: TokenRole::Viewer,
            }
        }
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/tokens`.
#[utoipa::path(get, path = "/v1/tokens", tag = "admin", responses((status = 200, description = "Every token, never its secret", body = TokenList)))]
pub async fn list_tokens(State(st): State<Arc<AppState>>) -> Result<Json<TokenList>, ApiError> {
    let tokens = st.scheduler.store.list_tokens().await?;
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /v1/tokens/{id}`: agents can no longer enrol with it (those
/// already enrolled keep working; remove them one by one).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "admin", params(("id" = String, Path, description = "The token's id")), responses((status = 200, description = "Revoked", body = Revoked)))]
pub async fn revoke_token(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    if st.scheduler.store.revoke_token(&id).await? {
        Ok(Json(Revoked { id, revoked: true }))
    } else {
        Err(ApiError::not_found("token", &id))
    }
}

/// `GET /v1/agents`.
#[utoipa::path(get, path = "/v1/agents", tag = "admin", responses((status = 200, description = "Every agent, with capacity, state and credit", body = AgentList)))]
pub async fn list_agents(State(st): State<Arc<AppState>>) -> Result<Json<AgentList>, ApiError> {
    let agents = st.scheduler.store.list_agents().await?;
    Ok(Json(AgentList {
        now_ms: st.scheduler.now_ms(),
        agents,
    }))
}

/// `DELETE /v1/tokens/{id}`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Revoked {
    /// The token's id.
    id: String,
    /// Always true: it no longer opens anything.
    revoked: bool,
}

/// The answer to a drain or a removal.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentChanged {
    /// The agent's id.
    id: String,
    /// Its state now.
    state: AgentState,
}

/// `GET /v1/agents`' answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentList {
    /// The coordinator's clock, to read `last_seen_ms` against.
    now_ms: u64,
    /// Every agent, removed ones included.
    agents: Vec<AgentRecord>,
}

/// `POST /v1/agents/{id}/drain`: finish what it holds, take nothing new.
#[utoipa::path(post, path = "/v1/agents/{id}/drain", tag = "admin", params(("id" = String, Path, description = "The agent's id")), responses((status = 200, description = "Draining", body = AgentChanged)))]
pub async fn drain_agent(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<AgentChanged>, ApiError> {
    if st.scheduler.store.drain_agent(&id).await? {
        Ok(Json(AgentChanged {
            id,
            state: AgentState::Draining,
        }))
    } else {
        Err(ApiError::not_found("active agent", &id))
    }
}

/// `DELETE /v1/agents/{id}`: its credential stops working and its leases
/// go back to the queue at once.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "admin", params(("id" = String, Path, description = "The agent's id")), responses((status = 200, description = "Removed; its leases are back in the queue", body = AgentChanged)))]
pub async fn remove_agent(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<AgentChanged>, ApiError> {
    if st
        .scheduler
        .store
        .remove_agent(&id, st.scheduler.now_ms())
        .await?
    {
        st.scheduler.signal_work();
        Ok(Json(AgentChanged {
            id,
            state: AgentState::Removed,
        }))
    } else {
        Err(ApiError::not_found("agent", &id))
    }
}
