//! Who is calling: the operator (admin token), an enrolled agent (its
//! credential), or anyone (public pages, enrolment). Secrets are compared as
//! SHA-256 hashes, in constant time. Failed authentication and anonymous
//! calls are charged to the caller's address, agents' calls to the agent
//! (see [`super::rate_limit`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
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

/// The client's address, when the request came over a socket.
fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A refusal, charged to the caller's address: past its limit the caller
/// learns only to slow down, so guessing secrets gets nowhere fast. Only
/// refusals of credentials count: a store failure is ours, not theirs.
fn refuse(parts: &Parts, state: &AppState, error: ApiError) -> ApiError {
    if !matches!(
        error.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        return error;
    }
    match state.limits.address(peer(parts)) {
        Ok(()) => error,
        Err(limited) => limited,
    }
}

/// Whether two secrets' hashes are equal, in time that does not depend on
/// where they differ.
pub fn hashes_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

/// A caller that needs no credential; charged to its address.
pub struct Anonymous;

impl FromRequestParts<Arc<AppState>> for Anonymous {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Anonymous, ApiError> {
        state.limits.address(peer(parts))?;
        Ok(Anonymous)
    }
}

/// The caller holds the admin token.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Admin, ApiError> {
        admin(parts, state).map_err(|e| refuse(parts, state, e))
    }
}

fn admin(parts: &Parts, state: &AppState) -> Result<Admin, ApiError> {
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
    if hashes_match(&secret_hash(token), &state.admin_token_hash) {
        Ok(Admin)
    } else {
        Err(unauthorized(
            "invalid admin token: check the coordinator's admin.token",
        ))
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
        let agent = agent(parts, state)
            .await
            .map_err(|e| refuse(parts, state, e))?;
        state.limits.agent(&agent.id)?;
        Ok(agent)
    }
}

async fn agent(parts: &Parts, state: &AppState) -> Result<Agent, ApiError> {
    let Some(token) = bearer(parts) else {
        return Err(unauthorized(
            "missing agent credential: join the cluster first",
        ));
    };
    let Ok(cred) = AgentCredential::parse(token) else {
        return Err(unauthorized(
            "not an agent credential: agent endpoints need the credential `musketeer join` saved",
        ));
    };
    let auth = state.scheduler.store.agent_auth(&cred.agent_id).await?;
    let Some(auth) = auth else {
        return Err(unauthorized(format!(
            "unknown agent {}: join again with a new token",
            cred.agent_id
        )));
    };
    if !hashes_match(&secret_hash(&cred.secret), &auth.secret_hash) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_compared_whole() {
        let a = secret_hash("correct horse battery staple");
        let mut b = a;
        assert!(hashes_match(&a, &b));
        // A difference anywhere, first byte or last, is a mismatch.
        b[0] ^= 1;
        assert!(!hashes_match(&a, &b));
        b = a;
        b[31] ^= 0x80;
        assert!(!hashes_match(&a, &b));
        assert!(!hashes_match(&a, &secret_hash("")));
    }
}
