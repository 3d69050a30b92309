//! The admin CLI: `token`, `agents` and `jobs`, each a thin client of the API.

pub mod client;
pub mod release;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

pub use client::{connect, Connection};
pub use musketeer_client::{result_bytes, submit_json, ApiClient};
pub use release::ReleaseCommand;

/// `token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token; prints the token alone, for `TOKEN=$(...)`.
    Create,
    /// List tokens (ids only; secrets are never shown again).
    List,
    /// Revoke a token: no agent can enrol with it any more.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}

/// `agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents with capacity, state, last contact and credit.
    List,
    /// Let an agent finish what it holds and take nothing new.
    Drain {
        /// The agent's id.
        id: String,
    },
    /// Revoke an agent's credential; its tasks go back to the queue.
    Remove {
        /// The agent's id.
        id: String,
    },
}

/// `jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Submit a job body (a JSON file, or - for standard input); prints the job id.
    Submit {
        /// The JSON job body, or with --wordcount a text file to count.
        file: PathBuf,
        /// Stream FILE as the text of a word count job.
        #[arg(long)]
        wordcount: bool,
        /// Word count options (with --wordcount), e.g. `min_len=5&split=whitespace`.
        #[arg(long, default_value = "")]
        options: String,
        /// Wait for the job and print its result.
        #[arg(long)]
        wait: bool,
    },
    /// List recent jobs.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a job's state and progress.
    Status {
        /// The job's id.
        id: String,
    },
    /// Wait for a job to finish, with a progress bar; exits non-zero unless it succeeded.
    Wait {
        /// The job's id.
        id: String,
    },
    /// Print a finished job's result.
    Result {
        /// The job's id.
        id: String,
        /// json, tsv (word count) or npy (matmul).
        #[arg(long, default_value = "json")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        id: String,
    },
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn age(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Runs a `token` command.
pub async fn token(c: &ApiClient, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create => {
            let v: Value = c
                .send(c.request(Method::POST, "/v1/tokens"))
                .await?
                .json()
                .await?;
            println!("{}", v["token"].as_str().context("no token in the answer")?);
        }
        TokenCommand::List => {
            let v = c.get_json("/v1/tokens").await?;
            println!("{:<14} {:<8} {:>5}", "ID", "STATE", "USES");
            for t in v["tokens"].as_array().into_iter().flatten() {
                let state = if t["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<14} {:<8} {:>5}",
                    t["id"].as_str().unwrap_or("?"),
                    state,
                    t["uses"]
                );
            }
        }
        TokenCommand::Revoke { id } => {
            c.send(c.request(Method::DELETE, &format!("/v1/tokens/{id}")))
                .await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

/// Runs an `agents` command.
pub async fn agents(c: &ApiClient, cmd: AgentsCommand) -> Result<()> {
    match cmd {
        AgentsCommand::List => {
            let v = c.get_json("/v1/agents").await?;
            let now = v["now_ms"].as_u64().unwrap_or(0);
            println!(
                "{:<17} {:<16} {:<8} {:<10} {:>4} {:>8} {:<9} {:>6} {:>7} {:>10} {:>10} TRUST",
                "ID",
                "HOST",
                "ARCH",
                "VERSION",
                "CPUS",
                "MEMORY",
                "STATE",
                "SEEN",
                "RUNNING",
                "TASKS",
                "CPU-S"
            );
            for a in v["agents"].as_array().into_iter().flatten() {
                let cap = &a["capacity"];
                println!(
                    "{:<17} {:<16} {:<8} {:<10} {:>4} {:>7}M {:<9} {:>6} {:>7} {:>10} {:>10.1} {}",
                    a["id"].as_str().unwrap_or("?"),
                    cap["hostname"].as_str().unwrap_or("?"),
                    cap["arch"].as_str().unwrap_or("?"),
                    cap["version"].as_str().unwrap_or("?"),
                    cap["cpus"],
                    cap["memory_bytes"].as_u64().unwrap_or(0) >> 20,
                    a["state"].as_str().unwrap_or("?"),
                    age(now, a["last_seen_ms"].as_u64().unwrap_or(0)),
                    a["leased"],
                    a["tasks_done"],
                    a["cpu_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                    trust_column(a)
                );
            }
        }
        AgentsCommand::Drain { id } => {
            c.send(c.request(Method::POST, &format!("/v1/agents/{id}/drain")))
                .await?;
            eprintln!("agent {id} is draining");
        }
        AgentsCommand::Remove { id } => {
            c.send(c.request(Method::DELETE, &format!("/v1/agents/{id}")))
                .await?;
            eprintln!("agent {id} removed; its tasks went back to the queue");
        }
    }
    Ok(())
}

/// Waits for a job to finish, drawing a progress bar on standard error
/// when `bar` is set; returns its final status.
pub async fn wait(c: &ApiClient, id: &str, bar: bool) -> Result<Value> {
    let pb = if bar {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} tasks ({elapsed})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_message(id.to_string());
        Some(pb)
    } else {
        None
    };
    let v = musketeer_client::wait_with(c, id, |v| {
        if let Some(pb) = &pb {
            pb.set_length(v["progress"]["total"].as_u64().unwrap_or(0));
            pb.set_position(v["progress"]["done"].as_u64().unwrap_or(0));
            pb.tick();
        }
    })
    .await?;
    if let Some(pb) = pb {
        pb.finish_with_message(format!("{id} {}", v["state"].as_str().unwrap_or("")));
    }
    Ok(v)
}

/// Runs a `jobs` command.
pub async fn jobs(c: &ApiClient, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::Submit {
            file,
            wordcount,
            options,
            wait: and_wait,
        } => {
            let id = if wordcount {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                let req = c
                    .request(Method::POST, &format!("/v1/jobs/wordcount?{options}"))
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(reqwest::Body::wrap_stream(stream));
                let v: Value = c.send(req).await?.json().await?;
                v["id"].as_str().context("no id in the answer")?.to_string()
            } else {
                let body = if file.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    b
                } else {
                    std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?
                };
                submit_json(c, body).await?
            };
            println!("{id}");
            if and_wait {
                let status = wait(c, &id, true).await?;
                if status["state"] != "succeeded" {
                    bail!("job {id} {}: {}", status["state"], status["error"]);
                }
                std::io::stdout().write_all(&result_bytes(c, &id, "json").await?)?;
                println!();
            }
        }
        JobsCommand::List { limit } => {
            let v = c.get_json(&format!("/v1/jobs?limit={limit}")).await?;
            println!(
                "{:<36} {:<10} {:<10} {:>12}",
                "ID", "KERNEL", "STATE", "DONE/TOTAL"
            );
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:<36} {:<10} {:<10} {:>12}",
                    j["id"].as_str().unwrap_or("?"),
                    j["kernel"].as_str().unwrap_or("?"),
                    j["state"].as_str().unwrap_or("?"),
                    format!("{}/{}", j["progress"]["done"], j["progress"]["total"])
                );
            }
        }
        JobsCommand::Status { id } => print_json(&c.get_json(&format!("/v1/jobs/{id}")).await?)?,
        JobsCommand::Wait { id } => {
            let status = wait(c, &id, true).await?;
            if status["state"] != "succeeded" {
                bail!("job {id} {}: {}", status["state"], status["error"]);
            }
        }
        JobsCommand::Result { id, format, output } => {
            let bytes = result_bytes(c, &id, &format).await?;
            match output {
                Some(path) => std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    if format == "json" {
                        writeln!(out)?;
                    }
                }
            }
        }
        JobsCommand::Cancel { id } => print_json(
            &c.send(c.request(Method::DELETE, &format!("/v1/jobs/{id}")))
                .await?
                .json()
                .await?,
        )?,
    }
    Ok(())
}

/// The agents list's trust column: the level, and the outvoted results
/// that earned a `suspect`.
fn trust_column(agent: &serde_json::Value) -> String {
    let trust = agent["trust"].as_str().unwrap_or("?");
    match agent["results_invalid"].as_u64().unwrap_or(0) {
        0 => trust.to_string(),
        n => format!(
            "{trust} ({n} of {} outvoted)",
            n + agent["results_valid"].as_u64().unwrap_or(0)
        ),
    }
}
