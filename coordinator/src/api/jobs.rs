//! Submitters' endpoints: submit (JSON, or a streamed text for word count),
//! list, status, result and cancel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use musketeer_tasks::job::{parse_job, JobError, JobOptions, JobSpec};
use musketeer_tasks::wordcount::{self, Chunker, SplitRule, WordcountOptions};
use musketeer_tasks::JobResult;
use serde::Deserialize;
use serde_json::json;

use super::error::read_body;
use super::space::{check_room, content_length};
use super::{ApiError, AppState, MAX_JOB_BODY};
use crate::modules::{self, ModuleError, ModuleUse};
use crate::scheduler::UnsealedJob;
use crate::store::{JobState, JobStatus, NewJob, NewTask, RetryRefusal};

/// Streamed text is cut into chunks of about this size: a few milliseconds
/// of counting each, so many fit in an agent's batch and the last one ends
/// soon after the upload does.
const STREAM_CHUNK_BYTES: usize = 4 << 20;

pub(super) fn job_error(e: JobError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    ApiError::new(status, e.code(), e.to_string())
}

/// A job to store: its id, the options as the store takes them, its times.
pub(super) fn new_job(
    st: &AppState,
    kernel: &str,
    mut options: JobOptions,
    reduce_plan: Vec<u8>,
    module: Option<String>,
) -> Result<NewJob, ApiError> {
    let now = st.scheduler.now_ms();
    let timing = crate::timing::job_timing(&options, now).map_err(job_error)?;
    // `agent` and `arch` are matched as the reserved labels every agent
    // carries (see `agent::lease`), so the store needs no rule of its own.
    options.labels = options.required_labels();
    Ok(NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        kernel: kernel.to_string(),
        options,
        reduce_plan,
        created_ms: now,
        module,
        timing,
    })
}

/// The module a wasm job runs, checked against the store (see
/// [`crate::modules`]).
async fn check_module(st: &AppState, spec: &JobSpec) -> Result<Option<String>, ApiError> {
    let Some(module) = ModuleUse::of(spec) else {
        return Ok(None);
    };
    match modules::check(st.scheduler.store.as_ref(), &module).await {
        Ok(()) => Ok(Some(module.id)),
        Err(ModuleError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code(),
            e.to_string(),
        )),
    }
}

fn created(id: &str, tasks: u64) -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::CREATED, Json(json!({"id": id, "tasks": tasks})))
}

/// `POST /v1/jobs`: a JSON job body.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body(content = serde_json::Value, description = "A job body: `kernel` and its fields, and the options of every job (see the README)", content_type = "application/json"), responses((status = 201, description = "Accepted", body = super::openapi::Submitted), (status = 507, description = "Refused for lack of storage: the job would not leave the free-disk reserve (`insufficient_storage`), or the disk or Redis is full (`store_full`)", body = super::openapi::ErrorBody)))]
pub async fn submit(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    check_room(&st, content_length(&headers).unwrap_or(0))?;
    let body = read_body(
        body,
        MAX_JOB_BODY,
        "stream a large text to POST /v1/jobs/wordcount, or use a `random` matmul",
    )
    .await?;
    let (spec, options) = parse_job(&body).map_err(job_error)?;
    drop(body);
    let module = check_module(&st, &spec).await?;
    let kernel = spec.kernel();
    // Planning and encoding a big job is CPU work: keep it off the I/O threads.
    let plan_options = options.clone();
    let store = st.scheduler.store.clone();
    let (reduce, tasks) =
        tokio::task::spawn_blocking(move || modules::plan(&store, &spec, &plan_options))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(job_error)?;
    let job = new_job(&st, kernel, options, reduce, module)?;
    let id = job.id.clone();
    let total = st.scheduler.submit(job, tasks).await?;
    tracing::info!(job = %id, kernel, tasks = total, "job accepted");
    Ok(created(&id, total))
}

/// How often a streamed upload looks at the free disk space: often enough
/// that the reserve absorbs what arrives in between.
const ROOM_CHECK_BYTES: u64 = 1 << 20;

/// How many chunks may wait for the store while the upload goes on: enough
/// to ride out one slow commit, few enough to bound memory (16 MiB).
const STORE_QUEUE_CHUNKS: usize = 4;

