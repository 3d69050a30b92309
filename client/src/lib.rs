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
                if roots.is_empty() {
                    return Err(ClientError::Tls(
                        "the CA file holds no PEM certificate: give the coordinator's ca.pem"
                            .into(),
                    ));
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
            Some("succeeded" | "failed" | "cancelled" | "expired") => return Ok(v),
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

/// A module as `POST /v1/modules` answers and `GET /v1/modules` lists it.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `sha256:<hex of the bytes>`.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was uploaded (ms since the Unix epoch); absent on upload.
    #[serde(default)]
    pub created_ms: u64,
    /// Whether it exports `musketeer_reduce`.
    #[serde(default)]
    pub has_reduce: bool,
    /// Whether an unfinished job uses it.
    #[serde(default)]
    pub in_use: bool,
}

/// Uploads a WebAssembly module; returns it and whether it is new (201)
/// rather than stored already (200).
pub async fn push_module(c: &ApiClient, wasm: Vec<u8>) -> ClientResult<(ModuleInfo, bool)> {
    let req = c
        .request(Method::POST, "/v1/modules")
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(wasm);
    let resp = c.send(req).await?;
    let new = resp.status() == StatusCode::CREATED;
    Ok((resp.json().await?, new))
}

/// Every stored module, oldest first.
pub async fn list_modules(c: &ApiClient) -> ClientResult<Vec<ModuleInfo>> {
    let v = c.get_json("/v1/modules").await?;
    serde_json::from_value(v["modules"].clone()).map_err(|e| ClientError::Answer(e.to_string()))
}

/// Deletes a module (refused with `module_in_use` while a job needs it).
pub async fn delete_module(c: &ApiClient, id: &str) -> ClientResult<()> {
    c.send(c.request(Method::DELETE, &format!("/v1/modules/{id}")))
        .await?;
    Ok(())
}

/// Submits a workflow body (`POST /v1/workflows`); returns the answer:
/// `{"id", "steps": {name: job id}}`.
pub async fn submit_workflow(c: &ApiClient, body: Vec<u8>) -> ClientResult<Value> {
    let req = c
        .request(Method::POST, "/v1/workflows")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    Ok(c.send(req).await?.json().await?)
}

/// Waits for a workflow to finish; returns its final status.
pub async fn wait_workflow(c: &ApiClient, id: &str) -> ClientResult<Value> {
    loop {
        let v = c.get_json(&format!("/v1/workflows/{id}")).await?;
        if v["state"] != "running" {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cancels every unfinished step of a workflow; returns its status after.
pub async fn cancel_workflow(c: &ApiClient, id: &str) -> ClientResult<Value> {
    let req = c.request(Method::DELETE, &format!("/v1/workflows/{id}"));
    Ok(c.send(req).await?.json().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_not_a_certificate_is_a_tls_error() {
        let err = ApiClient::new("https://127.0.0.1:1", "t", Some(b"not a certificate"))
            .err()
            .expect("no certificate in the CA file");
        assert!(matches!(err, ClientError::Tls(_)), "{err}");
        // Without a CA file the public roots are trusted.
        ApiClient::new("https://127.0.0.1:1/", "", None).unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_the_url() {
        let c = ApiClient::new("https://127.0.0.1:1", "t", None).unwrap();
        let err = c.get_json("/v1/jobs").await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("https://127.0.0.1:1"), "{err}");
    }
}
