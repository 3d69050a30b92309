//! WebAssembly modules: the operator uploads, lists and deletes them; agents
//! fetch one by its digest before they run its first task. A module is
//! validated once, at upload, against the ABI (`tasks::wasm::validate`), so
//! a broken one is a 422 naming the problem, never a fleet of failed tasks.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use musketeer_tasks::wasm::{self, ModuleId};
use serde_json::json;

use super::auth::Agent;
use super::error::read_body;
use super::space::{check_room, content_length};
use super::{ApiError, AppState};
use crate::store::{ModuleDeletion, NewModule};

/// Largest module: the SPEC's limit. Real kernels are tens of KiB to a few
/// MiB; a module is held whole in memory while it is validated and stored.
pub const MAX_MODULE_BYTES: usize = 16 << 20;

/// The content type of a module, on upload and on download.
pub const WASM_CONTENT_TYPE: &str = "application/wasm";

/// `POST /v1/modules`' answer.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // only its schema is used
pub struct Uploaded {
    /// `sha256:<hex of the bytes>`: what a job's `module` names.
    id: String,
    /// The module's size in bytes.
    size: u64,
}

/// A module id from a path, or a 400 that shows the form to use.
fn parse_id(id: &str) -> Result<ModuleId, ApiError> {
    id.parse::<ModuleId>()
        .map_err(|e| ApiError::bad_request("invalid_module_id", e.to_string()))
}

fn joined(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// `POST /v1/modules`: a WebAssembly binary as the body.
#[utoipa::path(post, path = "/v1/modules", operation_id = "upload_module", tag = "modules", request_body(content = Vec<u8>, content_type = "application/wasm", description = "A WebAssembly binary module of ABI version 1, at most 16 MiB"), responses((status = 201, description = "Stored", body = Uploaded), (status = 200, description = "Stored already: the same bytes", body = Uploaded), (status = 413, description = "Larger than 16 MiB (`body_too_large`)", body = super::openapi::ErrorBody), (status = 415, description = "Not sent as `application/wasm`", body = super::openapi::ErrorBody), (status = 422, description = "Not a module of the ABI (`invalid_module`): the message names the problem", body = super::openapi::ErrorBody)))]
pub async fn upload(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some(WASM_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the module as `Content-Type: {WASM_CONTENT_TYPE}` (got {content_type:?}): \
                 `musketeer-coordinator modules push FILE` does"
            ),
        ));
    }
    check_room(&st, content_length(&headers).unwrap_or(0))?;
    let bytes = read_body(
        body,
        MAX_MODULE_BYTES,
        "a module is at most 16 MiB; build it with `--release` and strip it",
    )
    .await?;
    // Parsing a module of many functions is CPU work: off the I/O threads.
    let (info, bytes) = tokio::task::spawn_blocking(move || (wasm::validate(&bytes), bytes))
        .await
        .map_err(joined)?;
    let info = info.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_module",
            format!("not a Musketeer module: {e}"),
        )
    })?;
    let id = info.id.to_string();
    let size = bytes.len() as u64;
    let new = st
        .scheduler
        .store
        .put_module(NewModule {
            id: id.clone(),
            bytes: Vec::from(bytes),
            has_reduce: info.has_reduce,
            created_ms: st.scheduler.now_ms(),
        })
        .await?;
    tracing::info!(module = %id, size, new, "module stored");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"id": id, "size": size}))))
}

/// `GET /v1/modules`.
#[utoipa::path(get, path = "/v1/modules", operation_id = "list_modules", tag = "modules", responses((status = 200, description = "Every stored module, oldest first", body = super::openapi::ModuleList)))]
pub async fn list(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let modules = st.scheduler.store.list_modules().await?;
    Ok(Json(json!({ "modules": modules })))
}

/// `DELETE /v1/modules/{id}`: refused with 409 while an unfinished job uses it.
#[utoipa::path(delete, path = "/v1/modules/{id}", operation_id = "delete_module", tag = "modules", params(("id" = String, Path, description = "The module's id, `sha256:<hex>`")), responses((status = 200, description = "Deleted", body = serde_json::Value), (status = 404, description = "No such module", body = super::openapi::ErrorBody), (status = 409, description = "Unfinished jobs use it (`module_in_use`)", body = super::openapi::ErrorBody)))]
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?.to_string();
    match st.scheduler.store.delete_module(&id).await? {
        ModuleDeletion::Deleted => {
            tracing::info!(module = %id, "module deleted");
            Ok(Json(json!({"id": id, "deleted": true})))
        }
        ModuleDeletion::NotFound => Err(ApiError::not_found("module", &id)),
        ModuleDeletion::InUse(jobs) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "module_in_use",
            format!(
                "module {id} is used by unfinished jobs ({}): wait for them or cancel them first",
                jobs.join(", ")
            ),
        )),
    }
}

/// `GET /v1/agent/modules/{id}`: the module's bytes, for an agent about to
/// run its tasks (it checks them against the id and caches them).
#[utoipa::path(get, path = "/v1/agent/modules/{id}", operation_id = "fetch_module", tag = "agent", params(("id" = String, Path, description = "The module's id, `sha256:<hex>`")), responses((status = 200, description = "The module", content_type = "application/wasm", body = Vec<u8>), (status = 404, description = "No such module", body = super::openapi::ErrorBody)))]
pub async fn fetch(
    State(st): State<Arc<AppState>>,
    _: Agent,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?.to_string();
    let bytes = st
        .scheduler
        .store
        .module_bytes(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("module", &id))?;
    Ok(([(header::CONTENT_TYPE, WASM_CONTENT_TYPE)], bytes).into_response())
}
