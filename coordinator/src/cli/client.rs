//! Where the admin CLI finds its coordinator: flags, or the local data
//! directory's files. The client itself is the `musketeer-client` crate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use musketeer_client::ApiClient;

use crate::pki::{ADMIN_TOKEN_FILE, CA_FILE};
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
    Ok(ApiClient::new(&base, &token, ca_pem.as_deref())?)
}
