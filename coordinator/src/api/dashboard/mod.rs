//! The web dashboard: a login page, one page of HTML, CSS and a small
//! vanilla script, all bundled into the binary (no CDN, no web fonts: the
//! machines that run a coordinator may have no internet), and the live data
//! it draws, sent as server-sent events.
//!
//! Who sees what is the route table's business ([`super::Access`]): the
//! page and its assets are public (they hold no data), the snapshot and the
//! event stream are `Dashboard` routes (a session or a token; anyone with
//! `--public-dashboard`), and the actions the page offers (cancel a job or
//! retry a failed one's failed tasks, drain or remove an agent, pause or
//! resume a schedule, delete a module) are the API's own admin routes,
//! called with the session cookie and its CSRF token (see
//! [`super::session`]).

mod snapshot;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::Stream;
use musketeer_tasks::token::{secret_hash, ViewerToken};

use super::auth::{self, hashes_match, Anonymous, Operator};
use super::error::read_body;
use super::session::{self, Role};
use super::{ApiError, AppState};
use crate::store::TokenRole;
pub use snapshot::{Snapshot, View};

const LOGIN_HTML: &str = include_str!("login.html");
const APP_HTML: &str = include_str!("app.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// How often the event stream sends a fresh snapshot.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// Headers every dashboard page carries: only our own scripts and styles
/// run, no other site may frame it, nothing is cached.
fn page_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with the
    // login form, which [`same_origin`] would refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

fn html(body: String) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    page_headers(r.headers_mut());
    r
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The login page, with a message if the last attempt failed.
fn login_page(message: Option<&str>) -> String {
    let message = message
        .map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(m)))
        .unwrap_or_default();
    LOGIN_HTML.replace("{{message}}", &message)
}

/// `GET /`: the dashboard for a logged-in operator (or anyone, with
/// `--public-dashboard`), else the login page. Neither holds data: the
/// page fetches it from the event stream.
#[utoipa::path(get, path = "/", tag = "dashboard", responses((status = 200, description = "The dashboard, or the login page without a session", content_type = "text/html", body = String)))]
pub async fn page(
    State(st): State<Arc<AppState>>,
    _: Anonymous,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let op = match auth::operator(&headers, &method, &st, st.public_dashboard).await {
        Ok(op) => op,
        Err(_) => return html(login_page(None)),
    };
    // The CSRF token of the session the page was served to; a page served
    // on a bearer token or to the public has none and can only read.
    let csrf = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(session::from_cookies)
        .and_then(|v| session::verify(&st.admin_token_hash, v, st.scheduler.now_ms()))
        .map(|s| s.csrf(&st.admin_token_hash))
        .unwrap_or_default();
    let role = match op {
        Operator::Admin => "admin",
        Operator::Viewer => "viewer",
        Operator::Public => "public",
    };
    html(
        APP_HTML
            .replace("{{csrf}}", &esc(&csrf))
            .replace("{{role}}", role),
    )
}

/// `GET /dashboard/app.js`.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard", responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
pub async fn script(_: Anonymous) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

/// `GET /dashboard/app.css`.
#[utoipa::path(get, path = "/dashboard/app.css", tag = "dashboard", responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css", body = String)))]
pub async fn style(_: Anonymous) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

/// A redirect to `/` that also sets (or clears) the session cookie.
fn to_dashboard(cookie: String) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Refuses a form posted from another site's page: a browser names the
/// page's origin, which must be this host (login CSRF: a page elsewhere
/// must not log a visitor in under someone else's token).
fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(()); // not a browser, or a same-origin request of an older one
    };
    // HTTP/1.1 names the host in `Host`, HTTP/2 in the URI's authority.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or(origin);
    if !host.is_empty() && origin_host == host {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a form posted from {origin} is refused: log in from this coordinator's own page"
            ),
        ))
    }
}

/// The token of a login form (`token=...`, URL-encoded).
fn form_token(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
}

