//! `demo`: the whole system on one machine, from a fresh checkout. An
//! embedded coordinator on a loopback port, local agents speaking the real
//! protocol over pinned TLS (in this process, but through real sockets),
//! every kernel's sample job, and the results printed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use musketeer::{AgentConfig, Limits};
use serde_json::Value;
use tokio::sync::watch;

use crate::cli::{self, ApiClient};
use crate::server::{self, ServeConfig};

/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many local agents to start.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// Keep serving after the sample jobs, with the dashboard up, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
}

/// Runs the demo; fails unless every sample job succeeds.
pub async fn run(args: DemoArgs) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("musketeer-demo-")
        .tempdir()?;
    let running = server::start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("coordinator"),
        public_url: None,
        tls_cert: None,
        tls_key: None,
        server_cert_lifetime: crate::pki::MAX_SERVER_CERT_LIFETIME,
        lease_ttl: Duration::from_secs(10),
        max_upload: 1 << 30,
        min_free_disk: None,
        rate_limits: Default::default(),
        release_key: None,
        redis: None,
        // One machine, loopback only: the dashboard it prints needs no login.
        public_dashboard: true,
    })
    .await?;
    println!(
        "coordinator: {} (dashboard at {}/)",
        running.url, running.url
    );

    let (stop, stopped) = watch::channel(false);
    let mut agents = Vec::new();
    for i in 0..args.agents.max(1) {
        let config = AgentConfig::new(dir.path().join(format!("agent-{i}")))
            .joining(running.url.clone(), running.join_token.clone())
            // One core each: two agents share this machine the way two
            // volunteers' machines would share the work.
            .with_limits(Limits {
                cpus: Some(1),
                ..Limits::default()
            });
        let mut stopped = stopped.clone();
        agents.push(tokio::spawn(async move {
            musketeer::run(config, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    println!(
        "agents: {} joined with the coordinator's pinned join token",
        agents.len()
    );

    let client = ApiClient::new(
        &running.url,
        &running.admin_token,
        Some(running.ca_pem.as_bytes()),
    )?;
    let mut failures = 0;
    let mut jobs = Vec::new();
    for (kernel, body) in musketeer_tasks::samples::sample_jobs() {
        let id = cli::submit_json(&client, serde_json::to_vec(&body)?).await?;
        jobs.push((kernel, id, Instant::now()));
    }
    for (kernel, id, submitted) in jobs {
        let status = tokio::time::timeout(Duration::from_secs(120), cli::wait(&client, &id, false))
            .await
            .with_context(|| format!("the {kernel} job did not finish in two minutes"))??;
        if status["state"] != "succeeded" {
            println!("{kernel:<10} FAILED: {}", status["error"]);
            failures += 1;
            continue;
        }
        let bytes = cli::result_bytes(&client, &id, "json").await?;
        let result: Value = serde_json::from_slice(&bytes)?;
        println!(
            "{kernel:<10} {} tasks, {:.2} s: {}",
            status["progress"]["total"],
            submitted.elapsed().as_secs_f64(),
            musketeer_tasks::samples::summary(kernel, &result)
        );
    }
    if let Ok(v) = client.get_json("/v1/agents").await {
        for a in v["agents"].as_array().into_iter().flatten() {
            println!(
                "agent {} did {} tasks ({} ms of CPU)",
                a["id"], a["tasks_done"], a["cpu_ms"]
            );
        }
    }

    if args.serve {
        println!(
            "serving until Ctrl-C; admin token in {}",
            dir.path().join("coordinator/admin.token").display()
        );
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(true);
    for agent in agents {
        if let Err(e) = agent.await? {
            eprintln!("an agent stopped with an error: {e}");
        }
    }
    running.shutdown().await;
    if failures > 0 {
        bail!("{failures} sample job(s) failed");
    }
    println!("demo finished: every sample job succeeded");
    Ok(())
}
