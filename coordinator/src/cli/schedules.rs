//! `schedules add|list|pause|resume|rm`: cron schedules of jobs (see the README).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use musketeer_client::ApiClient;
use reqwest::Method;
use serde_json::{json, Value};

/// `schedules ...`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Add a schedule: each tick of CRON submits the job in FILE; prints its id and first tick.
    Add {
        /// Five cron fields (minute hour day-of-month month day-of-week), or
        /// six with seconds first, e.g. "*/5 * * * *".
        cron: String,
        /// The JSON job body (a file, or - for standard input).
        file: PathBuf,
        /// The IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
    },
    /// List schedules with their next tick and last jobs.
    List,
    /// Pause a schedule: no tick fires until it is resumed.
    Pause {
        /// The schedule's id.
        id: String,
    },
    /// Resume a schedule from its next tick after now.
    Resume {
        /// The schedule's id.
        id: String,
    },
    /// Delete a schedule (the jobs it made stay).
    Rm {
        /// The schedule's id.
        id: String,
    },
}

fn print_schedule(s: &Value) {
    let last: Vec<String> = s["last_jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            format!(
                "{}:{}",
                j["id"].as_str().unwrap_or("?"),
                j["state"].as_str().unwrap_or("pending")
            )
        })
        .collect();
    println!(
        "{:<36} {:<16} {:<14} {:<7} next {}  last [{}]",
        s["id"].as_str().unwrap_or("?"),
        s["cron"].as_str().unwrap_or("?"),
        s["timezone"].as_str().unwrap_or("?"),
        if s["paused"] == true {
            "paused"
        } else {
            "active"
        },
        s["next_run"].as_str().unwrap_or("?"),
        last.join(" ")
    );
}

/// Runs a `schedules` command.
pub async fn schedules(c: &ApiClient, cmd: SchedulesCommand) -> Result<()> {
    match cmd {
        SchedulesCommand::Add {
            cron,
            file,
            timezone,
        } => {
            let job: Value = if file.as_os_str() == "-" {
                serde_json::from_reader(std::io::stdin())?
            } else {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a JSON job body", file.display()))?
            };
            let req = c
                .request(Method::POST, "/v1/schedules")
                .json(&json!({"cron": cron, "timezone": timezone, "job": job}));
            let v: Value = c.send(req).await?.json().await?;
            println!(
                "{}\tnext {}",
                v["id"].as_str().unwrap_or("?"),
                v["next_run"].as_str().unwrap_or("?")
            );
        }
        SchedulesCommand::List => {
            let v = c.get_json("/v1/schedules").await?;
            for s in v["schedules"].as_array().into_iter().flatten() {
                print_schedule(s);
            }
        }
        SchedulesCommand::Pause { id } => {
            let req = c.request(Method::POST, &format!("/v1/schedules/{id}/pause"));
            print_schedule(&c.send(req).await?.json().await?);
        }
        SchedulesCommand::Resume { id } => {
            let req = c.request(Method::POST, &format!("/v1/schedules/{id}/resume"));
            print_schedule(&c.send(req).await?.json().await?);
        }
        SchedulesCommand::Rm { id } => {
            let req = c.request(Method::DELETE, &format!("/v1/schedules/{id}"));
            c.send(req).await?;
            println!("{id} deleted");
        }
    }
    Ok(())
}
