//! Who is calling: the operator (the admin token, a viewer token, or a
//! dashboard session of either), an enrolled agent (its credential), or
//! anyone (public pages, enrolment). The route table says who may call
//! each route, and [`guard`] enforces it for the operator's routes. Secrets are compared as
//! SHA-256 hashes, in constant time. Failed authentication and anonymous
//! calls are charged to the caller's address, agents' calls to the agent
//! (see [`super::rate_limit`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use musketeer_tasks::token::{secret_hash, AgentCredential, ViewerToken};
use subtle::ConstantTimeEq;

use super::{session, Access, ApiError, AppState};
use crate::store::{AgentState, TokenRole};

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_in(&parts.headers)
}

fn bearer_in(headers: &HeaderMap) -> Option<&str> {
    headers
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

/// Who called an operator's route: the admin, or a viewer (who reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The admin token, or an admin's dashboard session.
    Admin,
    /// A viewer token, or a viewer's dashboard session.
    Viewer,
    /// Nobody: a public dashboard (`serve --public-dashboard`) let them in.
    Public,
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// A bearer token's operator: the admin token, or a viewer token the store
/// knows and has not revoked.
async fn bearer_operator(token: &str, state: &AppState) -> Result<Operator, ApiError> {
    if AgentCredential::parse(token).is_ok() {
        return Err(forbidden(
            "agent credentials cannot submit jobs or call admin endpoints: use the admin token",
        ));
    }
    if hashes_match(&secret_hash(token), &state.admin_token_hash) {
        return Ok(Operator::Admin);
    }
    if let Ok(viewer) = ViewerToken::parse(token) {
        let found = state
            .scheduler
            .store
            .token_by_hash(secret_hash(&viewer.secret))
            .await?;
        match found {
            Some(t) if t.role == TokenRole::Viewer && !t.revoked => return Ok(Operator::Viewer),
            Some(t) if t.role == TokenRole::Viewer => {
                return Err(unauthorized(
                    "this viewer token was revoked: ask the operator for a new one (`token create --viewer`)",
                ))
            }
            _ => {}
        }
    }
    Err(unauthorized(
        "invalid admin token: check the coordinator's admin.token, or use a viewer token to read",
    ))
}

/// A dashboard session's operator, if the request carries a valid session
/// cookie; a state-changing request must also carry its CSRF token.
async fn session_operator(
    headers: &HeaderMap,
    method: &Method,
    state: &AppState,
) -> Result<Option<Operator>, ApiError> {
    let Some(value) = headers
        .get(axum::http::header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(session::from_cookies)
    else {
        return Ok(None);
    };
    let Some(s) = session::verify(&state.admin_token_hash, value, state.scheduler.now_ms()) else {
        return Err(unauthorized(
            "the dashboard session expired or is not this cluster's: log in again at /",
        ));
    };
    if *method != Method::GET && *method != Method::HEAD {
        let given = headers
            .get(session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !s.csrf_matches(&state.admin_token_hash, given) {
            return Err(forbidden(
                "missing or wrong CSRF token: send the dashboard's X-CSRF-Token header with every action",
            ));
        }
    }
    match (s.role, s.token_hash) {
        (session::Role::Admin, _) => Ok(Some(Operator::Admin)),
        (session::Role::Viewer, Some(hash)) => {
            match state.scheduler.store.token_by_hash(hash).await? {
                Some(t) if t.role == TokenRole::Viewer && !t.revoked => Ok(Some(Operator::Viewer)),
                _ => Err(unauthorized(
                    "the viewer token of this session was revoked: log in again with another",
                )),
            }
        }
        (session::Role::Viewer, None) => Err(unauthorized(
            "the dashboard session is malformed: log in again at /",
        )),
    }
}

/// The operator of a request: its bearer token if it has one, else its
/// dashboard session, else, where `public` allows, the public.
pub async fn operator(
    headers: &HeaderMap,
    method: &Method,
    state: &AppState,
    public: bool,
) -> Result<Operator, ApiError> {
    if let Some(token) = bearer_in(headers) {
        return bearer_operator(token, state).await;
    }
    match session_operator(headers, method, state).await {
        Ok(Some(op)) => return Ok(op),
        // A stale cookie does not lock anyone out of a public dashboard.
        Ok(None) | Err(_) if public => return Ok(Operator::Public),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    Err(unauthorized(
        "missing bearer token: send `Authorization: Bearer <token>` with the contents of the coordinator's admin.token (or a viewer token to read), or log in at /",
    ))
}

/// Whether `op` may call a route of `access`; every operator route's check.
fn allowed(access: Access, op: Operator) -> Result<(), ApiError> {
    match (access, op) {
        (Access::Admin, Operator::Admin) => Ok(()),
        (Access::Admin, Operator::Viewer) => Err(forbidden(
            "a viewer token only reads: this route changes state; use the admin token",
        )),
        (Access::Read | Access::Dashboard, Operator::Admin | Operator::Viewer) => Ok(()),
        (Access::Dashboard, Operator::Public) => Ok(()),
        _ => Err(unauthorized(
            "this route needs the admin token or a viewer token: log in at / or send `Authorization: Bearer <token>`",
        )),
    }
}

/// The route table's guard (see [`super::router`]): the operator's routes
/// (`Admin`, `Read`, `Dashboard`) are checked here, once, before the
/// handler runs; the others' extractors check their own callers.
pub async fn guard(
    access: Access,
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !matches!(access, Access::Admin | Access::Read | Access::Dashboard) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let public = access == Access::Dashboard && st.public_dashboard;
    let checked = match operator(&parts.headers, &parts.method, &st, public).await {
        Ok(op) => allowed(access, op).map(|()| op),
        Err(e) => Err(e),
    };
    match checked {
        Ok(op) => {
            parts.extensions.insert(op);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => refuse(&parts, &st, e).into_response(),
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
