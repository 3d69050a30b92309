//! The cluster as operators run it: `packaging/stack.yaml` on a Docker
//! Swarm made on this host (`docker swarm init`), scaled from 2 to 6 agents
//! mid-job with `docker service scale`, and `packaging/compose.yaml` with
//! Debian's `docker-compose`, scaled with `up --scale`. Redis is the image
//! `packaging/redis-image` builds from Debian's redis-server; nothing is
//! pulled. Each checks the answer against the reference and that agents
//! added mid-job did work, then removes the stack or project, its volumes,
//! its images and (if it made it) the swarm, by a drop guard, so also when
//! it fails.
//!
//! Skipped without a Docker engine, `docker-compose` or `dist/`, unless
//! MUSKETEER_REQUIRE_DOCKER=1 (scripts/test sets it when Docker is there).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musketeer_tasks::matmul::RandomMatrices;
use musketeer_tests::dist::{self, REQUIRE_DOCKER, X86_64};
use musketeer_tests::docker::{self, Docker};
use musketeer_tests::reference;
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Agents before and after scaling.
const FIRST: usize = 2;
const SCALED: usize = 6;
/// The job: C = A·B for seeded operands, much work for a small result.
/// 64 tasks: enough that agents added after the first results still find
/// work, though the first ones prefetch.
const SPEC: RandomMatrices = RandomMatrices {
    m: 512,
    k: 65536,
    n: 512,
    seed: 2027,
};

/// One cluster at a time: the machine is small, and both publish ports.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a test needs of one orchestrator.
trait Orchestrator {
    /// `docker exec` (or its like) of the coordinator's CLI.
    fn admin(&self, args: &[&str], input: Option<&[u8]>) -> anyhow::Result<String>;
    /// Runs `n` agents with the join token `token`.
    fn scale_agents(&mut self, n: usize, token: &str) -> anyhow::Result<()>;
    /// Everything worth reading when it fails.
    fn logs(&self) -> String;
}

/// The binaries, or `None` when the test is to be skipped.
fn prerequisites(extra: Option<&str>) -> Option<(PathBuf, PathBuf)> {
    dist::prerequisite(REQUIRE_DOCKER, docker::available())?;
    if let Some(tool) = extra {
        dist::prerequisite(REQUIRE_DOCKER, dist::have_command(tool))?;
    }
    let agent = dist::prerequisite(REQUIRE_DOCKER, dist::dist_bin(X86_64, "musketeer"))?;
    let coordinator = dist::prerequisite(
        REQUIRE_DOCKER,
        dist::dist_bin(X86_64, "musketeer-coordinator"),
    )?;
    Some((agent, coordinator))
}

/// The three images of a run: agent, coordinator, Redis.
fn images(docker: &mut Docker, agent: &Path, coordinator: &Path) -> [(String, String); 3] {
    let agent = docker
        .build_image(
            "agent",
            &dist::packaging_file("agent.Dockerfile"),
            agent,
            &[],
        )
        .unwrap();
    let coordinator = docker
        .build_image(
            "coordinator",
            &dist::packaging_file("coordinator.Dockerfile"),
            coordinator,
            &[],
        )
        .unwrap();
    let redis = docker.build_redis_image().unwrap();
    [
        ("MUSKETEER_AGENT_IMAGE".into(), agent),
        ("MUSKETEER_COORDINATOR_IMAGE".into(), coordinator),
        ("MUSKETEER_REDIS_IMAGE".into(), redis),
    ]
}

