//! The core benchmark: prints the figures the core issue asks for.
//!
//! - 1,000,000 Fibonacci items (n = 20 + i mod 11) as one job on a
//!   coordinator and two agents: wall time and items per second;
//! - word count of a generated 200 MB text through the cluster, against the
//!   tasks crate counting the same text in-process on the same cores;
//! - an idle agent's resident memory and the stripped agent binary's size.
//!
//! Run it with `scripts/bench-core` (release build). Sizes can be changed:
//! `bench-core [fib_items] [text_mb]`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use musketeer_coordinator::cli::{result_bytes, ApiClient};
use musketeer_tasks::wordcount::{count_in_process, WordcountOptions};
use musketeer_tests::{bin, terminate, wait_exit, Agent, Cluster, CoordinatorOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// How often the benchmark asks whether a job is done: the timings carry up
/// to this much error, but asking more often steals measurable CPU from the
/// cluster on a two-core machine (each ask is a TLS request).
const POLL: Duration = Duration::from_millis(25);

/// Polls a job every [`POLL`] (the CLI's 200 ms poll would blur the
/// timing); returns once it has succeeded.
async fn wait_fast(c: &ApiClient, id: &str) -> Result<()> {
    loop {
        let v = c.get_json(&format!("/v1/jobs/{id}")).await?;
        match v["state"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("failed" | "cancelled") => bail!("job {id} ended: {v}"),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Streams `text` to the word count endpoint; returns the job's id and task count.
async fn upload_text(c: &ApiClient, text: &[u8]) -> Result<(String, u64)> {
    let resp: Value = c
        .send(
            c.request(Method::POST, "/v1/jobs/wordcount")
                .body(text.to_vec()),
        )
        .await?
        .json()
        .await?;
    let id = resp["id"].as_str().context("no id")?.to_string();
    Ok((id, resp["tasks"].as_u64().unwrap_or(0)))
}

/// A deterministic text of `bytes` bytes from a Zipf-like vocabulary of
/// 20,000 made-up words, some capitalised, with punctuation and newlines.
fn generate_text(bytes: usize) -> Vec<u8> {
    let syllables = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "an", "or",
    ];
    let vocab: Vec<String> = (0..20_000u32)
        .map(|i| {
            let mut w = String::new();
            let mut x = i + 1;
            while x > 0 {
                w.push_str(syllables[(x % 12) as usize]);
                x /= 12;
            }
            w
        })
        .collect();
    let mut out = Vec::with_capacity(bytes + 64);
    let mut state = 0x9E3779B97F4A7C15u64;
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Squaring a uniform number skews towards small ranks: frequent words.
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        let word = &vocab[((u * u * u) * vocab.len() as f64) as usize];
        if state.is_multiple_of(13) {
            let mut cs = word.chars();
            if let Some(f) = cs.next() {
                out.extend(f.to_uppercase().to_string().bytes());
                out.extend(cs.as_str().bytes());
            }
        } else {
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(match state % 17 {
            0 => b", ",
            1 => b".\n",
            _ => b" ",
        });
    }
    out
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let fib_items: u64 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let text_mb: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // The agents split this machine's cores between them, as two volunteers'
    // machines would split the work; the in-process count gets all of them.
    let per_agent = (cores / 2).max(1).to_string();
    let agent_flags = ["--cpus", per_agent.as_str()];
    println!(
        "bench-core: {cores} cores, two agents with --cpus {per_agent}, binaries from {}",
        bin("musketeer").parent().unwrap().display()
    );

    let cluster = Cluster::start(
        2,
        CoordinatorOptions {
            lease_ttl: 30.0,
            ..Default::default()
        },
        &agent_flags,
    )
    .await?;
    let c = cluster.coordinator.client();

    // 1. A million small Fibonacci items as one job.
    let ns: Vec<u64> = (0..fib_items).map(|i| 20 + i % 11).collect();
    let body = serde_json::to_vec(&json!({"kernel": "fibonacci", "n": ns}))?;
    let start = Instant::now();
    let resp: Value = c
        .send(c.request(Method::POST, "/v1/jobs").body(body))
        .await?
        .json()
        .await?;
    let submitted = start.elapsed();
    let id = resp["id"].as_str().context("no id")?.to_string();
    wait_fast(&c, &id).await?;
    let done = start.elapsed();
    let bytes = result_bytes(&c, &id, "json").await?;
    let fetched = start.elapsed();
    let result: Value = serde_json::from_slice(&bytes)?;
    let values = result["values"].as_array().context("no values")?;
    let table: Vec<u128> = {
        let mut t = vec![0u128, 1];
        for i in 2..=30 {
            let next = t[i - 1] + t[i - 2];
            t.push(next);
        }
        t
    };
    if values.len() as u64 != fib_items
        || values
            .iter()
            .zip(&ns)
            .any(|(v, &n)| v.as_str() != Some(table[n as usize].to_string().as_str()))
    {
        bail!("the Fibonacci result is wrong");
    }
    println!(
        "fibonacci: {fib_items} items in {} task(s): submitted in {:.3} s, succeeded after {:.3} s ({:.0} items/s); result ({:.1} MB) fetched after {:.3} s [target <= 5 s]",
        resp["tasks"],
        submitted.as_secs_f64(),
        done.as_secs_f64(),
        fib_items as f64 / done.as_secs_f64(),
        bytes.len() as f64 / 1e6,
        fetched.as_secs_f64()
    );

    // 2. Word count: in-process on every core, then through the cluster.
    let text = generate_text(text_mb << 20);
    let options = WordcountOptions::default();
    let mut best = Duration::MAX;
    let mut local = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = count_in_process(&text, &options, cores);
        best = best.min(t.elapsed());
        local = Some(r);
    }
    let local = local.context("no run")?;
    let mb = text.len() as f64 / (1 << 20) as f64;
    println!(
        "wordcount in-process: {mb:.0} MiB on {cores} threads in {:.3} s ({:.0} MiB/s)",
        best.as_secs_f64(),
        mb / best.as_secs_f64()
    );
    let start = Instant::now();
    let (id, tasks) = upload_text(&c, &text).await?;
    let uploaded = start.elapsed();
    wait_fast(&c, &id).await?;
    let cluster_time = start.elapsed();
    let got: Value = serde_json::from_slice(&result_bytes(&c, &id, "json").await?)?;
    if got["total_words"].as_u64() != Some(local.total_words)
        || got["distinct"].as_u64() != Some(local.counts.len() as u64)
    {
        bail!("the cluster's word count differs from the in-process one: {got}");
    }
    println!(
        "wordcount cluster: {mb:.0} MiB in {tasks} tasks: uploaded in {:.3} s, succeeded after {:.3} s ({:.0} MiB/s) = {:.2} of in-process [target >= 0.6]",
        uploaded.as_secs_f64(),
        cluster_time.as_secs_f64(),
        mb / cluster_time.as_secs_f64(),
        best.as_secs_f64() / cluster_time.as_secs_f64()
    );

    // 2b. The cluster's counting alone: the text accepted first with no agent
    //     there, then two fresh agents timed from their start to the result.
    //     Separates the ingest (bounded by the synced disk writes that make
    //     "201 Created" durable) from the distributed counting.
    let mut cluster = cluster;
    for agent in &mut cluster.agents {
        terminate(&agent.child);
    }
    for agent in &mut cluster.agents {
        wait_exit(&mut agent.child, Duration::from_secs(30));
    }
    let start = Instant::now();
    let (id, _) = upload_text(&c, &text).await?;
    let ingest = start.elapsed();
    let coord = &cluster.coordinator;
    let start = Instant::now();
    let fresh = [
        Agent::join(&coord.url, &coord.join_token, &agent_flags)?,
        Agent::join(&coord.url, &coord.join_token, &agent_flags)?,
    ];
    wait_fast(&c, &id).await?;
    let counting = start.elapsed();
    println!(
        "wordcount ingest alone: {mb:.0} MiB accepted (synced to disk) in {:.3} s ({:.0} MiB/s)",
        ingest.as_secs_f64(),
        mb / ingest.as_secs_f64()
    );
    println!(
        "wordcount cluster counting an accepted text: two fresh agents finished in {:.3} s ({:.0} MiB/s) = {:.2} of in-process [target >= 0.6]",
        counting.as_secs_f64(),
        mb / counting.as_secs_f64(),
        best.as_secs_f64() / counting.as_secs_f64()
    );
    drop(text);

    // 3. Resident memory: a fresh agent that joined and sits idle, and the
    //    two that just did the work, once idle again.
    let idle = Agent::join(
        &cluster.coordinator.url,
        &cluster.coordinator.join_token,
        &[],
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "agent idle RSS: fresh {} KiB; after counting {} KiB and {} KiB",
        rss_kib(idle.pid())?,
        rss_kib(fresh[0].pid())?,
        rss_kib(fresh[1].pid())?
    );

    // 4. The agent binary, stripped: the release build the benchmark ran,
    //    and the size-optimised profile that ships (already stripped).
    let agent_bin = bin("musketeer");
    let stripped = std::env::temp_dir().join("musketeer-stripped");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&agent_bin)
        .status()?;
    if status.success() {
        let size = std::fs::metadata(&stripped)?.len();
        println!(
            "agent binary (release, stripped): {size} bytes ({:.2} MiB)",
            size as f64 / (1 << 20) as f64
        );
        let _ = std::fs::remove_file(&stripped);
    }
    if let Some(small) = std::env::var_os("MUSKETEER_SMALL_AGENT") {
        let size = std::fs::metadata(&small)?.len();
        println!(
            "agent binary (release-small profile, stripped): {size} bytes ({:.2} MiB)",
            size as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
