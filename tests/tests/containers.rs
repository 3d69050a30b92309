//! A real container cluster: the FROM-scratch coordinator and agent images
//! built from `dist/`, on a private Docker network. Three agents started
//! with `docker run -d <image>` (the coordinator and join token are baked
//! into the image; only the owner's limits are given, with `-e`), three more
//! added mid-job, two killed and one cut off the network mid-job: the job
//! still ends with the right answer, and every container, network and image
//! of the run is gone afterwards.
//!
//! Skipped without a Docker engine or `dist/`, unless
//! MUSKETEER_REQUIRE_DOCKER=1 (scripts/test sets it when Docker is there).

use std::time::{Duration, Instant};

use musketeer_tasks::matmul::RandomMatrices;
use musketeer_tests::dist::{self, REQUIRE_DOCKER, X86_64};
use musketeer_tests::docker::{self, Docker};
use musketeer_tests::reference;
use serde_json::{json, Value};

/// The agent image's size target.
const MAX_AGENT_IMAGE: u64 = 5 << 20;
/// The owner's limits of every agent: one core, busy a tenth of the time.
/// The job then lasts long enough for agents to come and go while it runs
/// (`docker run --cpus` would do the same, but CFS quotas are not enforced
/// on every engine), and the test leaves the cores to the rest of the suite.
const AGENT_LIMITS: [&str; 4] = [
    "-e",
    "MUSKETEER_CPUS=1",
    "-e",
    "MUSKETEER_MAX_CPU_PERCENT=10",
];
/// How long the whole job may take, slow machine included.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// The job: C = A·B for seeded random operands, 512×65536 by 65536×512:
/// much work (2^34 multiply-adds, planned into many tasks) for a small
/// result.
const SPEC: RandomMatrices = RandomMatrices {
    m: 512,
    k: 65536,
    n: 512,
    seed: 2026,
};

struct Cluster {
    docker: Docker,
    network: String,
    coordinator: String,
    agent_image: String,
}

