//! HTTP calls to the coordinator's agent endpoints (see
//! [`musketeer_tasks::protocol`]), how their failures are classified, and
//! the backoff between retries.

use std::error::Error as StdError;
use std::future::Future;
use std::time::{Duration, Instant};

use musketeer_tasks::protocol::{
    EnrolRequest, EnrolResponse, ErrorBody, Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse,
    Release, ReleaseAck, ReleaseInfo, ResultAck, ResultBatch, POSTCARD_CONTENT_TYPE,
};
use musketeer_tasks::wasm::ModuleId;
use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::trust::{is_ca_mismatch, CaMismatch, Trust};

/// How long to wait for a TCP and TLS connection: a coordinator that takes
/// longer is as good as down, and the call is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a call that the coordinator answers at once.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a long poll's `wait_ms` for its deadline, so that the client
/// never gives up on a coordinator that is still legitimately waiting.
const LONG_POLL_SLACK: Duration = Duration::from_secs(15);
/// First pause after a failed call.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest pause between retries: long enough not to hammer a coordinator
/// that is restarting, short enough that agents come back soon after it.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a call to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 401: the credential (or, at enrolment, the token) is not accepted.
    #[error("the coordinator answered 401 Unauthorized: {0}")]
    Unauthorized(String),
    /// The server's certificate does not chain to the pinned CA.
    #[error(transparent)]
    CaMismatch(#[from] CaMismatch),
    /// Not reachable, timed out, or a 5xx, 408 or 429: worth retrying.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    /// Any other 4xx: the coordinator refused this request.
    #[error("the coordinator refused the request ({status}, {code}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The error body's code.
        code: String,
        /// The error body's message.
        message: String,
    },
    /// A 2xx whose body is not what the protocol says.
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether retrying can never help: the credential is gone or the server
    /// is not the one we trust.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized(_) | ClientError::CaMismatch(_)
        )
    }
}

/// The agent endpoints, as the work loop uses them; [`Client`] speaks them
/// over HTTPS, and tests put a fake coordinator behind the same calls.
pub trait AgentApi: Clone + Send + Sync + 'static {
    /// `POST /v1/agent/lease`.
    fn lease(
        &self,
        req: &LeaseRequest,
    ) -> impl Future<Output = Result<LeaseResponse, ClientError>> + Send;
    /// `POST /v1/agent/results`.
    fn results(
        &self,
        batch: &ResultBatch,
    ) -> impl Future<Output = Result<ResultAck, ClientError>> + Send;
    /// `POST /v1/agent/heartbeat`.
    fn heartbeat(
        &self,
        hb: &Heartbeat,
    ) -> impl Future<Output = Result<HeartbeatAck, ClientError>> + Send;
    /// `POST /v1/agent/release`.
    fn release(&self, r: &Release) -> impl Future<Output = Result<ReleaseAck, ClientError>> + Send;
    /// `GET /v1/agent/modules/{id}`: a WebAssembly module's bytes (not yet
    /// verified against the id: the caller does that).
    fn module(&self, id: &ModuleId) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send;
}

/// An HTTPS client for one coordinator.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `https://host:port`, without a trailing slash.
    base: String,
    /// The bearer credential; `None` before enrolment.
    credential: Option<String>,
}

