//! For monitors: `/healthz` and `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::auth::Anonymous;
use super::{ApiError, AppState};
use crate::metrics::label_value;

/// How many of the newest jobs the queue depths count: open jobs are
/// among the newest unless thousands finished after them.
const QUEUE_SCAN: u32 = 10_000;

/// `GET /healthz`: the coordinator answers and its store does too: `200
/// {"status":"ok"}`. Out of space it answers `503 {"status":"degraded",
/// "reason":..}`, so that a monitor pages someone, while reads go on.
#[utoipa::path(get, path = "/healthz", tag = "people", responses((status = 200, description = "The coordinator and its store answer: {\"status\":\"ok\"}", body = serde_json::Value), (status = 503, description = "Degraded: the disk is below the reserve or the store is full; reads go on", body = serde_json::Value)))]
pub async fn healthz(
    State(st): State<Arc<AppState>>,
    _: Anonymous,
) -> Result<axum::response::Response, ApiError> {
    st.scheduler.store.stats().await?;
    let space = &st.space;
    Ok(match space.degraded() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(d) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "degraded",
                "reason": d.message(),
                "free_disk_bytes": space.free(),
                "min_free_disk_bytes": space.min_free(),
            })),
        )
            .into_response(),
    })
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "people", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(
    State(st): State<Arc<AppState>>,
    _: Anonymous,
) -> Result<impl IntoResponse, ApiError> {
    let stats = st.scheduler.store.stats().await?;
    let c = &st.scheduler.counters;
    let mut out = String::new();
    let counters = [
        (
            "musketeer_jobs_submitted_total",
            "Jobs accepted.",
            &c.jobs_submitted,
        ),
        (
            "musketeer_tasks_leased_total",
            "Tasks handed to agents.",
            &c.tasks_leased,
        ),
        (
            "musketeer_results_accepted_total",
            "Task results recorded.",
            &c.results_accepted,
        ),
        (
            "musketeer_results_stale_total",
            "Results ignored because their lease was gone.",
            &c.results_stale,
        ),
        (
            "musketeer_tasks_retried_total",
            "Tasks queued again after a failure.",
            &c.tasks_retried,
        ),
        (
            "musketeer_leases_expired_total",
            "Leases that expired before their result came.",
            &c.leases_expired,
        ),
        (
            "musketeer_jobs_reduced_total",
            "Jobs whose results were aggregated.",
            &c.jobs_reduced,
        ),
        (
            "musketeer_requests_rate_limited_total",
            "Requests refused with 429 by the per-agent or per-address rate limit.",
            &st.limits.refused,
        ),
        (
            "musketeer_requests_refused_no_space_total",
            "Requests refused with 507 because the disk or Redis memory was full, or an upload would not fit the free-disk reserve.",
            &st.space.refused,
        ),
    ];
    for (name, help, value) in counters {
        let v = value.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    }
    let _ = write!(
        out,
        "# HELP musketeer_disk_free_bytes Free bytes on the data directory's disk.\n# TYPE musketeer_disk_free_bytes gauge\nmusketeer_disk_free_bytes {}\n",
        st.space.measure()
    );
    let _ = write!(
        out,
        "# HELP musketeer_jobs Jobs by state.\n# TYPE musketeer_jobs gauge\n"
    );
    for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
        let v = stats.jobs.get(state).copied().unwrap_or(0);
        let _ = writeln!(out, "musketeer_jobs{{state=\"{state}\"}} {v}");
    }
    let _ = write!(
        out,
        "# HELP musketeer_tasks Tasks waiting or leased.\n# TYPE musketeer_tasks gauge\n"
    );
    let _ = writeln!(
        out,
        "musketeer_tasks{{state=\"pending\"}} {}",
        stats.tasks_pending
    );
    let _ = writeln!(
        out,
        "musketeer_tasks{{state=\"leased\"}} {}",
        stats.tasks_leased
    );
    let _ = write!(
        out,
        "# HELP musketeer_agents Agents by state.\n# TYPE musketeer_agents gauge\n"
    );
    for state in ["active", "draining", "removed"] {
        let v = stats.agents.get(state).copied().unwrap_or(0);
        let _ = writeln!(out, "musketeer_agents{{state=\"{state}\"}} {v}");
    }
    let agents = st.scheduler.store.list_agents().await?;
    let mut kinds: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for a in &agents {
        *kinds
            .entry((
                a.state.as_str(),
                a.capacity.arch.as_str(),
                a.capacity.version.as_str(),
            ))
            .or_default() += 1;
    }
    let _ = write!(
        out,
        "# HELP musketeer_agents_by_version Agents by state, architecture and agent version.\n# TYPE musketeer_agents_by_version gauge\n"
    );
    for ((state, arch, version), n) in kinds {
        let _ = writeln!(
            out,
            "musketeer_agents_by_version{{state=\"{state}\",arch=\"{}\",version=\"{}\"}} {n}",
            label_value(arch),
            label_value(version)
        );
    }
    // Kept with each agent in the store, so the count survives restarts
    // and is the same on every coordinator of a shared store.
    let outvoted: u64 = agents.iter().map(|a| a.results_invalid).sum();
    let _ = write!(
        out,
        "# HELP musketeer_results_outvoted_total Replicated results the majority of their task's replicas rejected.\n# TYPE musketeer_results_outvoted_total counter\nmusketeer_results_outvoted_total {outvoted}\n"
    );
    let jobs = st.scheduler.store.list_jobs(QUEUE_SCAN).await?;
    let mut queues: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for j in jobs.iter().filter(|j| !j.state.is_finished()) {
        let q = queues.entry(j.queue.as_str()).or_default();
        q.0 += 1;
        q.1 += j
            .progress
            .total
            .saturating_sub(j.progress.done + j.progress.failed);
    }
    let _ = write!(
        out,
        "# HELP musketeer_queue_jobs Open (queued or running) jobs per queue.\n# TYPE musketeer_queue_jobs gauge\n"
    );
    for (q, (open, _)) in &queues {
        let _ = writeln!(
            out,
            "musketeer_queue_jobs{{queue=\"{}\"}} {open}",
            label_value(q)
        );
    }
    let _ = write!(
        out,
        "# HELP musketeer_queue_depth_tasks Tasks of open jobs not yet done or failed, per queue.\n# TYPE musketeer_queue_depth_tasks gauge\n"
    );
    for (q, (_, left)) in &queues {
        let _ = writeln!(
            out,
            "musketeer_queue_depth_tasks{{queue=\"{}\"}} {left}",
            label_value(q)
        );
    }
    st.scheduler.histograms.render(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
