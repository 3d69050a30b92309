//! `workflows submit|status|cancel`: graphs of jobs (see the README).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use musketeer_client::{cancel_workflow, submit_workflow, wait_workflow, ApiClient};
use serde_json::Value;

/// `workflows ...`
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// Submit a workflow (a JSON file, or - for standard input); prints its
    /// id, then each step's job id.
    Submit {
        /// The JSON workflow: `{"steps":[{"name","after","job"},...]}`.
        file: PathBuf,
        /// Wait until every step has finished; exits non-zero unless all succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Show every step's state.
    Status {
        /// The workflow's id.
        id: String,
    },
    /// Cancel every step that has not finished.
    Cancel {
        /// The workflow's id.
        id: String,
    },
}

/// Prints each step: name, state, job id, and why it failed.
fn print_steps(v: &Value) {
    println!(
        "workflow {} {}",
        v["id"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?")
    );
    for (name, s) in v["steps"].as_object().into_iter().flatten() {
        let error = s["error"]
            .as_str()
            .map(|e| format!("  {e}"))
            .unwrap_or_default();
        println!(
            "  {name:<16} {:<10} {}{error}",
            s["state"].as_str().unwrap_or("?"),
            s["job"].as_str().unwrap_or("?")
        );
    }
}

/// Runs a `workflows` command.
pub async fn workflows(c: &ApiClient, cmd: WorkflowsCommand) -> Result<()> {
    match cmd {
        WorkflowsCommand::Submit { file, wait } => {
            let body = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let v = submit_workflow(c, body).await?;
            let id = v["id"].as_str().context("no id in the answer")?.to_string();
            println!("{id}");
            for (name, job) in v["steps"].as_object().into_iter().flatten() {
                println!("{name}\t{}", job.as_str().unwrap_or("?"));
            }
            if wait {
                let status = wait_workflow(c, &id).await?;
                print_steps(&status);
                if status["state"] != "succeeded" {
                    bail!("workflow {id} {}", status["state"]);
                }
            }
        }
        WorkflowsCommand::Status { id } => {
            print_steps(&c.get_json(&format!("/v1/workflows/{id}")).await?)
        }
        WorkflowsCommand::Cancel { id } => print_steps(&cancel_workflow(c, &id).await?),
    }
    Ok(())
}
