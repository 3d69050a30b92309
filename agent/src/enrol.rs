//! Enrolment: trade a join token for an agent credential, once, and keep it
//! (with the pinned CA) in the state directory for every later run.

use std::io;
use std::path::{Path, PathBuf};

use musketeer_tasks::protocol::{Capacity, EnrolRequest};
use musketeer_tasks::token::{AgentCredential, CaPin, JoinToken, TokenError, PUBLIC_CA};
use serde::{Deserialize, Serialize};

use crate::client::{normalize_url, Backoff, Client, ClientError, Outage};
use crate::trust::{Trust, TrustError};

/// The file in the state directory that holds the enrolment.
pub const STATE_FILE: &str = "agent.json";

/// Why the agent could not enrol or use its saved enrolment.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The join token is malformed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The coordinator URL is unusable.
    #[error("{0}")]
    Url(String),
    /// The coordinator refused the token.
    #[error("the coordinator refused the join token: {0}")]
    TokenRefused(String),
    /// The CA the coordinator sent or the saved one is not the pinned one.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The call failed for good (the coordinator is not the one pinned, or refused the request).
    #[error("cannot enrol: {0}")]
    Client(ClientError),
    /// The coordinator's answer is not usable.
    #[error("the coordinator's enrolment answer is invalid: {0}")]
    BadAnswer(String),
    /// The saved enrolment cannot be read.
    #[error("cannot use the saved enrolment {path}: {reason}; delete it and join again with `musketeer join URL --token TOKEN`")]
    BadState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The state directory cannot be written.
    #[error("cannot write {path}: {source}; make the state directory writable or choose another with --state-dir (MUSKETEER_STATE_DIR)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// What enrolment leaves in the state directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enrolment {
    /// The coordinator's base URL (`https://host:port`).
    pub coordinator: String,
    /// The agent's id, as the operator sees it.
    pub agent_id: String,
    /// The bearer credential (`MSKAGT-<id>-<secret>`).
    pub credential: String,
    /// The join token's CA pin: the CA's SHA-256 in hex, or `public`.
    pub ca_pin: String,
    /// The pinned CA's certificate, once the coordinator sent it.
    pub ca_pem: Option<String>,
    /// The key releases must be signed with (hex), as sent at enrolment;
    /// `None` when the coordinator had none, and then the agent never updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

impl Enrolment {
    /// The CA pin this enrolment trusts.
    pub fn pin(&self) -> Result<CaPin, EnrolError> {
        if self.ca_pin == PUBLIC_CA {
            return Ok(CaPin::Public);
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&self.ca_pin, &mut digest)
            .map_err(|_| self.bad("ca_pin is not 64 hex digits"))?;
        Ok(CaPin::Digest(digest))
    }

    /// What to trust when talking to the coordinator: the saved CA, checked
    /// against the pin, or the pin alone.
    pub fn trust(&self) -> Result<Trust, EnrolError> {
        let pin = self.pin()?;
        match &self.ca_pem {
            Some(pem) => Trust::with_ca_pem(pin, pem).map_err(|e| self.bad(&e.to_string())),
            None => Ok(Trust::from_pin(pin)),
        }
    }

    /// An authenticated client for the coordinator.
    pub fn client(&self) -> Result<Client, EnrolError> {
        Client::new(
            &self.coordinator,
            &self.trust()?,
            Some(self.credential.clone()),
        )
        .map_err(EnrolError::Client)
    }

    fn bad(&self, reason: &str) -> EnrolError {
        EnrolError::BadState {
            path: PathBuf::from(STATE_FILE),
            reason: reason.to_string(),
        }
    }

