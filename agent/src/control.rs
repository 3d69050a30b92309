//! The control socket: `musketeer pause`, `resume` and `status` talk to the
//! agent running with the same state directory through
//! `<state dir>/control.sock`, a Unix socket of mode 0600, so that only the
//! user the agent runs as (and root) can steer it.
//!
//! One JSON request a line, one JSON answer a line: `{"command":"pause",
//! "seconds":3600}`, `{"command":"resume"}`, `{"command":"status"}`; every
//! answer is `{"status":{...}}` or `{"error":{"code","message"}}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::client::Client;
use crate::volunteer::{Controls, Hold};
use crate::work_loop::Snapshot;

/// The socket's name in the state directory.
pub const SOCKET: &str = "control.sock";
/// Requests are small; a longer line is refused unread.
const MAX_REQUEST: u64 = 4096;
/// How long `status` waits for the coordinator's view of this agent.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command waits for the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What a command asks of the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Pause for `seconds`, or until resumed.
    Pause {
        /// How long; `None` until `resume`.
        #[serde(default)]
        seconds: Option<u64>,
    },
    /// Lift a pause.
    Resume,
    /// Say what the agent does.
    Status,
}

/// Why a command could not reach the agent or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No agent listens on the socket.
    #[error("no agent is running with the state directory {dir} (nothing listens on {socket}): start one with `musketeer run`, or pass the --state-dir it uses")]
    NotRunning {
        /// The state directory.
        dir: String,
        /// The socket.
        socket: String,
    },
    /// The socket is someone else's.
    #[error("cannot use the agent's control socket {socket} ({reason}): run this as the user the agent runs as")]
    Denied {
        /// The socket.
        socket: String,
        /// The system's words.
        reason: String,
    },
    /// Another agent already serves this state directory.
    #[error("another agent is already running with the state directory {0}: stop it first, or give this one its own --state-dir")]
    AlreadyRunning(String),
    /// Talking over the socket failed.
    #[error("talking to the agent through {socket} failed: {reason}")]
    Io {
        /// The socket.
        socket: String,
        /// What went wrong.
        reason: String,
    },
    /// The agent refused the request.
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// The socket's path for `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// What the control socket needs to answer.
pub struct Context {
    /// The volunteer's controls.
    pub controls: Arc<Controls>,
    /// What the work loop does.
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// The coordinator, to ask it what it knows of this agent.
    pub client: Client,
    /// This agent's id.
    pub agent_id: String,
    /// This build's version.
    pub version: String,
    /// The limits, as `status` shows them.
    pub limits: Value,
    /// How long frozen tasks keep their leases.
    pub hold_leases: Duration,
}

/// The bound socket; the file goes with it.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `<state_dir>/control.sock` with mode 0600. A socket left behind by
/// an agent that died is replaced; one a live agent answers on is an error.
pub fn bind(state_dir: &Path) -> Result<Listener, ControlError> {
    let path = socket_path(state_dir);
    let io = |e: std::io::Error| ControlError::Io {
        socket: path.display().to_string(),
        reason: e.to_string(),
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ControlError::AlreadyRunning(
                state_dir.display().to_string(),
            ));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    // The state directory is the owner's alone already (it holds the
    // credential); the mode says so again for the socket itself.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(Listener { listener, path })
}

/// Answers commands on `listener` until dropped.
pub async fn serve(listener: Listener, context: Arc<Context>) {
    loop {
        match listener.listener.accept().await {
            Ok((stream, _)) => {
                let context = context.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &context).await {
                        tracing::debug!("a control connection failed: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("the control socket failed ({e}); pause, resume and status are off");
                return;
            }
        }
    }
}

async fn answer(stream: UnixStream, context: &Context) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            match &request {
                Request::Pause { seconds } => {
                    context.controls.pause(seconds.map(Duration::from_secs));
                    match seconds {
                        Some(s) => tracing::info!("paused for {s} s by `musketeer pause`"),
                        None => {
                            tracing::info!("paused by `musketeer pause` until `musketeer resume`")
                        }
                    }
                }
                Request::Resume => {
                    context.controls.resume();
                    tracing::info!("resumed by `musketeer resume`");
                }
                Request::Status => {}
            }
            json!({ "status": status(context).await })
        }
        Err(e) => json!({"error": {
            "code": "bad_request",
            "message": format!("not a control request ({e}); expected e.g. {{\"command\":\"status\"}}"),
        }}),
    };
    let mut bytes = serde_json::to_vec(&reply)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What `musketeer status` shows.