impl Client {
    /// A client for the coordinator at `base` (see [`normalize_url`]) that
    /// trusts `trust` and authenticates with `credential`.
    pub fn new(
        base: &str,
        trust: &Trust,
        credential: Option<String>,
    ) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(trust.client_config())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("musketeer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            credential,
        })
    }

    /// The coordinator's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/agent/enrol`: trades a join token for a credential.
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<EnrolResponse, ClientError> {
        let resp = self
            .send(self.post("/v1/agent/enrol").json(req), CALL_TIMEOUT)
            .await?;
        json_body(resp).await
    }

    /// `GET /v1/agent/self`: what the coordinator knows of this agent (its
    /// record as `GET /v1/agents` lists it: state, leases, credit, trust).
    pub async fn whoami(&self) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(self.get("/v1/agent/self"), CALL_TIMEOUT).await?;
        json_body(resp).await
    }

    /// `GET /v1/agent/update?target=`: the newest release for `target`, or
    /// `None` when the coordinator has none.
    pub async fn latest_release(&self, target: &str) -> Result<Option<ReleaseInfo>, ClientError> {
        let req = self.get("/v1/agent/update").query(&[("target", target)]);
        match self.send(req, CALL_TIMEOUT).await {
            Ok(resp) => json_body(resp).await.map(Some),
            Err(ClientError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/agent/update/{target}/{version}`: the release's binary, at
    /// most `max_bytes` (a larger answer is refused before it is all read).
    pub async fn download_release(
        &self,
        info: &ReleaseInfo,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/agent/update/{}/{}", info.target, info.version);
        let mut resp = self.send(self.get(&path), timeout).await?;
        let mut body = Vec::with_capacity(info.size.min(max_bytes) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(ClientError::Protocol(format!(
                    "the release is larger than {max_bytes} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.base));
        match &self.credential {
            Some(c) => req.bearer_auth(c),
            None => req,
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.post(format!("{}{path}", self.base));
        match &self.credential {
            Some(c) => req.bearer_auth(c),
            None => req,
        }
    }

    /// Sends `req`, turning transport failures and non-2xx answers into [`ClientError`]s.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.timeout(timeout).send().await.map_err(transport_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                status.as_str().to_string(),
                String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_string(),
            ),
        };
        Err(status_error(status, code, message))
    }
}

impl AgentApi for Client {
    async fn lease(&self, req: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        let timeout = Duration::from_millis(req.wait_ms) + LONG_POLL_SLACK;
        let resp = self
            .send(self.post("/v1/agent/lease").json(req), timeout)
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type.starts_with(POSTCARD_CONTENT_TYPE) {
            return Err(ClientError::Protocol(format!(
                "a lease came as {content_type:?}, not {POSTCARD_CONTENT_TYPE}"
            )));
        }
        let body = resp.bytes().await.map_err(transport_error)?;
        postcard::from_bytes(&body)
            .map_err(|e| ClientError::Protocol(format!("cannot decode a lease: {e}")))
    }

    async fn results(&self, batch: &ResultBatch) -> Result<ResultAck, ClientError> {
        let body = musketeer_tasks::protocol::encode(batch)
            .map_err(|e| ClientError::Protocol(format!("cannot encode results: {e}")))?;
        let req = self
            .post("/v1/agent/results")
            .header(CONTENT_TYPE, POSTCARD_CONTENT_TYPE)
            .body(body);
        json_body(self.send(req, CALL_TIMEOUT).await?).await
    }

    async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        let resp = self
            .send(self.post("/v1/agent/heartbeat").json(hb), CALL_TIMEOUT)
            .await?;
        json_body(resp).await
    }

    async fn release(&self, r: &Release) -> Result<ReleaseAck, ClientError> {
        let resp = self
            .send(self.post("/v1/agent/release").json(r), CALL_TIMEOUT)
            .await?;
        json_body(resp).await
    }

    async fn module(&self, id: &ModuleId) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/agent/modules/{id}");
        let mut resp = self.send(self.get(&path), MODULE_TIMEOUT).await?;
        let max = musketeer_tasks::wasm::validate::MAX_MODULE_BYTES;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(ClientError::Protocol(format!(
                    "module {id} is larger than the {max} bytes a module may have"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// How long a module's download may take (at most 16 MiB).
const MODULE_TIMEOUT: Duration = Duration::from_secs(60);

async fn json_body<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
    let body = resp.bytes().await.map_err(transport_error)?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(format!("bad JSON answer: {e}")))
}

fn transport_error(e: reqwest::Error) -> ClientError {
    if is_ca_mismatch(&e) {
        return ClientError::CaMismatch(CaMismatch);
    }
    ClientError::Unavailable(error_chain(&e))
}

/// Classifies a non-2xx answer.
fn status_error(status: StatusCode, code: String, message: String) -> ClientError {
    match status.as_u16() {
        401 => ClientError::Unauthorized(message),
        408 | 429 => ClientError::Unavailable(format!("{status}: {message}")),
        s if s >= 500 => ClientError::Unavailable(format!("{status}: {message}")),
        s => ClientError::Rejected {
            status: s,
            code,
            message,
        },
    }
}

/// An error and its causes on one line: reqwest's own message ("error
/// sending request") says nothing about what went wrong underneath.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}

/// Checks a coordinator URL and strips its trailing slash: HTTPS only, and a
/// bare `host:port` is taken to mean `https://host:port`.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("the coordinator URL is empty: give it as https://HOST:PORT".into());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        return Err(format!(
            "{url} is plain HTTP: the coordinator serves HTTPS only, use https://{rest}"
        ));
    }
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    match reqwest::Url::parse(&full) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(full.trim_end_matches('/').to_string())
        }
        Ok(u) => Err(format!(
            "{url} is not an https:// URL (scheme {:?}): give it as https://HOST:PORT",
            u.scheme()
        )),
        Err(e) => Err(format!(
            "{url} is not a valid URL ({e}): give it as https://HOST:PORT"
        )),
    }
}

