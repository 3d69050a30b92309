//! Coordinators that share one Redis, behind one HAProxy address, with
//! agents that know only that address.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use musketeer_client::ApiClient;
use serde_json::Value;

use crate::haproxy::Haproxy;
use crate::redis::RedisServer;
use crate::{Agent, Coordinator, CoordinatorOptions};

/// A Redis, `n` coordinators on it, HAProxy in front, and agents.
pub struct SharedCluster {
    /// The agents, in start order (dropped first: they stop before the rest).
    pub agents: Vec<Agent>,
    /// The balancer all agents and clients go through.
    pub balancer: Haproxy,
    /// The coordinators, in start order; the first made the cluster's CA.
    pub coordinators: Vec<Coordinator>,
    /// The shared store.
    pub redis: RedisServer,
}

impl SharedCluster {
    /// Starts Redis, `coordinators` coordinators with `--redis` (and
    /// `options`), HAProxy, and `agents` agents with `agent_flags`;
    /// returns once every agent has enrolled.
    pub async fn start(
        coordinators: usize,
        options: CoordinatorOptions,
        agents: usize,
        agent_flags: &[&str],
    ) -> Result<SharedCluster> {
        let redis = RedisServer::start()?;
        let mut options = options;
        options.extra.extend(["--redis".to_string(), redis.url()]);
        let coordinators = (0..coordinators)
            .map(|_| Coordinator::start(options.clone()))
            .collect::<Result<Vec<_>>>()?;
        let balancer = Haproxy::start(
            &coordinators
                .iter()
                .map(|c| ([127, 0, 0, 1], c.port).into())
                .collect::<Vec<_>>(),
            &coordinators[0].ca_pem,
        )?;
        let token = coordinators[0].join_token.clone();
        let agents = (0..agents)
            .map(|_| Agent::join(&balancer.url(), &token, agent_flags))
            .collect::<Result<Vec<_>>>()?;
        let cluster = SharedCluster {
            agents,
            balancer,
            coordinators,
            redis,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while cluster.agent_count().await? < cluster.agents.len() {
            if Instant::now() > end {
                let logs: Vec<String> = cluster.agents.iter().map(Agent::log).collect();
                bail!(
                    "agents did not enrol; their logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(cluster)
    }

    /// The balancer's URL.
    pub fn url(&self) -> String {
        self.balancer.url()
    }

    /// An admin client that goes through the balancer.
    pub fn client(&self) -> ApiClient {
        let c = &self.coordinators[0];
        ApiClient::new(&self.url(), &c.admin_token, Some(c.ca_pem.as_bytes()))
            .expect("the client builds")
    }

    /// Agents enrolled, as any coordinator reports them.
    pub async fn agent_count(&self) -> Result<usize> {
        let v = self.client().get_json("/v1/agents").await?;
        Ok(v["agents"].as_array().map(Vec::len).unwrap_or(0))
    }

    /// Submits a JSON job through the balancer; returns its id.
    pub async fn submit(&self, body: &Value) -> Result<String> {
        Ok(musketeer_client::submit_json(&self.client(), serde_json::to_vec(body)?).await?)
    }

    /// A job's status through the balancer.
    pub async fn status(&self, id: &str) -> Result<Value> {
        Ok(self.client().get_json(&format!("/v1/jobs/{id}")).await?)
    }

    /// Waits for a job to succeed and returns its JSON result. Calls that
    /// fail (a coordinator killed under them, Redis restarting) are retried
    /// until `timeout`.
    pub async fn result(&self, id: &str, timeout: Duration) -> Result<Value> {
        let end = Instant::now() + timeout;
        let c = self.client();
        loop {
            match self.status(id).await {
                Ok(s) if s["state"] == "succeeded" => {
                    match musketeer_client::result_bytes(&c, id, "json").await {
                        Ok(bytes) => return Ok(serde_json::from_slice(&bytes)?),
                        Err(e) if Instant::now() > end => return Err(e.into()),
                        Err(_) => {}
                    }
                }
                Ok(s) if s["state"] == "failed" || s["state"] == "cancelled" => {
                    bail!("job {id} ended {s}\n{}", self.logs())
                }
                Ok(s) if Instant::now() > end => {
                    bail!(
                        "job {id} did not finish in {timeout:?}: {s}\n{}",
                        self.logs()
                    )
                }
                Err(e) if Instant::now() > end => return Err(e),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every coordinator's log, for failure messages.
    pub fn logs(&self) -> String {
        self.coordinators
            .iter()
            .enumerate()
            .map(|(i, c)| format!("--- coordinator {i}:\n{}", c.log()))
            .chain([format!("--- haproxy:\n{}", self.balancer.log())])
            .collect::<Vec<_>>()
            .join("\n")
    }
}
