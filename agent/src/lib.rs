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
//! - [`executor`]: runs tasks in worker processes (or threads) and measures them.
//! - [`process_pool`]: the worker processes, one per allowed core.
//! - [`worker`]: a worker process's side (`musketeer __worker`).
//! - [`modules`]: wasm tasks' modules, fetched by digest, verified, cached.
//! - [`supervisor`]: the limits on running workers: duty cycle, stepping
//!   aside for the host, timeouts, the memory backstop.
//! - [`memory_cap`]: the allocator that holds a worker to its memory share.
//! - [`procfs`]: CPU time and memory from `/proc`.
//! - [`corrupt`]: the hidden `--corrupt-results` test flag (a lying agent).
//! - [`mod@bench`]: `musketeer bench`.
//! - [`update`]: signed self-update from the coordinator.
//! - [`volunteer`]: the schedule, pausing on battery, `musketeer pause`.
//! - [`control`]: the control socket behind `pause`, `resume` and `status`.
// Denied rather than forbidden so that `memory_cap`, a global allocator,
// can allow it; nothing else may.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;

pub mod bench;
pub mod capacity;
pub mod client;
pub mod config;
pub mod control;
pub mod corrupt;
pub mod enrol;
pub mod executor;
pub mod memory_cap;
pub mod modules;
pub mod process_pool;
pub mod procfs;
pub mod status;
pub mod supervisor;
pub mod trust;
pub mod update;
pub mod volunteer;
pub mod work_loop;
pub mod worker;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use client::ClientError;
pub use config::{AgentConfig, Limits, UpdatePolicy};
pub use enrol::{join, EnrolError, Enrolment};
pub use work_loop::{Tuning, WorkStats};

use musketeer_tasks::protocol::Capacity;

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
    /// The control socket cannot be had.
    #[error(transparent)]
    Control(control::ControlError),
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
    let limits = &config.limits;
    let controls = Arc::new(volunteer::Controls::new(
        limits.schedule.clone(),
        limits.pause_on_battery,
        std::env::var_os(volunteer::POWER_SUPPLY_DIR_ENV)
            .map_or_else(|| volunteer::POWER_SUPPLY_DIR.into(), Into::into),
    ));
    let hold_leases = limits.hold_leases.unwrap_or(volunteer::DEFAULT_HOLD_LEASES);
    log_controls(&controls, hold_leases);
    let link = work_loop::Link {
        hold: controls.subscribe(),
        hold_leases,
        snapshot: Arc::default(),
    };
    let watching = {
        let controls = controls.clone();
        tokio::spawn(async move { controls.watch().await })
    };
    let control_socket =
        start_control_socket(&config, &enrolment, &client, &controls, &link, &capacity)?;
    let isolation = isolation(&config, &capacity, &link);
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
    let stop = async {
        tokio::select! {
            () = &mut shutdown => {}
            () = updated => tracing::info!("a new release is installed: stopping work to restart on it"),
        }
    };
    let mut tuning = config.tuning.clone();
    tuning.module_dir = Some(config.state_dir.join(modules::CACHE_DIR));
    if let Some(bytes) = config.limits.module_cache_bytes {
        tuning.module_cache_bytes = bytes;
    }
    let stats = match config.limits.corrupt_results.filter(|&f| f > 0.0) {
        Some(fraction) => {
            tracing::warn!(
                "TEST MODE: --corrupt-results {fraction}: this agent uploads WRONG answers for {:.0}% of its tasks, to test result validation. Never use it on a real cluster.",
                fraction * 100.0
            );
            let liar = corrupt::Lying::new(client, enrolment.agent_id.clone(), fraction);
            work_loop::work_linked(liar, capacity, isolation, tuning, link, stop).await
        }
        None => work_loop::work_linked(client, capacity, isolation, tuning, link, stop).await,
    }
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
    log_peak_memory();
    if let Some(w) = &watcher {
        w.abort();
    }
    watching.abort();
    if let Some(socket) = control_socket {
        socket.abort();
    }
    Ok(match installed {
        Some(installed) => Exit::Updated(stats, installed),
        None => Exit::Stopped(stats),
    })
}

