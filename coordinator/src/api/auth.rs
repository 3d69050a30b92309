//! Who is calling: the operator (admin token) or an enrolled agent
//! (its credential). Secrets are compared as SHA-256 hashes, in constant time.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use musketeer_tasks::token::{secret_hash, AgentCredential};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::store::AgentState;

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The caller holds the admin token.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Admin, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(unauthorized(
                "missing bearer token: send `Authorization: Bearer <token>` with the contents of the coordinator's admin.token",
            ));
        };
        if AgentCredential::parse(token).is_ok() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "agent credentials cannot submit jobs or call admin endpoints: use the admin token",
            ));
        }
        if bool::from(secret_hash(token).ct_eq(&state.admin_token_hash)) {
            Ok(Admin)
        } else {
            Err(unauthorized(
                "invalid admin token: check the coordinator's admin.token",
            ))
        }
    }
}

/// The caller is this enrolled, not removed agent.
pub struct Agent {
    /// The agent's id.
    pub id: String,
    /// Whether the operator asked it to drain.
    pub draining: bool,
}

impl FromRequestParts<Arc<AppState>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Agent, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(unauthorized(
                "missing agent credential: join the cluster first",
            ));
        };
        let Ok(cred) = AgentCredential::parse(token) else {
            return Err(unauthorized("not an agent credential: agent endpoints need the credential `musketeer join` saved"));
        };
        let auth = state.scheduler.store.agent_auth(&cred.agent_id).await?;
        let Some(auth) = auth else {
            return Err(unauthorized(format!(
                "unknown agent {}: join again with a new token",
                cred.agent_id
            )));
        };
        if !bool::from(secret_hash(&cred.secret).ct_eq(&auth.secret_hash)) {
            return Err(unauthorized(
                "invalid agent credential: join again with a new token",
            ));
        }
        match auth.state {
            AgentState::Removed => Err(unauthorized(format!(
                "agent {} was removed by the operator: join again with a new token",
                cred.agent_id
            ))),
            s => Ok(Agent {
                id: cred.agent_id,
                draining: s == AgentState::Draining,
            }),
        }
    }
}
