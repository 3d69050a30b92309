//! Workflows' endpoints: submit a graph of jobs, see every step, cancel
//! (see `crate::workflows`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::error::read_body;
use super::space::{check_room, content_length};
use super::{ApiError, AppState, MAX_JOB_BODY};
use crate::workflows::{self, SubmitError, WorkflowSubmitted, WorkflowView};

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Invalid(e) => ApiError::new(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            e.code(),
            e.to_string(),
        ),
        SubmitError::Store(e) => e.into(),
    }
}

/// `POST /v1/workflows`: a graph of jobs, checked whole, stored at once.
#[utoipa::path(post, path = "/v1/workflows", operation_id = "submit_workflow", tag = "workflows", request_body(content = serde_json::Value, description = "`{\"steps\":[{\"name\",\"after\":[..],\"job\":{..}}]}`; in a step's job, `{\"result_of\":\"name\"}` stands for that step's result where the kernel takes it (see the README)", content_type = "application/json"), responses((status = 201, description = "Accepted: the workflow's id and each step's job id", body = WorkflowSubmitted), (status = 422, description = "A step names an unknown step or itself, the steps form a cycle, a `result_of` stands where its kernel cannot take that result, two steps share a name, or there are too many steps: the message names the step", body = super::openapi::ErrorBody)))]
pub async fn submit(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<WorkflowSubmitted>), ApiError> {
    check_room(&st, content_length(&headers).unwrap_or(0))?;
    let body = read_body(
        body,
        MAX_JOB_BODY,
        "split the workflow, or stream large texts as jobs of their own",
    )
    .await?;
    let submitted = workflows::submit(&st.scheduler, &body)
        .await
        .map_err(submit_error)?;
    Ok((StatusCode::CREATED, Json(submitted)))
}

/// `GET /v1/workflows/{id}`: every step's state.
#[utoipa::path(get, path = "/v1/workflows/{id}", operation_id = "workflow_status", tag = "workflows", params(("id" = String, Path, description = "The workflow's id")), responses((status = 200, description = "The workflow and every step's state", body = WorkflowView)))]
pub async fn status(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    workflows::status(&st.scheduler, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("workflow", &id))
}

/// `DELETE /v1/workflows/{id}`: cancels every step that has not finished.
#[utoipa::path(delete, path = "/v1/workflows/{id}", operation_id = "cancel_workflow", tag = "workflows", params(("id" = String, Path, description = "The workflow's id")), responses((status = 200, description = "Its steps after the cancel (a finished workflow is left as it was)", body = WorkflowView)))]
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    workflows::cancel(&st.scheduler, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("workflow", &id))
}
