//! Simulated agents: thousands of lightweight agents in one process, each
//! enrolled with its own credential and speaking the real protocol over
//! TLS (JSON lease requests, postcard batches, releases), for measuring the
//! coordinator rather than the kernels.
//!
//! A simulated agent leases one task at a time, holds it for a set time as
//! if working, then gives it back with `release` (no attempt used up), so a
//! finite queue keeps the coordinator busy for as long as the measurement
//! lasts. The coordinator's leasing does the same work whatever an agent
//! does with its tasks; computing them would only measure this machine's
//! two cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use musketeer_client::ApiClient;
use musketeer_tasks::protocol::{
    Capacity, EnrolRequest, EnrolResponse, LeaseRequest, LeaseResponse, Release,
};
use reqwest::Method;

/// One enrolled simulated agent.
#[derive(Clone, Debug)]
struct SimAgent {
    credential: String,
}

/// Enrolled simulated agents, sharing one HTTP client (one connection per
/// call in flight, as many agents would have).
pub struct SimAgents {
    client: ApiClient,
    agents: Vec<SimAgent>,
    capacity: Capacity,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct SimReport {
    /// How long the run lasted.
    pub elapsed: Duration,
    /// Lease calls that returned tasks.
    pub granted_calls: u64,
    /// Tasks leased.
    pub tasks: u64,
    /// Lease calls that returned empty (their long-poll ran out).
    pub empty_calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Latency of every lease call that returned tasks, sorted.
    pub latencies: Vec<Duration>,
}

impl SimReport {
    /// The `p`-th percentile (0 to 100) of lease latency.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    /// Tasks leased per second.
    pub fn leases_per_s(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl SimAgents {
    /// Enrols `n` agents at `url` with `token`, `concurrency` at a time.
    pub async fn enrol(
        url: &str,
        token: &str,
        ca_pem: &str,
        n: usize,
        concurrency: usize,
    ) -> Result<SimAgents> {
        let client = ApiClient::new(url, "", Some(ca_pem.as_bytes()))?;
        let capacity = Capacity {
            cpus: 1,
            memory_bytes: 1 << 30,
            arch: std::env::consts::ARCH.into(),
            os: std::env::consts::OS.into(),
            hostname: "sim".into(),
            version: "sim".into(),
            ..Capacity::default()
        };
        let agents: Vec<Result<SimAgent>> = stream::iter(0..n)
            .map(|_| {
                let client = client.clone();
                let req = EnrolRequest {
                    token: token.to_string(),
                    capacity: capacity.clone(),
                };
                async move {
                    let resp: EnrolResponse = client
                        .send(client.request(Method::POST, "/v1/agent/enrol").json(&req))
                        .await?
                        .json()
                        .await?;
                    Ok(SimAgent {
                        credential: resp.credential,
                    })
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let agents = agents.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(SimAgents {
            client,
            agents,
            capacity,
        })
    }

    /// How many agents there are.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Every agent leases one task at a time, holds it for `hold`, releases
    /// it, and leases again, for `window`. Agents start spread over the
    /// first `hold` so they do not move in lockstep.
    pub async fn run(&self, window: Duration, hold: Duration) -> Result<SimReport> {
        let start = Instant::now();
        let end = start + window;
        let granted = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(AtomicU64::new(0));
        let empty = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let n = self.agents.len().max(1);
        let mut handles = Vec::with_capacity(self.agents.len());
        for (i, agent) in self.agents.iter().enumerate() {
            let client = self.client.clone();
            let agent = agent.clone();
            let capacity = self.capacity.clone();
            let (granted, tasks, empty, errors) = (
                granted.clone(),
                tasks.clone(),
                empty.clone(),
                errors.clone(),
            );
            let offset = hold.mul_f64(i as f64 / n as f64);
            handles.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                tokio::time::sleep(offset).await;
                while Instant::now() < end {
                    let wait = end.saturating_duration_since(Instant::now());
                    let req = LeaseRequest {
                        max_work: u64::MAX / 2,
                        max_tasks: 1,
                        wait_ms: wait.as_millis().min(25_000) as u64,
                        capacity: capacity.clone(),
                    };
                    let t0 = Instant::now();
                    let leased = lease(&client, &agent, &req).await;
                    let took = t0.elapsed();
                    match leased {
                        Ok(resp) if resp.tasks.is_empty() => {
                            empty.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(resp) => {
                            granted.fetch_add(1, Ordering::Relaxed);
                            tasks.fetch_add(resp.tasks.len() as u64, Ordering::Relaxed);
                            latencies.push(took);
                            tokio::time::sleep(hold).await;
                            let release = Release {
                                tasks: resp.tasks.into_iter().map(|t| t.task).collect(),
                            };
                            let r = client
                                .send(
                                    client
                                        .request(Method::POST, "/v1/agent/release")
                                        .bearer_auth(&agent.credential)
                                        .json(&release),
                                )
                                .await;
                            if r.is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for h in handles {
            latencies.extend(h.await.context("a simulated agent panicked")?);
        }
        latencies.sort_unstable();
        Ok(SimReport {
            elapsed: start.elapsed(),
            granted_calls: granted.load(Ordering::Relaxed),
            tasks: tasks.load(Ordering::Relaxed),
            empty_calls: empty.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            latencies,
        })
    }
}

async fn lease(client: &ApiClient, agent: &SimAgent, req: &LeaseRequest) -> Result<LeaseResponse> {
    let resp = client
        .send(
            client
                .request(Method::POST, "/v1/agent/lease")
                .bearer_auth(&agent.credential)
                .json(req),
        )
        .await?;
    let bytes = resp.bytes().await?;
    match postcard::from_bytes(&bytes) {
        Ok(r) => Ok(r),
        Err(e) => bail!("the lease answer does not decode: {e}"),
    }
}