/// Reads the body, cuts it into chunks and hands them to the store task
/// (which counts in `stored` the bytes it wrote); returns the bytes received.
async fn receive_text(
    st: &AppState,
    stream: &mut axum::body::BodyDataStream,
    options: WordcountOptions,
    chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    stored: &AtomicU64,
) -> Result<u64, ApiError> {
    let mut chunker = Chunker::new(options, STREAM_CHUNK_BYTES);
    let mut received = 0u64;
    let mut next_room_check = ROOM_CHECK_BYTES;
    let store_gone = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "the store stopped taking the upload",
        )
    };
    while let Some(frame) = stream.next().await {
        let data = frame
            .map_err(|e| ApiError::bad_request("bad_body", format!("the upload broke off: {e}")))?;
        received += data.len() as u64;
        if received > st.max_upload {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the text is larger than this coordinator's limit of {} MiB (serve --max-upload-mib)",
                    st.max_upload >> 20
                ),
            ));
        }
        if received >= next_room_check {
            next_room_check = received + ROOM_CHECK_BYTES;
            // What is received but not stored yet will need the disk too.
            check_room(st, received.saturating_sub(stored.load(Ordering::Relaxed)))?;
        }
        for chunk in chunker.push(&data).map_err(job_error)? {
            chunks.send(chunk).await.map_err(|_| store_gone())?;
        }
    }
    if received == 0 {
        return Ok(0);
    }
    if let Some(last) = chunker.finish().map_err(job_error)? {
        chunks.send(last).await.map_err(|_| store_gone())?;
    }
    Ok(received)
}

/// Query parameters of the streamed word count: its options and the job's.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Words shorter than this many characters are dropped (default 1).
    min_len: Option<usize>,
    /// How many of the most frequent words the result lists (default 10).
    top: Option<usize>,
    /// Keep case instead of lower-casing every word.
    case_sensitive: Option<bool>,
    /// `words` (default) or `whitespace`, the original Celery demo's rule.
    #[param(value_type = Option<String>)]
    split: Option<SplitRule>,
    /// The job's queue (default `default`).
    queue: Option<String>,
    /// 0..9, 9 first (default 5).
    priority: Option<u8>,
    /// Attempts per task (default 3).
    max_attempts: Option<u32>,
    /// Seconds a task may run.
    timeout_s: Option<u64>,
    /// How many agents must return the same answer (default 1).
    redundancy: Option<u32>,
    /// Only this agent takes the tasks.
    agent: Option<String>,
    /// Only agents of this architecture take the tasks.
    arch: Option<String>,
    /// No task is leased until this many seconds after submission.
    countdown_s: Option<u64>,
    /// No task is leased before this RFC 3339 time.
    not_before: Option<String>,
    /// Tasks never leased by this RFC 3339 time end the job `expired`.
    expires: Option<String>,
    /// The result is deleted this many seconds after the job succeeded.
    result_ttl_s: Option<u64>,
}