async fn status(c: &Context) -> Value {
    let hold = c.controls.hold();
    let snapshot = c.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    let coordinator_view = match tokio::time::timeout(COORDINATOR_TIMEOUT, c.client.whoami()).await
    {
        Ok(Ok(record)) => record,
        Ok(Err(e)) => json!({ "error": e.to_string() }),
        Err(_) => json!({ "error": "the coordinator did not answer in time" }),
    };
    let schedule = c.controls.schedule();
    let next_window_in_min = schedule.and_then(|s| {
        let (day, minute) = crate::volunteer::local_now();
        s.minutes_until_open(day, minute)
    });
    json!({
        "coordinator": c.client.base(),
        "agent_id": c.agent_id,
        "version": c.version,
        "state": match hold {
            None => "running",
            Some(Hold::Paused) => "paused",
            Some(Hold::OnBattery) => "on_battery",
            Some(Hold::OutsideSchedule) => "outside_schedule",
        },
        "paused_until_ms": c.controls.paused_until().flatten().map(unix_ms),
        "schedule": schedule.map(|s| s.as_str()),
        "schedule_clock": "host local time",
        "next_window_in_min": next_window_in_min,
        "pause_on_battery": c.controls.pauses_on_battery(),
        "hold_leases_s": c.hold_leases.as_secs(),
        "limits": c.limits,
        "tasks": {
            "running": snapshot.running,
            "queued": snapshot.queued,
            "pending_upload": snapshot.pending_upload,
        },
        "session": snapshot.stats,
        "coordinator_view": coordinator_view,
    })
}

/// Sends `request` to the agent running with `state_dir`; returns its status.
pub fn call(state_dir: &Path, request: &Request) -> Result<Value, ControlError> {
    let path = socket_path(state_dir);
    let socket = path.display().to_string();
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ControlError::Denied {
            socket: socket.clone(),
            reason: e.to_string(),
        },
        _ => ControlError::NotRunning {
            dir: state_dir.display().to_string(),
            socket: socket.clone(),
        },
    })?;
    let io = |e: std::io::Error| ControlError::Io {
        socket: socket.clone(),
        reason: e.to_string(),
    };
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("a request serializes");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    let reply: Value = serde_json::from_str(&reply).map_err(|e| ControlError::Io {
        socket: socket.clone(),
        reason: format!("not an answer ({e})"),
    })?;
    if let Some(message) = reply["error"]["message"].as_str() {
        return Err(ControlError::Refused(message.to_string()));
    }
    Ok(reply["status"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let parse = |s: &str| serde_json::from_str::<Request>(s).unwrap();
        assert_eq!(
            parse(r#"{"command":"pause","seconds":60}"#),
            Request::Pause { seconds: Some(60) }
        );
        assert_eq!(
            parse(r#"{"command":"pause"}"#),
            Request::Pause { seconds: None }
        );
        assert_eq!(parse(r#"{"command":"resume"}"#), Request::Resume);
        assert_eq!(parse(r#"{"command":"status"}"#), Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
    }

    #[tokio::test]
    async fn the_socket_is_private_and_one_agent_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            bind(dir.path()),
            Err(ControlError::AlreadyRunning(_))
        ));
        drop(listener);
        assert!(!socket_path(dir.path()).exists());
        // A socket file left by a dead agent is taken over.
        let stale = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        drop(stale);
        let _again = bind(dir.path()).unwrap();
        let e = call(&dir.path().join("elsewhere"), &Request::Status).unwrap_err();
        assert!(matches!(e, ControlError::NotRunning { .. }), "{e}");
        assert!(e.to_string().contains("musketeer run"));
    }
}
