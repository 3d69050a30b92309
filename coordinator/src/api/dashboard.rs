//! For people and monitors: the web dashboard, `/healthz` and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::json;

use super::auth::Anonymous;
use super::{ApiError, AppState};

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
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// Escapes text for HTML: agent-supplied names reach this page.
/// An agent's trust, and how often it was outvoted.
fn trust_cell(a: &crate::store::AgentRecord) -> String {
    let level = match a.trust {
        crate::store::Trust::New => "new",
        crate::store::Trust::Trusted => "trusted",
        crate::store::Trust::Suspect => "<b>suspect</b>",
    };
    match a.results_invalid {
        0 => level.to_string(),
        n => format!("{level} ({n} of {} outvoted)", n + a.results_valid),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `GET /`: the cluster at a glance, refreshed every two seconds. Read-only
/// and without secrets, like the public status pages of volunteer projects.
#[utoipa::path(get, path = "/", tag = "people", responses((status = 200, description = "The web dashboard", content_type = "text/html", body = String)))]
pub async fn page(State(st): State<Arc<AppState>>, _: Anonymous) -> Result<Html<String>, ApiError> {
    let store = &st.scheduler.store;
    let stats = store.stats().await?;
    let agents = store.list_agents().await?;
    let jobs = store.list_jobs(20).await?;
    let now = st.scheduler.now_ms();
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
         <title>Musketeer</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin-bottom:2em}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\
         .bar{background:#eee;width:12em;height:.8em}.bar div{background:#3a7;height:100%}</style></head><body>\
         <h1>Musketeer</h1>",
    );
    if let Some(d) = st.space.degraded() {
        let _ = write!(
            h,
            "<p style=\"color:#b00\"><b>Degraded:</b> {}</p>",
            esc(&d.message())
        );
    }
    let active = stats.agents.get("active").copied().unwrap_or(0);
    let cores: u64 = agents
        .iter()
        .filter(|a| a.state == crate::store::AgentState::Active)
        .map(|a| a.capacity.cpus as u64)
        .sum();
    let _ = write!(
        h,
        "<p>{active} active agents, {cores} cores &middot; {} tasks waiting, {} running</p>",
        stats.tasks_pending, stats.tasks_leased
    );
    h.push_str("<h2>Agents</h2><table><tr><th>id</th><th>host</th><th>arch</th><th>cpus</th><th>memory</th><th>state</th><th>last seen</th><th>running</th><th>tasks done</th><th>cpu time</th><th>trust</th></tr>");
    for a in &agents {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} MiB</td><td>{}</td><td>{}s ago</td><td>{}</td><td>{}</td><td>{:.1}s</td><td>{}</td></tr>",
            esc(&a.id),
            esc(&a.capacity.hostname),
            esc(&a.capacity.arch),
            a.capacity.cpus,
            a.capacity.memory_bytes >> 20,
            a.state.as_str(),
            now.saturating_sub(a.last_seen_ms) / 1000,
            a.leased,
            a.tasks_done,
            a.cpu_ms as f64 / 1000.0,
            trust_cell(a)
        );
    }
    h.push_str("</table><h2>Recent jobs</h2><table><tr><th>id</th><th>kernel</th><th>state</th><th>progress</th><th>tasks</th></tr>");
    for j in &jobs {
        let pct = (j.progress.done * 100)
            .checked_div(j.progress.total)
            .unwrap_or(0);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><div class=bar><div style=\"width:{pct}%\"></div></div></td><td>{}/{}</td></tr>",
            esc(&j.id),
            esc(&j.kernel),
            j.state.as_str(),
            j.progress.done,
            j.progress.total
        );
    }
    h.push_str("</table></body></html>");
    Ok(Html(h))
}
