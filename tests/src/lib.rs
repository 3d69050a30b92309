//! The end-to-end harness: real `musketeer-coordinator` and `musketeer`
//! processes on free loopback ports, and the independent references the
//! tests check results against.
//!
//! Every end-to-end test starts its cluster through [`Cluster::start`] (or
//! [`Coordinator::start`] and [`Agent::join`] for finer control), so the
//! setup lives in one place. The binaries are found next to the test
//! executable's target directory; `cargo build --workspace --bins` first.
//!
//! # Layout
//! - This file: [`Coordinator`], [`Agent`] and [`Cluster`], real processes
//!   on free loopback ports, and their logs for failure messages.
//! - [`reference`]: the independent, slow references results are checked
//!   against.
//! - [`redis`], [`shared`], [`haproxy`]: a real `redis-server`, several
//!   coordinators sharing it, and HAProxy in front of them.
//! - [`redis_cluster`]: a real Redis Cluster (three masters, three
//!   replicas) whose masters a test can kill.
//! - [`sim`]: thousands of simulated agents in one process, for load.
//! - [`procstat`]: CPU and memory of a process tree, read from `/proc`.
//! - [`dist`], [`docker`]: the static builds of `packaging/build` and the
//!   container tests' Docker networks and containers.
//! - [`bench`]: what the benchmark binaries (`src/bin/`) share.
//! - [`wasm`]: the example kernels, hand-written WAT modules, uploads.
//! - `tests/`: one end-to-end binary per area: `kernels` (every kernel
//!   against its reference), `bad_input` (4xx errors, nothing accepted
//!   lost), `authz` (the route/caller matrix), `security` (CA pinning,
//!   credentials), `redundancy` (liars outvoted), `resilience` and `soak`
//!   (killed processes lose no work), `scaleout` (shared Redis),
//!   `redis_cluster` (a Redis Cluster failing over mid-job), `limits`
//!   (the agent's footprint from outside), `cli` (the admin CLI and demo),
//!   `self_update`, `cross` and `containers` (the `dist/` builds), `wasm`
//!   (your own kernels: examples, uploads, hostile modules).
//!
//! The API client is the `musketeer-client` crate; the coordinator crate
//! is a dependency only for its route table (`authz`) and release signing
//! (`self_update`).

pub mod bench;
pub mod dist;
pub mod docker;
pub mod haproxy;
pub mod procstat;
pub mod redis;
pub mod redis_cluster;
pub mod reference;
pub mod shared;
pub mod sim;
pub mod wasm;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use musketeer_client::ApiClient;
use serde_json::Value;
use tempfile::TempDir;

/// The target directory's profile folder holding the binaries under test.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MUSKETEER_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-exe> or target/<profile>/<bin>
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of the workspace's binaries, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
        path.display()
    );
    path
}

/// Starts `command`, waiting out `ETXTBSY` ("Text file busy"): a binary a
/// test has just copied can still be open for writing in a child that
/// another test's thread forked meanwhile and that has not yet reached its
/// `exec`. That lasts microseconds; the wait ends when the exec works.
pub fn spawn_when_not_busy(command: &mut Command) -> std::io::Result<Child> {
    const ETXTBSY: i32 = 26;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Sends SIGTERM (a polite stop) to a child.
pub fn terminate(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// Waits for a child to exit, up to `timeout`; kills it past that.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Options of a coordinator under test.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// Lease TTL in seconds; short, so lost agents are noticed quickly.
    pub lease_ttl: f64,
    /// Extra `serve` flags.
    pub extra: Vec<String>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            lease_ttl: 2.0,
            extra: Vec::new(),
        }
    }
}

/// A coordinator process with its own data directory.
pub struct Coordinator {
    child: Option<Child>,
    /// Its data directory (deleted with the coordinator).
    pub dir: TempDir,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The bound port, kept across restarts.
    pub port: u16,
    /// A join token.
    pub join_token: String,
    /// The admin token.
    pub admin_token: String,
    /// The CA, PEM.
    pub ca_pem: String,
    options: CoordinatorOptions,
    /// Where its state lives when not in `dir` (a small filesystem a test
    /// mounted); its log stays in `dir`.
    data_dir: Option<PathBuf>,
}

