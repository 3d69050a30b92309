//! A client of the coordinator's API, for the admin CLI and the demo.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use musketeer_tasks::protocol::ErrorBody;
use reqwest::{Method, RequestBuilder, Response};
use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::pki::{provider, ADMIN_TOKEN_FILE, CA_FILE};
use crate::server::URL_FILE;

/// Where to find the coordinator and how to prove who we are.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Connection {
    /// The coordinator's URL [default: the one the local data directory records].
    #[arg(long, env = "MUSKETEER_URL", global = true)]
    pub url: Option<String>,
    /// The admin token [default: the local data directory's admin.token].
    #[arg(
        long,
        env = "MUSKETEER_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The CA certificate to trust [default: the local data directory's ca.pem].
    #[arg(long, env = "MUSKETEER_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// The local data directory the defaults come from.
    #[arg(long, env = "MUSKETEER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// An authenticated API client.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn read_trimmed(path: &Path, what: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| {
            format!(
                "cannot read {what} from {} (pass --{what} or its environment variable)",
                path.display()
            )
        })?
        .trim()
        .to_string())
}

impl ApiClient {
    /// A client from flags, falling back on the local data directory.
    pub fn connect(c: &Connection) -> Result<ApiClient> {
        let dir = c
            .data_dir
            .clone()
            .unwrap_or_else(crate::pki::default_data_dir);
        let base = match &c.url {
            Some(u) => u.clone(),
            None => read_trimmed(&dir.join(URL_FILE), "url")?,
        };
        let token = match &c.admin_token {
            Some(t) => t.clone(),
            None => read_trimmed(&dir.join(ADMIN_TOKEN_FILE), "admin-token")?,
        };
        let ca_path = c.ca.clone().unwrap_or_else(|| dir.join(CA_FILE));
        let ca_pem = if c.ca.is_some() || ca_path.exists() {
            Some(
                std::fs::read(&ca_path)
                    .with_context(|| format!("cannot read {}", ca_path.display()))?,
            )
        } else {
            None
        };
        ApiClient::new(&base, &token, ca_pem.as_deref())
    }

    /// A client of `base` with `token`, trusting the CA in `ca_pem` (or the
    /// public web roots when there is none).
    pub fn new(base: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<ApiClient> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    roots.add(cert.context("the CA file is not PEM")?)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()?;
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
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the coordinator at {}: {e:#}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => bail!("{} ({status}): {}", b.error.code, b.error.message),
            Err(_) => bail!("the coordinator answered {status}: {text}"),
        }
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        Ok(self
            .send(self.request(Method::GET, path))
            .await?
            .json()
            .await?)
    }
}