    /// The enrolment saved in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Result<Option<Enrolment>, EnrolError> {
        let path = state_dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(EnrolError::BadState {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let saved: Enrolment = serde_json::from_str(&text).map_err(|e| EnrolError::BadState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Check now, so that a damaged file is reported as such and not as
        // a network or trust failure later.
        saved.trust().map_err(|e| match e {
            EnrolError::BadState { reason, .. } => EnrolError::BadState {
                path: path.clone(),
                reason,
            },
            other => other,
        })?;
        Ok(Some(saved))
    }

    /// Saves the enrolment in `state_dir` (created if missing), readable by
    /// its owner only: the credential is a secret.
    pub fn save(&self, state_dir: &Path) -> Result<(), EnrolError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EnrolError::Io { path, source }
        };
        create_private_dir(state_dir).map_err(io_err(state_dir))?;
        let path = state_dir.join(STATE_FILE);
        let tmp = state_dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("an enrolment always serializes");
        // Rename, so that a crash or a full disk never leaves half a
        // credential behind: the old file stays whole until the new one is.
        let written = write_private(&tmp, &json)
            .map_err(io_err(&tmp))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(io_err(&path)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // `mode` applies only when the file is created; a leftover file keeps
        // its old mode unless it is set again.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Joins the coordinator at `url` with `token`: reuses the enrolment saved in
/// `state_dir` if it is for the same coordinator and CA, or else enrols
/// (retrying while the coordinator is unreachable) and saves the result.
pub async fn join(
    url: &str,
    token: &str,
    state_dir: &Path,
    capacity: &Capacity,
) -> Result<Enrolment, EnrolError> {
    let url = normalize_url(url).map_err(EnrolError::Url)?;
    let token = JoinToken::parse(token)?;
    if let Some(saved) = Enrolment::load(state_dir)? {
        if saved.coordinator == url && saved.pin()? == token.ca {
            tracing::info!(
                "already enrolled with {url} as agent {}: using the saved credential",
                saved.agent_id
            );
            return Ok(saved);
        }
        tracing::info!(
            "the saved enrolment is for {} (agent {}): enrolling with {url} instead",
            saved.coordinator,
            saved.agent_id
        );
    }
    let enrolment = enrol(&url, &token, capacity).await?;
    match enrolment.save(state_dir) {
        Ok(()) => tracing::info!(
            "enrolled with {url} as agent {}; credential saved in {}",
            enrolment.agent_id,
            state_dir.join(STATE_FILE).display()
        ),
        // The credential works without its file: work now, and say what
        // the next start will cost (a new enrolment, under a new id).
        Err(EnrolError::Io { path, source }) => tracing::error!(
            "enrolled with {url} as agent {}, but cannot save the credential in {}: {source}; \
             working with it until this agent stops, after which it enrols again. Free space \
             in (or make writable) {} to keep the credential",
            enrolment.agent_id,
            path.display(),
            state_dir.display()
        ),
        Err(e) => return Err(e),
    }
    Ok(enrolment)
}

/// Trades `token` for a credential at `url` (already normalized), retrying
/// with backoff while the coordinator is unreachable.
pub async fn enrol(
    url: &str,
    token: &JoinToken,
    capacity: &Capacity,
) -> Result<Enrolment, EnrolError> {
    let client = Client::new(url, &Trust::from_pin(token.ca), None).map_err(EnrolError::Client)?;
    let req = EnrolRequest {
        token: token.to_string(),
        capacity: capacity.clone(),
    };
    let mut backoff = Backoff::default();
    let mut outage = Outage::default();
    let resp = loop {
        match client.enrol(&req).await {
            Ok(resp) => {
                outage.recovered();
                break resp;
            }
            Err(ClientError::Unauthorized(message))
            | Err(ClientError::Rejected {
                status: 403,
                message,
                ..
            }) => return Err(EnrolError::TokenRefused(message)),
            Err(e @ ClientError::Unavailable(_)) => {
                outage.failed(&format!("enrolling with {url}"), &e);
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(EnrolError::Client(e)),
        }
    };
    let credential = AgentCredential::parse(&resp.credential)
        .map_err(|e| EnrolError::BadAnswer(e.to_string()))?;
    if credential.agent_id != resp.agent_id {
        return Err(EnrolError::BadAnswer(format!(
            "the credential is for agent {}, not {}",
            credential.agent_id, resp.agent_id
        )));
    }
    let (ca_pin, ca_pem) = match token.ca {
        CaPin::Public => (PUBLIC_CA.to_string(), None),
        CaPin::Digest(digest) => {
            if let Some(pem) = &resp.ca_pem {
                Trust::with_ca_pem(token.ca, pem)?;
            }
            (hex::encode(digest), resp.ca_pem)
        }
    };
    Ok(Enrolment {
        coordinator: url.to_string(),
        agent_id: resp.agent_id,
        credential: resp.credential,
        ca_pin,
        ca_pem,
        release_key: resp.release_key,
    })
}

#[cfg(test)]
mod tests;