/// Says which volunteer controls are on, once at start.
fn log_controls(controls: &volunteer::Controls, hold_leases: std::time::Duration) {
    if let Some(s) = controls.schedule() {
        tracing::info!(
            "computing only in the windows {:?} (host local time, now {})",
            s.as_str(),
            chrono::Local::now().format("%a %H:%M %Z")
        );
    }
    if controls.pauses_on_battery() {
        tracing::info!("pausing while the host runs on battery");
    }
    tracing::debug!(
        "a paused agent keeps its frozen tasks' leases for {}",
        process_pool::seconds(hold_leases)
    );
}

/// Starts answering `musketeer pause|resume|status` on the state
/// directory's control socket. Without a socket (a path too long for one,
/// a file system that has none) the agent still works, with a warning; a
/// second agent on the same state directory is an error.
fn start_control_socket(
    config: &AgentConfig,
    enrolment: &Enrolment,
    client: &client::Client,
    controls: &Arc<volunteer::Controls>,
    link: &work_loop::Link,
    capacity: &Capacity,
) -> Result<Option<tokio::task::JoinHandle<()>>, AgentError> {
    let listener = match control::bind(&config.state_dir) {
        Ok(l) => l,
        Err(e @ control::ControlError::AlreadyRunning(_)) => return Err(AgentError::Control(e)),
        Err(e) => {
            tracing::warn!(
                "{e}; `musketeer pause`, `resume` and `status` will not reach this agent"
            );
            return Ok(None);
        }
    };
    let limits = &config.limits;
    let context = Arc::new(control::Context {
        controls: controls.clone(),
        snapshot: link.snapshot.clone(),
        client: client.clone(),
        agent_id: enrolment.agent_id.clone(),
        version: config.version.clone(),
        limits: serde_json::json!({
            "cpus": capacity.cpus,
            "memory_bytes": capacity.memory_bytes,
            "max_cpu_percent": limits.max_cpu_percent,
            "yield_to_host_percent": limits.yield_to_host_percent,
            "queues": capacity.queues,
            "labels": capacity.labels,
        }),
        hold_leases: link.hold_leases,
    });
    Ok(Some(tokio::spawn(control::serve(listener, context))))
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

/// Where tasks run: worker processes held to every limit when there is a
/// `musketeer` binary to start them from, else threads.
fn isolation(
    config: &AgentConfig,
    capacity: &Capacity,
    link: &work_loop::Link,
) -> executor::Isolation {
    let limits = &config.limits;
    match &config.worker_exe {
        Some(exe) => executor::Isolation::Processes(process_pool::PoolConfig {
            exe: exe.clone(),
            workers: capacity.cpus.max(1) as usize,
            policy: supervisor::Policy {
                memory_limit: capacity.memory_bytes,
                duty: supervisor::DutyBudget::new(limits.max_cpu_percent, capacity.cpus),
                host: supervisor::HostYield::new(limits.yield_to_host_percent),
                hold: Some(link.hold.clone()),
            },
        }),
        None => executor::Isolation::Threads(executor::DutyCycle::new(limits.max_cpu_percent)),
    }
}

/// Logs the most memory the agent's process and its largest worker process
/// ever held, as the kernel counted them, so that an owner can check them
/// against `--memory`. The agent's own is `VmHWM` (its memory since exec);
/// `getrusage` would report at least the RSS of whatever process started
/// the agent, which Linux carries across exec. A worker's figure carries
/// the agent's RSS at the fork the same way, so it is an upper bound.
fn log_peak_memory() {
    use nix::sys::resource::{getrusage, UsageWho};
    let agent = procfs::own_peak_rss().unwrap_or(0) >> 10;
    let worker = getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss().max(0) as u64)
        .unwrap_or(0);
    tracing::info!("peak memory: agent {agent} KiB, largest worker {worker} KiB");
}