/// Exponential backoff: 0.2 s doubling to 30 s, each pause jittered.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The un-jittered pause before the next retry, then doubles it.
    pub fn next_base(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        base
    }

    /// The pause before the next retry, with jitter.
    pub fn next_delay(&mut self) -> Duration {
        jitter(self.next_base(), rand::thread_rng().gen())
    }

    /// After a success: the next failure starts again from the shortest pause.
    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// "Equal jitter": between half and all of `base`, by `unit` in [0, 1), so
/// that agents cut off together do not come back in lockstep, yet none
/// retries much sooner than the schedule says.
pub fn jitter(base: Duration, unit: f64) -> Duration {
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Logs an outage once when it starts and once when it ends, however many
/// calls fail in between.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<Instant>,
}

impl Outage {
    /// A call failed with a retryable error.
    pub fn failed(&mut self, what: &str, err: &ClientError) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!("{what} failed, will keep retrying: {err}");
        } else {
            tracing::debug!("{what} failed again: {err}");
        }
    }

    /// A call succeeded.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                "coordinator reachable again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Whether calls are failing now.
    pub fn is_down(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let mut b = Backoff::default();
        let bases: Vec<u64> = (0..11).map(|_| b.next_base().as_millis() as u64).collect();
        assert_eq!(
            bases,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_base(), BACKOFF_START);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= BACKOFF_START / 4 && d <= BACKOFF_MAX, "{d:?}");
        }
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let base = Duration::from_secs(10);
        assert_eq!(jitter(base, 0.0), Duration::from_secs(5));
        assert_eq!(jitter(base, 0.5), Duration::from_millis(7500));
        assert!(jitter(base, 0.999_999) <= base);
        assert_eq!(jitter(base, 7.0), base);
    }

    #[test]
    fn statuses_are_classified() {
        let e = |s: u16| status_error(StatusCode::from_u16(s).unwrap(), "c".into(), "m".into());
        assert!(matches!(e(401), ClientError::Unauthorized(m) if m == "m"));
        assert!(e(401).is_fatal());
        assert!(matches!(e(500), ClientError::Unavailable(_)));
        assert!(matches!(e(503), ClientError::Unavailable(_)));
        assert!(matches!(e(429), ClientError::Unavailable(_)));
        assert!(matches!(e(408), ClientError::Unavailable(_)));
        assert!(matches!(e(400), ClientError::Rejected { status: 400, .. }));
        assert!(matches!(e(403), ClientError::Rejected { status: 403, .. }));
        assert!(!e(503).is_fatal() && !e(400).is_fatal());
    }

    mod over_tls {
        use musketeer_tasks::protocol::{Capacity, LeaseRequest, LeaseResponse};
        use musketeer_tasks::token::{ca_digest, CaPin};

        use super::*;
        use crate::test_server::{serve, Canned};
        use crate::trust::tests::test_pki;

        fn lease_request() -> LeaseRequest {
            LeaseRequest {
                max_work: 10,
                max_tasks: 2,
                wait_ms: 0,
                capacity: Capacity::default(),
            }
        }

        #[tokio::test]
        async fn leases_must_be_postcard_and_errors_carry_the_message() {
            let pki = test_pki();
            let postcard = Canned {
                status: 200,
                content_type: POSTCARD_CONTENT_TYPE,
                body: postcard::to_stdvec(&LeaseResponse {
                    tasks: vec![],
                    lease_ttl_ms: 1234,
                })
                .unwrap(),
            };
            let (url, seen) = serve(
                &pki,
                vec![
                    postcard,
                    Canned::json(200, "{}"),
                    Canned::json(503, r#"{"error":{"code":"busy","message":"store locked"}}"#),
                    Canned::json(
                        400,
                        r#"{"error":{"code":"invalid_capacity","message":"too many labels"}}"#,
                    ),
                ],
            );
            let trust = Trust::from_pin(CaPin::Digest(ca_digest(&pki.ca_der)));
            let client = Client::new(&url, &trust, Some("MSKAGT-a1-s".into())).unwrap();

            let resp = client.lease(&lease_request()).await.unwrap();
            assert_eq!(resp.lease_ttl_ms, 1234);
            let req = seen.recv().unwrap();
            assert_eq!(req.request_line, "POST /v1/agent/lease HTTP/1.1");
            assert_eq!(req.header("authorization"), Some("Bearer MSKAGT-a1-s"));
            assert_eq!(req.header("content-type"), Some("application/json"));
            let body: LeaseRequest = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(body, lease_request());

            let e = client.lease(&lease_request()).await.unwrap_err();
            assert!(matches!(e, ClientError::Protocol(_)), "{e:?}");
            let e = client.lease(&lease_request()).await.unwrap_err();
            assert!(
                matches!(&e, ClientError::Unavailable(m) if m.contains("store locked")),
                "{e:?}"
            );
            let e = client.lease(&lease_request()).await.unwrap_err();
            assert!(
                matches!(&e, ClientError::Rejected { status: 400, code, message } if code == "invalid_capacity" && message == "too many labels"),
                "{e:?}"
            );
        }

        #[tokio::test]
        async fn results_go_up_as_postcard() {
            let pki = test_pki();
            let (url, seen) = serve(&pki, vec![Canned::json(200, r#"{"accepted":1,"stale":0}"#)]);
            let trust = Trust::from_pin(CaPin::Digest(ca_digest(&pki.ca_der)));
            let client = Client::new(&url, &trust, Some("MSKAGT-a1-s".into())).unwrap();
            let batch = ResultBatch { results: vec![] };
            let ack = client.results(&batch).await.unwrap();
            assert_eq!(ack.accepted, 1);
            let req = seen.recv().unwrap();
            assert_eq!(req.header("content-type"), Some(POSTCARD_CONTENT_TYPE));
            assert_eq!(
                postcard::from_bytes::<ResultBatch>(&req.body).unwrap(),
                batch
            );
        }

        #[tokio::test]
        async fn a_closed_port_is_an_outage_not_an_error() {
            let pki = test_pki();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let trust = Trust::from_pin(CaPin::Digest(ca_digest(&pki.ca_der)));
            let client = Client::new(&format!("https://127.0.0.1:{port}"), &trust, None).unwrap();
            let e = client.lease(&lease_request()).await.unwrap_err();
            assert!(
                matches!(e, ClientError::Unavailable(_)) && !e.is_fatal(),
                "{e:?}"
            );
        }
    }

    #[test]
    fn urls_are_https_only() {
        assert_eq!(
            normalize_url("https://c.example:8443/"),
            Ok("https://c.example:8443".into())
        );
        assert_eq!(
            normalize_url(" 10.0.0.5:8443 "),
            Ok("https://10.0.0.5:8443".into())
        );
        assert!(normalize_url("http://c:80")
            .unwrap_err()
            .contains("https://c:80"));
        assert!(normalize_url("ftp://c").is_err());
        assert!(normalize_url("").is_err());
        assert!(normalize_url("https://").is_err());
    }
}
