//! The Musketeer agent: joins a coordinator with a join token, then leases
//! batches of tasks, runs them on every core the owner allows, and uploads
//! the results.
//!
//! The `musketeer` binary is a thin CLI over this library; the coordinator's
//! `demo` and the end-to-end tests start agents in-process with [`run`].
//!
//! ```no_run
//! # async fn demo(url: String, token: String) -> Result<(), musketeer::AgentError> {
//! use musketeer::{AgentConfig, Limits};
//! let config = AgentConfig::new("/tmp/agent-1")
//!     .joining(url, token)
//!     .with_limits(Limits { cpus: Some(1), ..Limits::default() });
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let agent = tokio::spawn(musketeer::run(config, async { let _ = stopped.await; }));
//! // ... later:
//! let _ = stop.send(());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: the owner's limits, flags and their environment twins.
//! - [`capacity`]: the host's cores and memory, less the limits.
//! - [`trust`]: TLS that trusts exactly the CA the join token pins.
//! - [`enrol`]: join token -> agent credential, kept in the state directory.
//! - [`client`]: the agent endpoints over HTTPS, error classes, backoff.
//! - [`work_loop`]: lease, prefetch, upload, heartbeat, shutdown.
//! - [`executor`]: worker threads that run tasks and measure them.
//! - [`mod@bench`]: `musketeer bench`.
//! - [`update`]: signed self-update from the coordinator.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

use std::future::Future;

pub mod bench;
pub mod capacity;
pub mod client;
pub mod config;
pub mod enrol;
pub mod executor;
pub mod trust;
pub mod update;
pub mod work_loop;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use client::ClientError;
pub use config::{AgentConfig, Limits, UpdatePolicy};
pub use enrol::{join, EnrolError, Enrolment};
pub use work_loop::{Tuning, WorkStats};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing saved and no coordinator to join.
    #[error("this agent has not joined a coordinator yet: run `musketeer join URL --token TOKEN`, or set both MUSKETEER_COORDINATOR and MUSKETEER_TOKEN")]
    NotEnrolled,
    /// Enrolment failed, or the saved enrolment is unusable.
    #[error(transparent)]
    Enrol(#[from] EnrolError),
    /// The coordinator refused the agent's credential.
    #[error("agent {agent_id} was revoked or is unknown to the coordinator at {url} ({message}); join again with a new token: musketeer join {url} --token TOKEN")]
    Revoked {
        /// The coordinator.
        url: String,
        /// The agent.
        agent_id: String,
        /// The coordinator's words.
        message: String,
    },
    /// Talking to the coordinator failed for good (an untrusted server).
    #[error(transparent)]
    Client(ClientError),
}

/// Why [`run_until_update`] returned.
#[derive(Debug)]
pub enum Exit {
    /// `shutdown` resolved.
    Stopped(WorkStats),
    /// A newer release replaced the executable on disk; the work loop
    /// stopped cleanly, and the caller should start the new binary.
    Updated(WorkStats, update::Installed),
}

/// Enrols if `config` names a coordinator and token (reusing a saved
/// enrolment with the same coordinator), or else uses the saved one; then
/// works until `shutdown` resolves, and returns what was done.
///
/// Logs `agent <id> working for <url>` (info) when it starts working.
/// Returns an error only when working is impossible: no enrolment, a
/// refused token or credential, an untrusted server. An unreachable
/// coordinator is retried for as long as it takes.
pub async fn run(
    mut config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<WorkStats, AgentError> {
    config.update = None;
    match run_until_update(config, shutdown).await? {
        Exit::Stopped(stats) | Exit::Updated(stats, _) => Ok(stats),
    }
}

/// [`run`], and with [`AgentConfig::update`] set, also looks for signed
/// releases; once one is installed it stops working cleanly (results
/// uploaded, unfinished tasks given back) and returns [`Exit::Updated`].
pub async fn run_until_update(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Exit, AgentError> {
    let mut capacity = capacity::detect(&config.limits);
    capacity.version = config.version.clone();
    tokio::pin!(shutdown);
    let enrolment = match (&config.coordinator, &config.token) {
        (Some(url), Some(token)) => {
            tokio::select! {
                joined = enrol::join(url, token, &config.state_dir, &capacity) => joined?,
                () = &mut shutdown => return Ok(Exit::Stopped(WorkStats::default())),
            }
        }
        _ => Enrolment::load(&config.state_dir)?.ok_or(AgentError::NotEnrolled)?,
    };
    let client = enrolment.client()?;
    tracing::info!(
        cpus = capacity.cpus,
        memory_bytes = capacity.memory_bytes,
        version = %config.version,
        "agent {} working for {}",
        enrolment.agent_id,
        enrolment.coordinator
    );
    let (installed_tx, installed_rx) = tokio::sync::oneshot::channel();
    let watcher = start_updates(&config, &enrolment, &client).map(|(updater, interval)| {
        tokio::spawn(async move {
            let installed = update::watch(updater, interval).await;
            let _ = installed_tx.send(installed);
        })
    });
    // Resolves once a release is installed; never without an updater (the
    // sender is then dropped, and the error is not an installation).
    let mut installed = None;
    let updated = async {
        match installed_rx.await {
            Ok(i) => installed = Some(i),
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let stats = work_loop::work(
        client,
        capacity,
        config.limits.max_cpu_percent,
        config.tuning,
        async {
            tokio::select! {
                () = &mut shutdown => {}
                () = updated => tracing::info!("a new release is installed: stopping work to restart on it"),
            }
        },
    )
    .await
    .map_err(|e| match e {
        ClientError::Unauthorized(message) => AgentError::Revoked {
            url: enrolment.coordinator.clone(),
            agent_id: enrolment.agent_id.clone(),
            message,
        },
        other => AgentError::Client(other),
    })?;
    tracing::info!(
        "stopped: {} tasks done, {} failed, {} given back",
        stats.done,
        stats.failed,
        stats.released
    );
    if let Some(w) = &watcher {
        w.abort();
    }
    Ok(match installed {
        Some(installed) => Exit::Updated(stats, installed),
        None => Exit::Stopped(stats),
    })
}

/// The updater, if updates are wanted and the coordinator gave a release key.
fn start_updates(
    config: &AgentConfig,
    enrolment: &Enrolment,
    client: &client::Client,
) -> Option<(update::Updater, std::time::Duration)> {
    let policy = config.update.as_ref()?;
    let Some(key) = &enrolment.release_key else {
        tracing::info!("the coordinator gave no release key at enrolment: self-update is off");
        return None;
    };
    match update::Updater::new(client.clone(), key, &config.version, policy.exe.clone()) {
        Ok(updater) => {
            tracing::info!(
                target = update::TARGET,
                "self-update on: looking for signed releases every {:?}",
                policy.interval
            );
            Some((updater, policy.interval))
        }
        Err(e) => {
            tracing::warn!("self-update is off: {e}");
            None
        }
    }
}
