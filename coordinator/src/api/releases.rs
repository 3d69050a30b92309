//! Agent releases: the operator publishes signed binaries, agents ask for
//! the newest one of their target and download it (see [`crate::releases`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use musketeer_tasks::protocol::ReleaseInfo;
use serde::Deserialize;
use serde_json::json;

use super::auth::Agent;
use super::error::read_body;
use super::{ApiError, AppState};
use crate::releases::{ReleaseError, MAX_RELEASE_BYTES};

/// The header that carries a release's signature (hex) on upload.
pub const SIGNATURE_HEADER: &str = "x-musketeer-signature";

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> ApiError {
        let (status, code) = match &e {
            ReleaseError::BadKey(_) | ReleaseError::BadTarget(_) | ReleaseError::BadVersion(..) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_release")
            }
            ReleaseError::BadSignature => (StatusCode::UNPROCESSABLE_ENTITY, "bad_signature"),
            ReleaseError::NoKey => (StatusCode::CONFLICT, "no_release_key"),
            ReleaseError::Conflict { .. } => (StatusCode::CONFLICT, "release_exists"),
            ReleaseError::Io { source, .. } if crate::space::is_no_space(source) => {
                return super::space::disk_full(&e);
            }
            ReleaseError::Io { .. } => {
                tracing::error!("releases: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "release_store")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn joined(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// `POST /v1/releases/{target}/{version}`: the raw binary as the body, its
/// signature in `X-Musketeer-Signature`. 201 when new, 200 when the same
/// bytes were already published.
#[utoipa::path(post, path = "/v1/releases/{target}/{version}", tag = "releases", params(("target" = String, Path, description = "A Rust target triple"), ("version" = String, Path, description = "A semantic version")), request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The agent binary, its ed25519 signature in the signature header"), responses((status = 201, description = "Published", body = serde_json::Value), (status = 200, description = "Already published, the same bytes", body = serde_json::Value)))]
pub async fn publish(
    State(st): State<Arc<AppState>>,
    Path((target, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ReleaseInfo>), ApiError> {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_signature",
                format!("send the release's signature in {SIGNATURE_HEADER}: `musketeer-coordinator release publish` does"),
            )
        })?
        .to_string();
    super::space::check_room(&st, super::space::content_length(&headers).unwrap_or(0))?;
    let bytes = read_body(body, MAX_RELEASE_BYTES, "an agent binary is a few MiB").await?;
    let releases = st.releases.clone();
    let (info, new) = tokio::task::spawn_blocking(move || {
        releases.publish(&target, &version, &signature, &bytes)
    })
    .await
    .map_err(joined)??;
    tracing::info!(target = %info.target, version = %info.version, sha256 = %info.sha256, new, "agent release published");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

/// `GET /v1/releases`.
#[utoipa::path(get, path = "/v1/releases", operation_id = "list_releases", tag = "releases", responses((status = 200, description = "Published agent releases", body = serde_json::Value)))]
pub async fn list(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let releases = st.releases.clone();
    let all = tokio::task::spawn_blocking(move || releases.list())
        .await
        .map_err(joined)??;
    Ok(Json(json!({
        "release_key": st.releases.key().map(|k| k.to_string()),
        "releases": all,
    })))
}

/// The query of `GET /v1/agent/update`.
#[derive(Debug, Deserialize)]
pub struct UpdateQuery {
    /// The agent's target triple.
    target: String,
}

/// `GET /v1/agent/update?target=T`: the newest release of T, or 404 `no_release`.
#[utoipa::path(get, path = "/v1/agent/update", tag = "releases", responses((status = 200, description = "The newest release for the calling agent's target", body = serde_json::Value)))]
pub async fn latest(
    State(st): State<Arc<AppState>>,
    _: Agent,
    Query(q): Query<UpdateQuery>,
) -> Result<Json<ReleaseInfo>, ApiError> {
    let releases = st.releases.clone();
    let target = q.target.clone();
    let latest = tokio::task::spawn_blocking(move || releases.latest(&target))
        .await
        .map_err(joined)??;
    latest.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_release",
            format!("no release is published for {}", q.target),
        )
    })
}

/// `GET /v1/agent/update/{target}/{version}`: the release's binary.
#[utoipa::path(get, path = "/v1/agent/update/{target}/{version}", tag = "releases", params(("target" = String, Path, description = "A Rust target triple"), ("version" = String, Path, description = "A semantic version")), responses((status = 200, description = "The release's binary", content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn download(
    State(st): State<Arc<AppState>>,
    _: Agent,
    Path((target, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = st
        .releases
        .binary(&target, &version)?
        .ok_or_else(|| ApiError::not_found("release", &format!("{target} {version}")))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::from(ReleaseError::Io {
            path: path.clone(),
            source: e,
        })
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}