impl Coordinator {
    /// Starts a coordinator on a free port and waits until it serves.
    pub fn start(options: CoordinatorOptions) -> Result<Coordinator> {
        Coordinator::start_with_data_dir(options, None)
    }

    /// Like [`Coordinator::start`], with the store, CA and tokens in
    /// `data_dir` (if given) and only the log in the temporary directory.
    pub fn start_with_data_dir(
        options: CoordinatorOptions,
        data_dir: Option<PathBuf>,
    ) -> Result<Coordinator> {
        let dir = tempfile::Builder::new()
            .prefix("musketeer-coord-")
            .tempdir()?;
        let mut c = Coordinator {
            child: None,
            dir,
            url: String::new(),
            port: 0,
            join_token: String::new(),
            admin_token: String::new(),
            ca_pem: String::new(),
            options,
            data_dir,
        };
        c.spawn()?;
        Ok(c)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().to_path_buf())
    }

    fn spawn(&mut self) -> Result<()> {
        let data_dir = self.data_dir();
        let url_file = data_dir.join("url");
        let _ = std::fs::remove_file(&url_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("coordinator.log"))?;
        let mut cmd = Command::new(bin("musketeer-coordinator"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--lease-ttl")
            .arg(self.options.lease_ttl.to_string())
            .args(&self.options.extra)
            .env("MUSKETEER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("cannot start musketeer-coordinator")?);
        let end = Instant::now() + Duration::from_secs(30);
        while !url_file.exists() {
            if Instant::now() > end {
                bail!("the coordinator did not start; its log:\n{}", self.log());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the coordinator exited with {status}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.url = std::fs::read_to_string(&url_file)?;
        self.port = self.url.rsplit(':').next().unwrap_or("0").parse()?;
        let read =
            |name: &str| std::fs::read_to_string(data_dir.join(name)).map(|s| s.trim().to_string());
        self.join_token = read("join.token")?;
        self.admin_token = read("admin.token")?;
        self.ca_pem = read("ca.pem")?;
        Ok(())
    }

    /// The coordinator's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The coordinator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }

    /// SIGKILLs the coordinator: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the coordinator and starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Like [`Coordinator::restart`], with other options (same port and data).
    pub fn restart_with(&mut self, options: CoordinatorOptions) -> Result<()> {
        self.options = options;
        self.restart()
    }

    /// An admin API client.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.url, &self.admin_token, Some(self.ca_pem.as_bytes()))
            .expect("the client builds")
    }

    /// A client with another bearer token (or none, if empty).
    pub fn client_with_token(&self, token: &str) -> ApiClient {
        ApiClient::new(&self.url, token, Some(self.ca_pem.as_bytes())).expect("the client builds")
    }

    /// Submits a JSON job; returns its id.
    pub async fn submit(&self, body: &Value) -> Result<String> {
        Ok(musketeer_client::submit_json(&self.client(), serde_json::to_vec(body)?).await?)
    }

    /// Waits for a job to finish (up to `timeout`); returns its status.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Value> {
        let c = self.client();
        match tokio::time::timeout(timeout, musketeer_client::wait(&c, id)).await {
            Ok(r) => Ok(r?),
            Err(_) => bail!(
                "job {id} did not finish in {timeout:?}: {}\ncoordinator log:\n{}",
                c.get_json(&format!("/v1/jobs/{id}"))
                    .await
                    .unwrap_or_default(),
                self.log()
            ),
        }
    }

    /// Waits for a job and returns its JSON result, failing unless it succeeded.
    pub async fn result(&self, id: &str, timeout: Duration) -> Result<Value> {
        let status = self.wait(id, timeout).await?;
        if status["state"] != "succeeded" {
            bail!("job {id} ended {status}");
        }
        let bytes = musketeer_client::result_bytes(&self.client(), id, "json").await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// `GET /v1/agents`' list.
    pub async fn agents(&self) -> Result<Vec<Value>> {
        let v = self.client().get_json("/v1/agents").await?;
        Ok(v["agents"].as_array().cloned().unwrap_or_default())
    }

    /// How many tasks the agent `agent_id` holds leases on now.
    pub async fn leased_by(&self, agent_id: &str) -> Result<u64> {
        Ok(self
            .agents()
            .await?
            .iter()
            .find(|a| a["id"] == agent_id)
            .and_then(|a| a["leased"].as_u64())
            .unwrap_or(0))
    }

    /// A job's status, as `GET /v1/jobs/{id}` shows it.
    pub async fn job_status(&self, id: &str) -> Result<Value> {
        Ok(self.client().get_json(&format!("/v1/jobs/{id}")).await?)
    }

    /// Submits a workflow; returns the answer (`id`, and `steps`: each
    /// step's job id).
    pub async fn submit_workflow(&self, body: &Value) -> Result<Value> {
        Ok(musketeer_client::submit_workflow(&self.client(), serde_json::to_vec(body)?).await?)
    }

    /// A workflow's status, as `GET /v1/workflows/{id}` shows it.
    pub async fn workflow(&self, id: &str) -> Result<Value> {
        Ok(self
            .client()
            .get_json(&format!("/v1/workflows/{id}"))
            .await?)
    }

    /// Waits for a workflow to finish (up to `timeout`); returns its status.
    pub async fn wait_workflow(&self, id: &str, timeout: Duration) -> Result<Value> {
        let c = self.client();
        match tokio::time::timeout(timeout, musketeer_client::wait_workflow(&c, id)).await {
            Ok(r) => Ok(r?),
            Err(_) => bail!(
                "workflow {id} did not finish in {timeout:?}: {}\ncoordinator log:\n{}",
                self.workflow(id).await.unwrap_or_default(),
                self.log()
            ),
        }
    }

    /// Cancels a job (`DELETE /v1/jobs/{id}`); a finished job is left alone.
    pub async fn cancel(&self, id: &str) {
        let c = self.client();
        let _ = c
            .send(c.request(reqwest::Method::DELETE, &format!("/v1/jobs/{id}")))
            .await;
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An agent process with its own state directory.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its state directory.
    pub state_dir: TempDir,
    log: PathBuf,
}

impl Agent {
    /// Starts `musketeer join <url> --token <token>` with extra flags.
    pub fn join(url: &str, token: &str, extra: &[&str]) -> Result<Agent> {
        Agent::join_using(&[bin("musketeer").into()], url, token, extra)
    }

    /// Like [`Agent::join`], with extra environment variables.
    pub fn join_env(url: &str, token: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Agent> {
        let state_dir = tempfile::Builder::new()
            .prefix("musketeer-agent-")
            .tempdir()?;
        let mut args: Vec<String> = vec!["join".into(), url.into(), "--token".into(), token.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Agent::spawn(&state_dir, &args, env)?;
        Ok(Agent {
            child,
            log: state_dir.path().join("agent.log"),
            state_dir,
        })
    }

    /// Stops the agent (SIGTERM, then SIGKILL after 15 s) and starts
    /// `musketeer run` on the same state directory, so with the saved
    /// credential, with `extra` flags.
    pub fn restart_with(&mut self, extra: &[&str]) -> Result<()> {
        terminate(&self.child);
        if wait_exit(&mut self.child, Duration::from_secs(15)).is_none() {
            self.kill();
        }
        let mut args = vec!["run".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.child = Agent::spawn(&self.state_dir, &args, &[])?;
        Ok(())
    }

    fn spawn(state_dir: &TempDir, args: &[String], env: &[(&str, &str)]) -> Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.path().join("agent.log"))?;
        Command::new(bin("musketeer"))
            .args(args)
            .arg("--state-dir")
            .arg(state_dir.path())
            .env("MUSKETEER_LOG", "info")
            .env("MUSKETEER_YIELD_TO_HOST_PERCENT", "off")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start musketeer")
    }

    /// Runs `musketeer ARGS --state-dir <this agent's>` (e.g. `status`)
    /// and returns its output.
    pub fn command(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(bin("musketeer"))
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .env("MUSKETEER_LOG", "warn")
            .output()
            .context("cannot run musketeer")
    }

    /// Like [`Agent::join`], with the agent started by `launcher`: another
    /// binary (`[path]`) or an emulator and a binary (`[qemu-aarch64-static, path]`).
    pub fn join_using(
        launcher: &[std::ffi::OsString],
        url: &str,
        token: &str,
        extra: &[&str],
    ) -> Result<Agent> {
        Agent::join_using_env(launcher, url, token, extra, &[])
    }

    /// Like [`Agent::join_using`], with extra environment variables.
    pub fn join_using_env(
        launcher: &[std::ffi::OsString],
        url: &str,
        token: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        let state_dir = tempfile::Builder::new()
            .prefix("musketeer-agent-")
            .tempdir()?;
        let log = state_dir.path().join("agent.log");
        let out = std::fs::File::create(&log)?;
        let (program, before) = launcher.split_first().context("an empty launcher")?;
        let mut command = Command::new(program);
        if !before.is_empty() {
            // An emulator: the agent's worker processes need it too.
            command.env("MUSKETEER_WORKER_LAUNCHER", program);
        }
        command
            .args(before)
            .arg("join")
            .arg(url)
            .arg("--token")
            .arg(token)
            .arg("--state-dir")
            .arg(state_dir.path())
            .args(extra)
            .env("MUSKETEER_LOG", "info")
            // Several agents and a coordinator share the test machine's
            // cores: stepping aside for each other would only slow the
            // tests down. A test of stepping aside passes the flag, which
            // wins over the variable.
            .env("MUSKETEER_YIELD_TO_HOST_PERCENT", "off")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = spawn_when_not_busy(&mut command).context("cannot start musketeer")?;
        Ok(Agent {
            child,
            state_dir,
            log,
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the agent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's id, as it logs it when it starts working (waits up to 30 s).
    pub fn wait_id(&self) -> Result<String> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if let Some(id) = log
                .split("agent ")
                .find_map(|s| s.split_once(" working for").map(|(id, _)| id.trim()))
            {
                return Ok(id.to_string());
            }
            if Instant::now() > end {
                bail!("the agent never said it was working:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A coordinator and its agents.
pub struct Cluster {
    /// The coordinator.
    pub coordinator: Coordinator,
    /// The agents, in start order.
    pub agents: Vec<Agent>,
}

impl Cluster {
    /// A coordinator and `n` agents with `agent_flags`, waiting until every
    /// agent has enrolled.
    pub async fn start(
        n: usize,
        options: CoordinatorOptions,
        agent_flags: &[&str],
    ) -> Result<Cluster> {
        let coordinator = Coordinator::start(options)?;
        let mut agents = Vec::new();
        for _ in 0..n {
            agents.push(Agent::join(
                &coordinator.url,
                &coordinator.join_token,
                agent_flags,
            )?);
        }
        let cluster = Cluster {
            coordinator,
            agents,
        };
        cluster.wait_for_agents(n).await?;
        Ok(cluster)
    }

    /// Waits until `n` agents are enrolled.
    pub async fn wait_for_agents(&self, n: usize) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if self.coordinator.agents().await?.len() >= n {
                return Ok(());
            }
            if Instant::now() > end {
                let logs: Vec<String> = self.agents.iter().map(Agent::log).collect();
                bail!(
                    "agents did not enrol; their logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An agent enrolled by hand, speaking the protocol from the test itself:
/// for tests that must forge, hammer or misuse agent calls.
#[derive(Clone, Debug)]
pub struct ManualAgent {
    /// Its id.
    pub id: String,
    /// Its bearer credential.
    pub credential: String,
}

/// A capacity as an agent advertises it, with these labels and this architecture.
pub fn capacity(arch: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    serde_json::json!({
        "cpus": 1, "memory_bytes": 1u64 << 30, "arch": arch, "os": "linux",
        "hostname": "test", "version": "0", "queues": [], "labels": labels
    })
}

impl Coordinator {
    /// Enrols an agent by hand with the join token; returns its credential.
    pub async fn enrol_manual(&self) -> Result<ManualAgent> {
        let client = self.client_with_token("");
        let body = serde_json::json!({
            "token": self.join_token,
            "capacity": capacity(std::env::consts::ARCH, &[]),
        });
        let v: Value = client
            .send(
                client
                    .request(reqwest::Method::POST, "/v1/agent/enrol")
                    .json(&body),
            )
            .await?
            .json()
            .await?;
        Ok(ManualAgent {
            id: v["agent_id"].as_str().context("no agent_id")?.to_string(),
            credential: v["credential"]
                .as_str()
                .context("no credential")?
                .to_string(),
        })
    }

    /// `POST /v1/agent/lease` as `agent`, decoded; `wait_ms` 0 answers at once.
    pub async fn lease_manual(
        &self,
        agent: &ManualAgent,
        capacity: Value,
        max_tasks: u32,
    ) -> Result<musketeer_tasks::protocol::LeaseResponse> {
        let client = self.client_with_token(&agent.credential);
        let body = serde_json::json!({
            "max_work": u64::MAX / 4, "max_tasks": max_tasks, "wait_ms": 0, "capacity": capacity,
        });
        let bytes = client
            .send(
                client
                    .request(reqwest::Method::POST, "/v1/agent/lease")
                    .json(&body),
            )
            .await?
            .bytes()
            .await?;
        Ok(postcard::from_bytes(&bytes)?)
    }

    /// Reports every leased task failed with `reason`, as `agent`.
    pub async fn fail_manual(
        &self,
        agent: &ManualAgent,
        leased: &musketeer_tasks::protocol::LeaseResponse,
        reason: &str,
    ) -> Result<Value> {
        use musketeer_tasks::protocol::{TaskOutcome, TaskReport};
        let results = leased
            .tasks
            .iter()
            .map(|t| TaskReport {
                task: t.task.clone(),
                cpu_ms: 1,
                outcome: TaskOutcome::Failed(reason.to_string()),
            })
            .collect();
        self.upload_manual(agent, results).await
    }

    /// Runs the leased tasks here and uploads their results as `agent`.
    pub async fn complete_manual(
        &self,
        agent: &ManualAgent,
        leased: &musketeer_tasks::protocol::LeaseResponse,
    ) -> Result<Value> {
        use musketeer_tasks::protocol::{TaskOutcome, TaskReport};
        let results = leased
            .tasks
            .iter()
            .map(|t| {
                let input = musketeer_tasks::TaskInput::decode(&t.input)?;
                Ok(TaskReport {
                    task: t.task.clone(),
                    cpu_ms: 1,
                    outcome: TaskOutcome::Done(input.run()?.encode()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.upload_manual(agent, results).await
    }

    /// Uploads `results` as `agent`; returns the coordinator's answer.
    async fn upload_manual(
        &self,
        agent: &ManualAgent,
        results: Vec<musketeer_tasks::protocol::TaskReport>,
    ) -> Result<Value> {
        use musketeer_tasks::protocol::ResultBatch;
        let body = musketeer_tasks::protocol::encode(&ResultBatch { results })?;
        let client = self.client_with_token(&agent.credential);
        Ok(client
            .send(
                client
                    .request(reqwest::Method::POST, "/v1/agent/results")
                    .header(
                        "content-type",
                        musketeer_tasks::protocol::POSTCARD_CONTENT_TYPE,
                    )
                    .body(body),
            )
            .await?
            .json()
            .await?)
    }
}