impl Cluster {
    /// The admin CLI inside the coordinator's container: the binary is the
    /// only thing in the image, and it reads its data directory's defaults.
    fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["exec", self.coordinator.as_str(), "/musketeer-coordinator"];
        all.extend_from_slice(args);
        self.docker.cmd(&all)
    }

    fn job(&self, id: &str) -> Value {
        serde_json::from_str(&self.admin(&["jobs", "status", id]).unwrap()).unwrap()
    }

    /// `docker run -d` of the agent image: the coordinator and token come
    /// from the image, the owner's limits from the environment.
    fn start_agent(&self, what: &str) -> String {
        let mut options = vec!["--network", self.network.as_str()];
        options.extend_from_slice(&AGENT_LIMITS);
        self.docker
            .run_detached(what, &options, &self.agent_image, &[])
            .unwrap()
    }

    /// Active agents, from `agents list`.
    fn active_agents(&self) -> usize {
        let table = self.admin(&["agents", "list"]).unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(6) == Some("active"))
            .count()
    }

    fn wait_for_agents(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(120);
        while self.active_agents() < n {
            assert!(
                Instant::now() < end,
                "{n} agents did not enrol; coordinator log:\n{}",
                self.docker.logs(&self.coordinator)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn logs(&self) -> String {
        self.docker.logs(&self.coordinator)
    }
}

fn finished(job: &Value) -> bool {
    matches!(
        job["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

#[test]
fn container_cluster_survives_agents_coming_and_going() {
    let Some(()) = dist::prerequisite(REQUIRE_DOCKER, docker::available()) else {
        return;
    };
    let Some(agent_bin) = dist::prerequisite(REQUIRE_DOCKER, dist::dist_bin(X86_64, "musketeer"))
    else {
        return;
    };
    let Some(coordinator_bin) = dist::prerequisite(
        REQUIRE_DOCKER,
        dist::dist_bin(X86_64, "musketeer-coordinator"),
    ) else {
        return;
    };
    let mut docker = Docker::new().unwrap();
    let run_id = docker.run_id.clone();

    // The coordinator, named on the private network as its URL says.
    let network = docker.network("net").unwrap();
    let coordinator_image = docker
        .build_image(
            "coordinator",
            &dist::packaging_file("coordinator.Dockerfile"),
            &coordinator_bin,
            &[],
        )
        .unwrap();
    let coordinator = docker
        .run_detached(
            "coordinator",
            &[
                "--network",
                &network,
                "--network-alias",
                "coordinator",
                "--hostname",
                "coordinator",
                "-e",
                "MUSKETEER_LEASE_TTL=3",
            ],
            &coordinator_image,
            &[],
        )
        .unwrap();
    let mut cluster = Cluster {
        docker,
        network,
        coordinator,
        agent_image: String::new(),
    };
    let end = Instant::now() + Duration::from_secs(60);
    let token = loop {
        match cluster.admin(&["token", "create"]) {
            Ok(t) if t.starts_with("MSKTKN-") => break t,
            _ if Instant::now() < end => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("no join token: {other:?}\n{}", cluster.logs()),
        }
    };

    // The agent image with the coordinator and the token baked in.
    cluster.agent_image = cluster
        .docker
        .build_image(
            "agent",
            &dist::packaging_file("agent.Dockerfile"),
            &agent_bin,
            &[
                ("MUSKETEER_COORDINATOR", "https://coordinator:7443"),
                ("MUSKETEER_TOKEN", &token),
            ],
        )
        .unwrap();
    let size = cluster.docker.image_size(&cluster.agent_image).unwrap();
    eprintln!(
        "agent image: {size} bytes ({:.2} MiB)",
        size as f64 / 1048576.0
    );
    assert!(size <= MAX_AGENT_IMAGE, "the agent image is {size} bytes");

    let first: Vec<String> = (0..3)
        .map(|i| cluster.start_agent(&format!("agent{i}")))
        .collect();
    cluster.wait_for_agents(3);

    let body = json!({"kernel": "matmul", "random": {
        "m": SPEC.m, "k": SPEC.k, "n": SPEC.n, "seed": SPEC.seed}});
    let id = String::from_utf8(
        cluster
            .docker
            .cmd_with_input(
                &[
                    "exec",
                    "-i",
                    &cluster.coordinator,
                    "/musketeer-coordinator",
                    "jobs",
                    "submit",
                    "-",
                ],
                body.to_string().as_bytes(),
            )
            .unwrap(),
    )
    .unwrap()
    .trim()
    .to_string();

    // Mid-job: once the first results are in.
    let end = Instant::now() + JOB_TIMEOUT;
    loop {
        let job = cluster.job(&id);
        assert!(
            !finished(&job),
            "the job ended before agents came and went: {job}"
        );
        if job["progress"]["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "no progress: {job}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let late: Vec<String> = (3..6)
        .map(|i| cluster.start_agent(&format!("agent{i}")))
        .collect();
    cluster.wait_for_agents(6);
    let job = cluster.job(&id);
    assert!(!finished(&job), "the job ended before agents went: {job}");
    cluster.docker.cmd(&["kill", &first[0], &first[1]]).unwrap();
    cluster
        .docker
        .cmd(&["network", "disconnect", &cluster.network, &first[2]])
        .unwrap();
    let job = cluster.job(&id);
    assert!(
        !finished(&job),
        "the job ended before the last agent was cut off: {job}"
    );
    eprintln!("two agents killed and one cut off at {}", job["progress"]);

    let job = loop {
        let job = cluster.job(&id);
        if finished(&job) {
            break job;
        }
        assert!(
            Instant::now() < end,
            "the job did not finish: {job}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(job["state"], "succeeded", "{job}\n{}", cluster.logs());
    let result: Value =
        serde_json::from_str(&cluster.admin(&["jobs", "result", &id]).unwrap()).unwrap();
    reference::check_random_product(&SPEC, &result);

    // Only the agents added mid-job were left to finish it: they did work.
    let table = cluster.admin(&["agents", "list"]).unwrap();
    eprintln!("{table}");
    let late_tasks: u64 = late
        .iter()
        .map(|name| {
            // An agent names itself by its host name, the container's id.
            let host = cluster
                .docker
                .cmd(&["inspect", "-f", "{{.Config.Hostname}}", name])
                .unwrap();
            table
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(host.as_str()))
                .and_then(|l| l.split_whitespace().nth(9))
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("agent {host} is not listed:\n{table}"))
        })
        .sum();
    assert!(
        late_tasks > 0,
        "the agents added mid-job did nothing:\n{table}"
    );

    cluster.docker.cleanup().unwrap();
    let (containers, networks) = cluster.docker.leftovers().unwrap();
    assert!(
        containers.is_empty() && networks.is_empty(),
        "run {run_id} left containers {containers:?} and networks {networks:?}"
    );
}
