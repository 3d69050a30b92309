//! Schedules' endpoints: create, list, pause, resume, delete (see
//! `crate::schedules`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::error::read_body;
use super::{ApiError, AppState, MAX_JOB_BODY};
use crate::schedules::{self, ScheduleCreated, ScheduleView, SubmitError};

/// `GET /v1/schedules`' answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    /// Every schedule, oldest first.
    schedules: Vec<ScheduleView>,
}

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

/// `POST /v1/schedules`: a cron expression, its time zone and a job body.
#[utoipa::path(post, path = "/v1/schedules", operation_id = "create_schedule", tag = "schedules", request_body(content = serde_json::Value, description = "`{\"cron\":\"*/5 * * * *\",\"timezone\":\"UTC\",\"job\":{..}}`: five cron fields, or six with seconds first; an IANA time zone (default UTC); a job body", content_type = "application/json"), responses((status = 201, description = "Created: its id and first tick", body = ScheduleCreated), (status = 422, description = "A cron expression that does not parse (`invalid_cron`) or never fires (`cron_never_fires`), an unknown time zone (`unknown_timezone`), or a job body its kernel refuses (`invalid_job`)", body = super::openapi::ErrorBody)))]
pub async fn create(
    State(st): State<Arc<AppState>>,
    body: Body,
) -> Result<(StatusCode, Json<ScheduleCreated>), ApiError> {
    let body = read_body(
        body,
        MAX_JOB_BODY,
        "a schedule's job must fit a JSON job body",
    )
    .await?;
    let created = schedules::submit(&st.scheduler, &body)
        .await
        .map_err(submit_error)?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/schedules`: every schedule with its last jobs.
#[utoipa::path(get, path = "/v1/schedules", operation_id = "list_schedules", tag = "schedules", responses((status = 200, description = "Every schedule, with its next tick and last jobs", body = ScheduleList)))]
pub async fn list(State(st): State<Arc<AppState>>) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: schedules::list(&st.scheduler).await?,
    }))
}

/// `POST /v1/schedules/{id}/pause`: no tick fires until resumed.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", operation_id = "pause_schedule", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")), responses((status = 200, description = "The schedule, paused", body = ScheduleView)))]
pub async fn pause(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    schedules::set_paused(&st.scheduler, &id, true)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("schedule", &id))
}

/// `POST /v1/schedules/{id}/resume`: fires again from the next tick after now.
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", operation_id = "resume_schedule", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")), responses((status = 200, description = "The schedule, resumed", body = ScheduleView)))]
pub async fn resume(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    schedules::set_paused(&st.scheduler, &id, false)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("schedule", &id))
}

/// `DELETE /v1/schedules/{id}`: no more ticks; the jobs it made stay.
#[utoipa::path(delete, path = "/v1/schedules/{id}", operation_id = "delete_schedule", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")), responses((status = 200, description = "Deleted", body = serde_json::Value)))]
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if schedules::delete(&st.scheduler, &id).await? {
        Ok(Json(serde_json::json!({"id": id, "deleted": true})))
    } else {
        Err(ApiError::not_found("schedule", &id))
    }
}