/// `POST /v1/jobs/wordcount`: the raw text as the body, options as query
/// parameters. The text is cut into tasks as it arrives, and agents start
/// counting the first chunks while the rest is still uploading.
#[utoipa::path(post, path = "/v1/jobs/wordcount", tag = "jobs", params(StreamParams), request_body(content = String, description = "The raw text, streamed", content_type = "text/plain"), responses((status = 201, description = "Accepted", body = super::openapi::Submitted), (status = 507, description = "Refused for lack of storage: the job would not leave the free-disk reserve (`insufficient_storage`), or the disk or Redis is full (`store_full`)", body = super::openapi::ErrorBody)))]
pub async fn submit_wordcount_stream(
    State(st): State<Arc<AppState>>,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    // Refused before a byte is read when the announced text cannot fit.
    check_room(&st, content_length(&headers).unwrap_or(0))?;
    let defaults = WordcountOptions::default();
    let wc = WordcountOptions {
        min_len: p.min_len.unwrap_or(defaults.min_len),
        top: p.top.unwrap_or(defaults.top),
        case_sensitive: p.case_sensitive.unwrap_or(defaults.case_sensitive),
        split: p.split.unwrap_or(defaults.split),
    };
    let d = JobOptions::default();
    let options = JobOptions {
        queue: p.queue.unwrap_or(d.queue),
        priority: p.priority.unwrap_or(d.priority),
        max_attempts: p.max_attempts.unwrap_or(d.max_attempts),
        timeout_s: p.timeout_s.or(d.timeout_s),
        redundancy: p.redundancy.unwrap_or(d.redundancy),
        agent: p.agent,
        arch: p.arch,
        countdown_s: p.countdown_s,
        not_before: p.not_before,
        expires: p.expires,
        result_ttl_s: p.result_ttl_s,
        ..d
    };
    options.validate().map_err(job_error)?;

    let chunker_options = wc.clone();
    let job = new_job(
        &st,
        "wordcount",
        options,
        wordcount::reduce_plan(&wc).encode(),
        None,
    )?;
    let id = job.id.clone();
    let store = st.scheduler.store.clone();
    // Armed first: a begin cut short leaves pieces to remove too.
    let guard = UnsealedJob::new(store.clone(), &id);
    store.begin_job(job).await?;

    // Receiving and storing run side by side: while chunks are written and
    // committed, the socket keeps being read (a sequential loop stalled the
    // sender on every commit). The store task takes every chunk queued
    // since its last commit into one transaction.
    let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(STORE_QUEUE_CHUNKS);
    let stored = Arc::new(AtomicU64::new(0));
    let storer = {
        let stored = stored.clone();
        let store = store.clone();
        let scheduler = st.scheduler.clone();
        let id = id.clone();
        tokio::spawn(async move {
            while let Some(first) = chunk_rx.recv().await {
                let mut chunks = vec![first];
                while let Ok(more) = chunk_rx.try_recv() {
                    chunks.push(more);
                }
                let wc = wc.clone();
                let bytes: usize = chunks.iter().map(Vec::len).sum();
                let tasks = tokio::task::spawn_blocking(move || {
                    chunks
                        .into_iter()
                        .map(|c| {
                            let (input, cost) = wordcount::task_for_chunk(&wc, c);
                            NewTask {
                                input: input.encode(),
                                cost,
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .map_err(|e| crate::store::StoreError::Worker(e.to_string()))?;
                store.add_tasks(&id, tasks).await?;
                stored.fetch_add(bytes as u64, Ordering::Relaxed);
                scheduler.signal_work();
            }
            Ok::<(), crate::store::StoreError>(())
        })
    };
    let mut stream = body.into_data_stream();
    let received = receive_text(&st, &mut stream, chunker_options, chunk_tx, &stored).await;
    let stored = storer
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    // A storage failure explains a receive that stopped early; report it first.
    stored?;
    let received = received?;
    if received == 0 {
        return Err(job_error(JobError::Invalid("text is empty".into())));
    }
    let total = st.scheduler.seal(&id).await?;
    guard.disarm();
    tracing::info!(job = %id, bytes = received, tasks = total, "word count upload accepted");
    Ok(created(&id, total))
}

/// `?limit=` of the job list.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
}

/// `GET /v1/jobs`: the newest jobs first.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs", params(("limit" = Option<u32>, Query, description = "At most this many jobs, newest first (default 100)")), responses((status = 200, description = "The newest jobs first", body = super::openapi::JobList)))]
pub async fn list(
    State(st): State<Arc<AppState>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let jobs = st
        .scheduler
        .store
        .list_jobs(p.limit.unwrap_or(100).min(10_000))
        .await?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn find(st: &AppState, id: &str) -> Result<JobStatus, ApiError> {
    st.scheduler
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))
}

/// `GET /v1/jobs/{id}`.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "The job's id")), responses((status = 200, description = "Its state and progress", body = JobStatus)))]
pub async fn status(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(find(&st, &id).await?))
}

/// `DELETE /v1/jobs/{id}`: cancel, and free the disk the inputs of
/// finished jobs hold at once (an operator out of space deletes jobs to
/// make room, and must not wait for the next sweep).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "The job's id")), responses((status = 200, description = "Cancelled (again, if it already was)", body = JobStatus)))]
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job = st
        .scheduler
        .store
        .cancel_job(&id, st.scheduler.now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    let purged = st
        .scheduler
        .store
        .purge_finished_inputs(st.scheduler.now_ms())
        .await?;
    if purged > 0 {
        tracing::info!(job = %id, purged, "inputs of finished jobs deleted");
    }
    match job.state {
        JobState::Cancelled => Ok(Json(job)),
        state => Err(ApiError {
            state: Some(state),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                match state {
                    JobState::Failed => format!(
                        "job {id} already failed: nothing to cancel (the inputs it kept for a \
                         retry are deleted now; resubmit the job to run it again)"
                    ),
                    state => format!("job {id} already {}: nothing to cancel", state.as_str()),
                },
            )
        }),
    }
}

/// `POST /v1/jobs/{id}/retry`: queue a failed job's failed tasks again
/// (and those its failure cancelled), keeping its done tasks' outputs; the
/// job runs on and finishes as any job does.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "The job's id")), responses((status = 200, description = "Retried: the job is queued or running again", body = JobStatus), (status = 409, description = "Not retryable: not failed, a workflow's step, past its expires time, its module deleted, or its inputs no longer kept, 24 h after it failed (resubmit it): `job_not_retryable`", body = super::openapi::ErrorBody)))]
pub async fn retry(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    match st.scheduler.retry_failed_tasks(&id).await? {
        Ok(_) => Ok(Json(find(&st, &id).await?)),
        Err(RetryRefusal::NotFound) => Err(ApiError::not_found("job", &id)),
        Err(refusal) => Err(ApiError {
            state: match refusal {
                RetryRefusal::NotFailed(state) => Some(state),
                _ => Some(JobState::Failed),
            },
            ..ApiError::new(
                StatusCode::CONFLICT,
                "job_not_retryable",
                refusal.message(&id),
            )
        }),
    }
}

/// `?format=` of a result.
#[derive(Debug, Deserialize)]
pub struct ResultParams {
    format: Option<String>,
}

/// `GET /v1/jobs/{id}/result[?format=json|tsv|npy]`.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs", params(("id" = String, Path, description = "The job's id"), ("format" = Option<String>, Query, description = "`json` (default), `tsv` (word count) or `npy` (matmul)")), responses((status = 200, description = "The aggregated result", content((serde_json::Value = "application/json"), (String = "text/tab-separated-values"), (Vec<u8> = "application/octet-stream"))), (status = 410, description = "The result was deleted when its `result_ttl_s` ran out (`result_expired`)", body = super::openapi::ErrorBody)))]
pub async fn result(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    params: Result<Query<ResultParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let job = find(&st, &id).await?;
    if job.state != JobState::Succeeded {
        let message = match (&job.state, &job.error) {
            (JobState::Failed, Some(e)) => format!("job {id} failed: {e}"),
            (JobState::Expired, Some(e)) => format!("job {id} {e}"),
            (s, _) if s.is_finished() => format!("job {id} is {}: it has no result", s.as_str()),
            (s, _) => format!(
                "job {id} is {}: {} of {} tasks done; ask again when it has succeeded",
                s.as_str(),
                job.progress.done,
                job.progress.total
            ),
        };
        return Err(ApiError {
            state: Some(job.state),
            ..ApiError::new(StatusCode::CONFLICT, "not_finished", message)
        });
    }
    let expired = || {
        let at = job.result_expires_ms.map(crate::timing::rfc3339);
        ApiError::new(
            StatusCode::GONE,
            "result_expired",
            format!(
                "the result of job {id} was deleted at {} (its `result_ttl_s` ran out): submit the job again to compute it",
                at.unwrap_or_default()
            ),
        )
    };
    if job.result_expired(st.scheduler.now_ms()) {
        return Err(expired());
    }
    let bytes = match st.scheduler.store.job_result(&id).await? {
        Some(bytes) => bytes,
        // Deleted between the two reads.
        None if job.result_expires_ms.is_some() => return Err(expired()),
        None => return Err(ApiError::not_found("result of job", &id)),
    };
    let format = p.format.unwrap_or_else(|| "json".into());
    let rendered = tokio::task::spawn_blocking(move || {
        let result = JobResult::decode(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_result",
                e.to_string(),
            )
        })?;
        result
            .render(&format)
            .map_err(|e| ApiError::bad_request("unsupported_format", e.to_string()))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let (body, content_type) = rendered;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `GET /v1/jobs/{id}/why`: why a queued or running job's waiting tasks
/// wait (see [`crate::scheduler::why`]); no reasons when nothing waits.
#[utoipa::path(get, path = "/v1/jobs/{id}/why", tag = "jobs", params(("id" = String, Path, description = "The job's id")), responses((status = 200, description = "Why its waiting tasks wait", body = crate::scheduler::why::Why)))]
pub async fn why(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<crate::scheduler::why::Why>, ApiError> {
    st.scheduler
        .why(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job", &id))
}