/// `POST /login`: a form with the admin token or a viewer token. On
/// success a session cookie and a redirect to `/`; else the login page
/// again (401) with what went wrong.
#[utoipa::path(post, path = "/login", tag = "dashboard", request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=<the admin token or a viewer token>"), responses((status = 303, description = "Logged in: the session cookie is set"), (status = 401, description = "The login page again, saying why", content_type = "text/html", body = String)))]
pub async fn login(
    State(st): State<Arc<AppState>>,
    _: Anonymous,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_origin(&headers, &uri)?;
    let body = read_body(body, 4096, "send only the token").await?;
    let token = form_token(&body).unwrap_or_default();
    let now = st.scheduler.now_ms();
    let key = &st.admin_token_hash;
    if !token.is_empty() && hashes_match(&secret_hash(&token), key) {
        return Ok(to_dashboard(session::set_cookie(&session::issue(
            key,
            Role::Admin,
            None,
            now,
        ))));
    }
    let refused = |message: &str| {
        let mut r = html(login_page(Some(message)));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    let Ok(viewer) = ViewerToken::parse(&token) else {
        return Ok(refused(
            "That is neither the admin token nor a viewer token: paste admin.token from the data directory, or a token from `token create --viewer`.",
        ));
    };
    let hash = secret_hash(&viewer.secret);
    match st.scheduler.store.token_by_hash(hash).await? {
        Some(t) if t.role == TokenRole::Viewer && !t.revoked => Ok(to_dashboard(
            session::set_cookie(&session::issue(key, Role::Viewer, Some(hash), now)),
        )),
        Some(t) if t.role == TokenRole::Viewer => Ok(refused(
            "This viewer token was revoked: ask the operator for a new one.",
        )),
        _ => Ok(refused(
            "Unknown viewer token: ask the operator for one (`token create --viewer`).",
        )),
    }
}

/// `POST /logout`: clears the session cookie.
#[utoipa::path(post, path = "/logout", tag = "dashboard", responses((status = 303, description = "Logged out: the session cookie is cleared")))]
pub async fn logout(_: Anonymous, uri: Uri, headers: HeaderMap) -> Result<Response, ApiError> {
    same_origin(&headers, &uri)?;
    Ok(to_dashboard(session::clear_cookie()))
}

/// `GET /dashboard/snapshot`: what the dashboard shows, once.
#[utoipa::path(get, path = "/dashboard/snapshot", tag = "dashboard", params(View), responses((status = 200, description = "Everything the dashboard shows", body = Snapshot)))]
pub async fn snapshot(
    State(st): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    view: Result<Query<View>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Snapshot>, ApiError> {
    let Query(view) = view.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    Ok(Json(snapshot::gather(&st, op, &view).await?))
}

/// `GET /dashboard/events`: the snapshot as server-sent events, a fresh
/// one every [`EVENT_INTERVAL`] (event `snapshot`; a failed read sends
/// event `problem` with the error and the stream goes on).
#[utoipa::path(get, path = "/dashboard/events", tag = "dashboard", params(View), responses((status = 200, description = "A stream of snapshots", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(st): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    view: Result<Query<View>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(view) = view.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let stream = futures::stream::unfold((st, view, true), move |(st, view, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_INTERVAL).await;
        }
        let event = match snapshot::gather(&st, op, &view).await {
            Ok(snap) => Event::default()
                .event("snapshot")
                .json_data(&snap)
                .unwrap_or_else(|e| Event::default().event("problem").data(e.to_string())),
            Err(e) => Event::default().event("problem").data(e.message),
        };
        Some((Ok(event), (st, view, false)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_forms_and_origins() {
        assert_eq!(
            form_token(b"token=MSKVWR-abc%2Bdef&x=1").as_deref(),
            Some("MSKVWR-abc+def")
        );
        assert_eq!(form_token(b"other=1"), None);
        let path: Uri = "/login".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7443"));
        assert!(
            same_origin(&h, &path).is_ok(),
            "no Origin: not a cross-site form"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:7443"),
        );
        assert!(same_origin(&h, &path).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(
            same_origin(&h, &path).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        // HTTP/2: no Host header, the authority is in the URI.
        let h2: Uri = "https://127.0.0.1:7443/login".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:7443"),
        );
        assert!(same_origin(&h, &h2).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h, &h2).is_err());
    }

    #[test]
    fn the_login_page_escapes_its_message() {
        let page = login_page(Some("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(!login_page(None).contains("{{message}}"));
    }
}
