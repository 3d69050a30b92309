//! A client of the Musketeer coordinator's API over pinned TLS: the admin
//! CLI, the demo and the end-to-end tests all speak to a coordinator
//! through it, so none of them needs the coordinator's own code to do so.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::sync::Arc;
use std::time::Duration;

use musketeer_tasks::protocol::ErrorBody;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::Value;

/// Why a call to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA certificate or the TLS set-up is unusable.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The coordinator did not answer (down, wrong URL, TLS refused).
    #[error("cannot reach the coordinator at {base}: {source}")]
    Unreachable {
        /// The base URL tried.
        base: String,
        /// What the HTTP client saw.
        source: reqwest::Error,
    },
    /// The coordinator answered with an API error body.
    #[error("{code} ({status}): {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The error's machine-readable code.
        code: String,
        /// The error's message, for a person.
        message: String,
    },
    /// The coordinator answered an error without the API's error body (a
    /// proxy in between, say).
    #[error("the coordinator answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The body as text.
        body: String,
    },
    /// The answer could not be read or is not what the API promises.
    #[error("cannot read the coordinator's answer: {0}")]
    Answer(String),
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> ClientError {
        ClientError::Answer(e.to_string())
    }
}

/// Shorthand for client results.
pub type ClientResult<T> = Result<T, ClientError>;

/// An authenticated API client. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// A client of `base` with `token`, trusting the CA in `ca_pem` (or the
    /// public web roots when there is none).
    pub fn new(base: &str, token: &str, ca_pem: Option<&[u8]>) -> ClientResult<ApiClient> {
        let tls_error = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert =
                        cert.map_err(|e| ClientError::Tls(format!("the CA file is not PEM: {e}")))?;
                    roots.add(cert).map_err(|e| tls_error(&e))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| tls_error(&e))?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// A request to `path` (under the base URL) with the client's token
    /// (none if the token is empty).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{}", self.base, path));
        if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(&self.token)
        }
    }

    /// Sends, and turns an API error body into an error that reads well.
    pub async fn send(&self, req: RequestBuilder) -> ClientResult<Response> {
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api {
                status,
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ClientError::Status { status, body: text },
        })
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> ClientResult<Value> {
        Ok(self
            .send(self.request(Method::GET, path))
            .await?
            .json()
            .await?)
    }
}

/// Submits a JSON job body; returns its id.
pub async fn submit_json(c: &ApiClient, body: Vec<u8>) -> ClientResult<String> {
    let req = c
        .request(Method::POST, "/v1/jobs")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    let v: Value = c.send(req).await?.json().await?;
    Ok(v["id"]
        .as_str()
        .ok_or_else(|| ClientError::Answer("no id in the answer".into()))?
        .to_string())
}

/// Waits for a job to finish, calling `progress` with each status seen;
/// returns its final status.
pub async fn wait_with(
    c: &ApiClient,
    id: &str,
    mut progress: impl FnMut(&Value),
) -> ClientResult<Value> {
    loop {
        let v = c.get_json(&format!("/v1/jobs/{id}")).await?;
        progress(&v);
        match v["state"].as_str() {
            Some("succeeded" | "failed" | "cancelled") => return Ok(v),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits for a job to finish; returns its final status.
pub async fn wait(c: &ApiClient, id: &str) -> ClientResult<Value> {
    wait_with(c, id, |_| {}).await
}

/// Fetches a finished job's result in `format`.
pub async fn result_bytes(c: &ApiClient, id: &str, format: &str) -> ClientResult<Vec<u8>> {
    let resp = c
        .send(c.request(
            Method::GET,
            &format!("/v1/jobs/{id}/result?format={format}"),
        ))
        .await?;
    Ok(resp.bytes().await?.to_vec())
}