/// The rest of the files' variables: a free port, no token yet, and the
/// owner's limits of every agent: one core, busy a tenth of the time, so
/// that the job lasts while agents come (and the suite keeps its cores).
fn cluster_env() -> Vec<(String, String)> {
    [
        ("MUSKETEER_PORT", free_port().to_string()),
        ("MUSKETEER_TOKEN", String::new()),
        ("MUSKETEER_CPUS", "1".to_string()),
        ("MUSKETEER_MAX_CPU_PERCENT", "10".to_string()),
        // Six replicas on one busy host would step aside for each other
        // and for the rest of the suite, and never finish.
        ("MUSKETEER_YIELD_TO_HOST_PERCENT", "off".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Standard output and error of a command, for logs.
fn both(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Active agents by id, with the tasks credited to each, from `agents list`.
fn agents(o: &dyn Orchestrator) -> Vec<(String, u64)> {
    let table = o.admin(&["agents", "list"], None).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(6) == Some("active"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].to_string(), cols[9].parse().unwrap_or(0))
        })
        .collect()
}

fn wait_for_agents(o: &dyn Orchestrator, n: usize) {
    let end = Instant::now() + Duration::from_secs(180);
    while agents(o).len() < n {
        assert!(
            Instant::now() < end,
            "{n} agents did not enrol:\n{}",
            o.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A job's status; retried for a while, as a container being replaced
/// (a swarm task restarting) refuses `exec` for a moment.
fn job(o: &dyn Orchestrator, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match o.admin(&["jobs", "status", id], None) {
            Ok(text) => return serde_json::from_str(&text).unwrap(),
            Err(e) if Instant::now() < end => {
                eprintln!("retrying jobs status: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("jobs status failed: {e:#}\n{}", o.logs()),
        }
    }
}

fn finished(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// The scenario both orchestrators play: two agents, a job, four more
/// agents mid-job, the right answer, work done by the newcomers.
fn play(o: &mut dyn Orchestrator) {
    let end = Instant::now() + Duration::from_secs(120);
    let token = loop {
        match o.admin(&["token", "create"], None) {
            Ok(t) if t.starts_with("MSKTKN-") => break t,
            _ if Instant::now() < end => std::thread::sleep(Duration::from_millis(500)),
            other => panic!("no join token: {other:?}\n{}", o.logs()),
        }
    };
    o.scale_agents(FIRST, &token).unwrap();
    wait_for_agents(o, FIRST);
    let body = json!({"kernel": "matmul", "random": {
        "m": SPEC.m, "k": SPEC.k, "n": SPEC.n, "seed": SPEC.seed}});
    let id = o
        .admin(&["jobs", "submit", "-"], Some(body.to_string().as_bytes()))
        .unwrap();
    let end = Instant::now() + JOB_TIMEOUT;
    loop {
        let j = job(o, &id);
        assert!(!finished(&j), "the job ended before scaling: {j}");
        if j["progress"]["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < end, "no progress: {j}\n{}", o.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    let before: BTreeSet<String> = agents(o).into_iter().map(|(id, _)| id).collect();
    o.scale_agents(SCALED, &token).unwrap();
    wait_for_agents(o, SCALED);
    let j = job(o, &id);
    assert!(
        !finished(&j),
        "the job ended before the new agents came: {j}"
    );
    eprintln!("scaled to {SCALED} agents at {}", j["progress"]);
    let j = loop {
        let j = job(o, &id);
        if finished(&j) {
            break j;
        }
        assert!(
            Instant::now() < end,
            "the job did not finish: {j}\n{}",
            o.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(j["state"], "succeeded", "{j}\n{}", o.logs());
    let result: Value =
        serde_json::from_str(&o.admin(&["jobs", "result", &id], None).unwrap()).unwrap();
    reference::check_random_product(&SPEC, &result);
    let all = agents(o);
    let newcomers: u64 = all
        .iter()
        .filter(|(id, _)| !before.contains(id))
        .map(|(_, tasks)| tasks)
        .sum();
    eprintln!("agents and tasks credited: {all:?}");
    assert!(
        newcomers > 0,
        "the agents added mid-job did nothing: {all:?}"
    );
}

/// A stack on a swarm; removes the stack, its volumes and, if it made
/// the swarm, the swarm.
struct Swarm {
    docker: Docker,
    stack: String,
    made_swarm: bool,
    token_set: bool,
}

impl Swarm {
    fn container(&self, service: &str) -> anyhow::Result<String> {
        let filter = format!(
            "label=com.docker.swarm.service.name={}_{service}",
            self.stack
        );
        let ids = self.docker.cmd(&[
            "ps",
            "-q",
            "--filter",
            &filter,
            "--filter",
            "status=running",
        ])?;
        ids.lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no running {service} container yet"))
    }

    fn volumes(&self) -> Vec<String> {
        let filter = format!("label=com.docker.stack.namespace={}", self.stack);
        let ids = self
            .docker
            .cmd(&["ps", "-aq", "--filter", &filter])
            .unwrap_or_default();
        let mut volumes = BTreeSet::new();
        for id in ids.lines() {
            let mounts = self
                .docker
                .cmd(&["inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", id])
                .unwrap_or_default();
            volumes.extend(mounts.split_whitespace().map(String::from));
        }
        volumes.into_iter().collect()
    }
}

impl Orchestrator for Swarm {
    fn admin(&self, args: &[&str], input: Option<&[u8]>) -> anyhow::Result<String> {
        let c = self.container("coordinator")?;
        let mut all = vec!["exec", "-i", c.as_str(), "/musketeer-coordinator"];
        all.extend_from_slice(args);
        match input {
            Some(bytes) => Ok(String::from_utf8(self.docker.cmd_with_input(&all, bytes)?)?
                .trim()
                .to_string()),
            None => self.docker.cmd(&all),
        }
    }

    fn scale_agents(&mut self, n: usize, token: &str) -> anyhow::Result<()> {
        let service = format!("{}_agent", self.stack);
        let token_env = format!("MUSKETEER_TOKEN={token}");
        let replicas = n.to_string();
        if !self.token_set {
            // The stack was deployed without a token, as its comments say;
            // one update sets it and the first count (two would race).
            self.docker.cmd(&[
                "service",
                "update",
                "--detach",
                "--env-add",
                &token_env,
                "--replicas",
                &replicas,
                &service,
            ])?;
            self.token_set = true;
        } else {
            self.docker
                .cmd(&["service", "scale", "--detach", &format!("{service}={n}")])?;
        }
        Ok(())
    }

    fn logs(&self) -> String {
        let service = format!("{}_coordinator", self.stack);
        let agents = format!("{}_agent", self.stack);
        both(Command::new("docker").args(["service", "logs", "--tail", "40", &service]))
            + &both(Command::new("docker").args(["service", "logs", "--tail", "40", &agents]))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let volumes = self.volumes();
        let _ = self.docker.cmd(&["stack", "rm", &self.stack]);
        // Containers go after their services: wait, then their volumes can go.
        let filter = format!("label=com.docker.stack.namespace={}", self.stack);
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end
            && !self
                .docker
                .cmd(&["ps", "-aq", "--filter", &filter])
                .unwrap_or_default()
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(300));
        }
        for v in &volumes {
            let _ = self.docker.cmd(&["volume", "rm", "-f", v]);
        }
        if self.made_swarm {
            let _ = self.docker.cmd(&["swarm", "leave", "--force"]);
        }
    }
}

#[test]
fn a_swarm_stack_scales_from_two_to_six_agents_mid_job() {
    let _serial = serial();
    let Some((agent, coordinator)) = prerequisites(None) else {
        return;
    };
    let mut docker = Docker::new().unwrap();
    let state = docker
        .cmd(&["info", "-f", "{{.Swarm.LocalNodeState}}"])
        .unwrap();
    let made_swarm = state != "active";
    if made_swarm {
        docker
            .cmd(&["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .unwrap();
    }
    let mut env: Vec<(String, String)> = images(&mut docker, &agent, &coordinator).into();
    env.extend(cluster_env());
    let stack = docker.run_id.replace('-', "_");
    let mut swarm = Swarm {
        docker,
        stack: stack.clone(),
        made_swarm,
        token_set: false,
    };
    sh(Command::new("docker")
        // The images are this machine's: no registry is asked for digests.
        .args(["stack", "deploy", "--resolve-image", "never", "-c"])
        .arg(dist::packaging_file("stack.yaml"))
        .arg(&stack)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
    .unwrap();
    play(&mut swarm);
    drop(swarm);
    let left = sh(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
    ]))
    .unwrap();
    assert!(left.is_empty(), "the stack left containers {left}");
    if made_swarm {
        let state =
            sh(Command::new("docker").args(["info", "-f", "{{.Swarm.LocalNodeState}}"])).unwrap();
        assert_eq!(state, "inactive", "the swarm is still there");
    }
}

/// A docker-compose project; `down -v` removes it with its volumes.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
    _docker: Docker,
}

impl Compose {
    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.project, "-f"])
            .arg(dist::packaging_file("compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }
}

impl Orchestrator for Compose {
    fn admin(&self, args: &[&str], input: Option<&[u8]>) -> anyhow::Result<String> {
        let mut all = vec!["exec", "-T", "coordinator", "/musketeer-coordinator"];
        all.extend_from_slice(args);
        let mut cmd = self.compose(&all);
        match input {
            None => sh(cmd.stdin(std::process::Stdio::null())),
            Some(bytes) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()?;
                child.stdin.take().unwrap().write_all(bytes)?;
                let out = child.wait_with_output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "docker-compose exec failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
        }
    }

    fn scale_agents(&mut self, n: usize, token: &str) -> anyhow::Result<()> {
        self.env.retain(|(k, _)| k != "MUSKETEER_TOKEN");
        self.env.push(("MUSKETEER_TOKEN".into(), token.into()));
        let scale = format!("agent={n}");
        sh(&mut self.compose(&["up", "-d", "--no-recreate", "--scale", &scale, "agent"]))?;
        Ok(())
    }

    fn logs(&self) -> String {
        both(&mut self.compose(&["logs", "--tail", "40", "coordinator", "agent"]))
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = sh(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]));
    }
}

#[test]
fn a_compose_project_scales_from_two_to_six_agents_mid_job() {
    let _serial = serial();
    let Some((agent, coordinator)) = prerequisites(Some("docker-compose")) else {
        return;
    };
    let mut docker = Docker::new().unwrap();
    let mut env: Vec<(String, String)> = images(&mut docker, &agent, &coordinator).into();
    env.extend(cluster_env());
    let project = docker.run_id.replace('-', "");
    let mut compose = Compose {
        project: project.clone(),
        env,
        _docker: docker,
    };
    sh(&mut compose.compose(&["up", "-d", "redis", "coordinator"])).unwrap();
    play(&mut compose);
    drop(compose);
    let left = sh(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]))
    .unwrap();
    assert!(left.is_empty(), "the project left containers {left}");
}
