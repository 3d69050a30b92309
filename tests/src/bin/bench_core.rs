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

use anyhow::{Context, Result};
use musketeer_tasks::wordcount::{count_in_process, WordcountOptions};
use musketeer_tests::bench::{
    fibonacci_items, generate_text, upload_text, wait_fast, wordcount_text,
};
use musketeer_tests::{bin, terminate, wait_exit, Agent, Cluster, CoordinatorOptions};

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
    let fib = fibonacci_items(&c, fib_items).await?;
    println!(
        "fibonacci: {fib_items} items in {} task(s): submitted in {:.3} s, succeeded after {:.3} s ({:.0} items/s); result ({:.1} MB) fetched after {:.3} s [target <= 5 s]",
        fib.tasks,
        fib.submitted.as_secs_f64(),
        fib.succeeded.as_secs_f64(),
        fib_items as f64 / fib.succeeded.as_secs_f64(),
        fib.result_bytes as f64 / 1e6,
        fib.fetched.as_secs_f64()
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
    let wc = wordcount_text(&c, &text, local.total_words, local.counts.len() as u64).await?;
    println!(
        "wordcount cluster: {mb:.0} MiB in {} tasks: uploaded in {:.3} s, succeeded after {:.3} s ({:.0} MiB/s) = {:.2} of in-process [target >= 0.6]",
        wc.tasks,
        wc.uploaded.as_secs_f64(),
        wc.succeeded.as_secs_f64(),
        mb / wc.succeeded.as_secs_f64(),
        best.as_secs_f64() / wc.succeeded.as_secs_f64()
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
