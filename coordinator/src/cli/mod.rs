//! The admin CLI: `token`, `agents`, `jobs` and `modules`, each a thin
//! client of the API.

pub mod client;
pub mod modules;
pub mod release;
pub mod schedules;
pub mod workflows;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

pub use client::{connect, Connection};
pub use modules::ModulesCommand;
pub use musketeer_client::{result_bytes, submit_json, ApiClient};
pub use release::ReleaseCommand;
pub use schedules::SchedulesCommand;
pub use workflows::WorkflowsCommand;

/// `token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token (or with --viewer a viewer token); prints the token alone, for `TOKEN=$(...)`.
    Create {
        /// A viewer token: reads everything the admin can (API and dashboard), changes nothing, enrols no agent.
        #[arg(long)]
        viewer: bool,
    },
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
    /// A wasm job names its module as `modules push` printed it:
    /// `{"kernel":"wasm","module":"sha256:...","range":{"start":0,"end":100}}`.
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
    /// Retry a failed job's failed tasks (kept 24 h after it failed); its
    /// done tasks are not run again.
    Retry {
        /// The job's id.
        id: String,
    },
    /// Say why a job waits: missing labels, memory, priority, backoff, no agents.
    Why {
        /// The job's id.
        id: String,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
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
        TokenCommand::Create { viewer } => {
            let role = if viewer { "viewer" } else { "join" };
            let v: Value = c
                .send(
                    c.request(Method::POST, "/v1/tokens")
                        .json(&serde_json::json!({ "role": role })),
                )
                .await?
                .json()
                .await?;
            println!("{}", v["token"].as_str().context("no token in the answer")?);
        }
        TokenCommand::List => {
            let v = c.get_json("/v1/tokens").await?;
            println!("{:<14} {:<7} {:<8} {:>5}", "ID", "ROLE", "STATE", "USES");
            for t in v["tokens"].as_array().into_iter().flatten() {
                let state = if t["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<14} {:<7} {:<8} {:>5}",
                    t["id"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("join"),
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
        AgentsCommand::List => print!("{}", agents_table(&c.get_json("/v1/agents").await?)),
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

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Lays `rows` out under `columns` (header, alignment), each column as wide
/// as its widest cell, so that long ids, hostnames or trust notes never
/// shift the columns after them. Lines end without trailing blanks.
pub(crate) fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = columns.iter().map(|(h, _)| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((cell, w), (_, align))) in row.iter().zip(&widths).zip(columns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `agents list`: one line per agent of `GET /v1/agents`, under a header.
fn agents_table(v: &Value) -> String {
    use Align::{Left, Right};
    let now = v["now_ms"].as_u64().unwrap_or(0);
    let rows: Vec<Vec<String>> = v["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let cap = &a["capacity"];
            let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
            vec![
                text(&a["id"]),
                text(&cap["hostname"]),
                text(&cap["arch"]),
                text(&cap["version"]),
                cap["cpus"].to_string(),
                format!("{}M", cap["memory_bytes"].as_u64().unwrap_or(0) >> 20),
                text(&a["state"]),
                age(now, a["last_seen_ms"].as_u64().unwrap_or(0)),
                a["leased"].to_string(),
                a["tasks_done"].to_string(),
                format!("{:.1}", a["cpu_ms"].as_u64().unwrap_or(0) as f64 / 1000.0),
                trust_column(a),
            ]
        })
        .collect();
    table(
        &[
            ("ID", Left),
            ("HOST", Left),
            ("ARCH", Left),
            ("VERSION", Left),
            ("CPUS", Right),
            ("MEMORY", Right),
            ("STATE", Left),
            ("SEEN", Right),
            ("RUNNING", Right),
            ("TASKS", Right),
            ("CPU-S", Right),
            ("TRUST", Left),
        ],
        &rows,
    )
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
        JobsCommand::Why { id, json } => {
            let v = c.get_json(&format!("/v1/jobs/{id}/why")).await?;
            if json {
                print_json(&v)?;
            } else {
                print!("{}", why_text(&v));
            }
        }
        JobsCommand::Cancel { id } => print_json(
            &c.send(c.request(Method::DELETE, &format!("/v1/jobs/{id}")))
                .await?
                .json()
                .await?,
        )?,
        JobsCommand::Retry { id } => print_json(
            &c.send(c.request(Method::POST, &format!("/v1/jobs/{id}/retry")))
                .await?
                .json()
                .await?,
        )?,
    }
    Ok(())
}

/// `jobs why`: the job's state and counts, then one reason a line.
fn why_text(v: &Value) -> String {
    let mut out = format!(
        "job {} is {}: {} tasks waiting, {} leased\n",
        v["id"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["waiting"],
        v["leased"]
    );
    let reasons = v["reasons"].as_array().cloned().unwrap_or_default();
    if reasons.is_empty() {
        out.push_str("nothing waits\n");
    }
    for r in reasons {
        out.push_str("- ");
        out.push_str(r["message"].as_str().unwrap_or("?"));
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn why_lists_one_reason_a_line() {
        let v = json!({"id": "j1", "state": "queued", "waiting": 3, "leased": 0,
            "eligible_agents": 0, "reasons": [
                {"code": "missing_label", "message": "no active agent carries label gpu=yes"},
                {"code": "memory", "message": "needs 8 GiB, the largest active agent offers 4 GiB"}]});
        assert_eq!(
            why_text(&v),
            "job j1 is queued: 3 tasks waiting, 0 leased\n\
             - no active agent carries label gpu=yes\n\
             - needs 8 GiB, the largest active agent offers 4 GiB\n"
        );
        let none =
            json!({"id": "j2", "state": "succeeded", "waiting": 0, "leased": 0, "reasons": []});
        assert!(why_text(&none).ends_with("nothing waits\n"));
    }

    #[test]
    fn table_columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string(), "x".to_string()],
            vec!["longer-id".to_string(), "12345".to_string(), "".to_string()],
        ];
        let out = table(
            &[
                ("ID", Align::Left),
                ("N", Align::Right),
                ("NOTE", Align::Left),
            ],
            &rows,
        );
        assert_eq!(
            out,
            "ID             N  NOTE\n\
             a              1  x\n\
             longer-id  12345\n"
        );
    }

    /// Where each of `words` starts in `line`, searching left to right.
    fn starts(line: &str, words: &[&str]) -> Vec<usize> {
        let mut from = 0;
        words
            .iter()
            .map(|w| {
                let at = from
                    + line[from..]
                        .find(w)
                        .unwrap_or_else(|| panic!("{w} in {line}"));
                from = at + w.len();
                at
            })
            .collect()
    }

    #[test]
    fn agents_list_lines_up_whatever_the_lengths() {
        let agent = |id: &str, host: &str, invalid: u64| {
            json!({
                "id": id,
                "capacity": {"hostname": host, "arch": "x86_64", "version": "0.1.0",
                             "cpus": 2, "memory_bytes": 4u64 << 30},
                "state": "active", "last_seen_ms": 9_000, "leased": 1,
                "tasks_done": 12, "cpu_ms": 1500, "trust": "suspect",
                "results_invalid": invalid, "results_valid": 3,
            })
        };
        let v = json!({"now_ms": 10_000, "agents": [
            agent("ag-1", "h", 0),
            agent("ag-0123456789abcdef0123456789", "a-very-long-hostname.example.org", 1234),
        ]});
        let out = agents_table(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        // Left-aligned columns start, right-aligned ones end, at one place.
        let header = starts(lines[0], &["HOST", "ARCH", "STATE", "TRUST"]);
        for (line, host) in lines[1..].iter().zip(["h", "a-very-long-hostname"]) {
            let cells = starts(line, &[host, "x86_64", "active", "suspect"]);
            assert_eq!(cells, header, "{out}");
            assert!(!line.ends_with(' '), "{line:?}");
        }
        let ends = |line: &str, w: &str| line.find(w).unwrap() + w.len();
        assert_eq!(ends(lines[0], "MEMORY"), ends(lines[1], "4096M"), "{out}");
        assert_eq!(ends(lines[0], "CPU-S"), ends(lines[2], "1.5"), "{out}");
        assert!(
            lines[2].ends_with("suspect (1234 of 1237 outvoted)"),
            "{out}"
        );
    }
}
