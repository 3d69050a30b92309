//! The scale-out benchmark: prints the figures the scale-out issue asks for.
//!
//! - 1,000,000 Fibonacci items as one job and the word count of a generated
//!   text, on the embedded store, on Redis with one coordinator and on
//!   Redis with two coordinators behind a balancer (two agents each time),
//!   with Redis's figures as a fraction of the embedded store's from the
//!   same run;
//! - simulated agents (10,000 by default) against one coordinator: the
//!   store's load while they sit idle in long-polls, then leases per second
//!   and p50/p99 lease latency while they lease, hold and release tasks.
//!
//! Run it with `scripts/bench-scaleout` (release build). Sizes can be
//! changed: `bench-scaleout [fib_items] [text_mib] [sim_agents] [hold_ms] [window_s]`.

use std::time::{Duration, Instant};

use anyhow::Result;
use musketeer_client::ApiClient;
use musketeer_tasks::wordcount::{count_in_process, WordcountOptions};
use musketeer_tests::bench::{fibonacci_items, generate_text, wordcount_text};
use musketeer_tests::redis::RedisServer;
use musketeer_tests::shared::SharedCluster;
use musketeer_tests::sim::{SimAgents, SimReport};
use musketeer_tests::{Cluster, Coordinator, CoordinatorOptions};
use serde_json::json;

/// One store setup's figures.
struct Figures {
    fib_s: f64,
    wc_s: f64,
}

fn arg<T: std::str::FromStr>(i: usize, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(std::env::args()
        .nth(i)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

async fn run_jobs(
    name: &str,
    c: &ApiClient,
    fib_items: u64,
    text: &[u8],
    words: (u64, u64),
) -> Result<Figures> {
    let fib = fibonacci_items(c, fib_items).await?;
    let wc = wordcount_text(c, text, words.0, words.1).await?;
    let mb = text.len() as f64 / (1 << 20) as f64;
    println!(
        "{name}: fibonacci {fib_items} items succeeded after {:.3} s ({:.0} items/s); wordcount {mb:.0} MiB uploaded in {:.3} s, succeeded after {:.3} s ({:.0} MiB/s)",
        fib.succeeded.as_secs_f64(),
        fib_items as f64 / fib.succeeded.as_secs_f64(),
        wc.uploaded.as_secs_f64(),
        wc.succeeded.as_secs_f64(),
        mb / wc.succeeded.as_secs_f64(),
    );
    Ok(Figures {
        fib_s: fib.succeeded.as_secs_f64(),
        wc_s: wc.succeeded.as_secs_f64(),
    })
}

fn ratio_line(name: &str, embedded: &Figures, other: &Figures) {
    println!(
        "{name} vs embedded: fibonacci {:.2}, wordcount {:.2} of the embedded store's throughput [target >= 0.5]",
        embedded.fib_s / other.fib_s,
        embedded.wc_s / other.wc_s
    );
}

fn report(name: &str, r: &SimReport, commands: Option<u64>) {
    let store = commands
        .map(|c| {
            format!(
                "; Redis ran {:.0} commands/s",
                c as f64 / r.elapsed.as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!(
        "{name}: {} tasks leased in {:.1} s = {:.0} leases/s; lease latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms [target p99 < 100 ms]; {} empty long-polls, {} errors{store}",
        r.tasks,
        r.elapsed.as_secs_f64(),
        r.leases_per_s(),
        r.percentile(50.0).as_secs_f64() * 1e3,
        r.percentile(99.0).as_secs_f64() * 1e3,
        r.latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        r.empty_calls,
        r.errors,
    );
}

/// Simulated agents against one coordinator: idle, then leasing.
async fn simulate(
    name: &str,
    coord: &Coordinator,
    redis: Option<&RedisServer>,
    agents: usize,
    hold: Duration,
    window: Duration,
) -> Result<()> {
    let t = Instant::now();
    let sim = SimAgents::enrol(&coord.url, &coord.join_token, &coord.ca_pem, agents, 64).await?;
    println!(
        "{name}: {} simulated agents enrolled in {:.1} s",
        sim.len(),
        t.elapsed().as_secs_f64()
    );
    // Idle: every agent in a long-poll, no work anywhere. The store's load
    // is sampled once the first calls have all arrived: 10,000 new TLS
    // connections at once take this machine several seconds.
    let sample = async {
        tokio::time::sleep(Duration::from_secs(12)).await;
        let before = redis.map(RedisServer::commands_processed).transpose()?;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = redis.map(RedisServer::commands_processed).transpose()?;
        anyhow::Ok(
            before
                .zip(after)
                .map(|(b, a)| (a - b) as f64 / t.elapsed().as_secs_f64()),
        )
    };
    let (idle, rate) = tokio::join!(sim.run(Duration::from_secs(25), hold), sample);
    let (idle, rate) = (idle?, rate?);
    println!(
        "{name} idle: {} long-polls open, {} answered empty after {:.1} s{}",
        sim.len(),
        idle.empty_calls,
        idle.elapsed.as_secs_f64(),
        rate.map(|r| format!("; Redis ran {r:.0} commands/s once they were all waiting"))
            .unwrap_or_default()
    );
    // Busy: more tasks than agents (ranges of big Fibonacci numbers plan
    // to one task per number), leased, held and released.
    let c = coord.client();
    let jobs = agents.div_ceil(1000) * 3 / 2 + 1;
    let mut ids = Vec::new();
    for j in 0..jobs {
        let start = 999_000 - j as u64 * 1000;
        ids.push(
            coord
                .submit(
                    &json!({"kernel": "fibonacci", "range": {"start": start, "end": start + 1000}}),
                )
                .await?,
        );
    }
    let before = redis.map(RedisServer::commands_processed).transpose()?;
    let delayed = redis.map(RedisServer::delayed_fsyncs).transpose()?;
    let busy = sim.run(window, hold).await?;
    let after = redis.map(RedisServer::commands_processed).transpose()?;
    if let (Some(r), Some(d)) = (redis, delayed) {
        println!(
            "{name}: Redis waited for the disk before writing its append-only file {} times during the run",
            r.delayed_fsyncs()? - d
        );
    }
    report(
        &format!(
            "{name} leasing ({} agents holding each task {} ms)",
            sim.len(),
            hold.as_millis()
        ),
        &busy,
        before.zip(after).map(|(b, a)| a - b),
    );
    for id in ids {
        let _ = c
            .send(c.request(reqwest::Method::DELETE, &format!("/v1/jobs/{id}")))
            .await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let fib_items: u64 = arg(1, 1_000_000)?;
    let text_mib: usize = arg(2, 200)?;
    let sim_agents: usize = arg(3, 10_000)?;
    let hold = Duration::from_millis(arg(4, 5_000)?);
    let window = Duration::from_secs(arg(5, 30)?);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_agent = (cores / 2).max(1).to_string();
    let agent_flags = ["--cpus", per_agent.as_str()];
    // Every simulated agent enrols from 127.0.0.1: the per-address limit,
    // meant for strangers, would refuse all but the first few hundred.
    let options = CoordinatorOptions {
        lease_ttl: 30.0,
        extra: vec!["--address-requests-per-s".into(), "0".into()],
    };
    println!("bench-scaleout: {cores} cores, two agents with --cpus {per_agent}");

    let text = generate_text(text_mib << 20);
    let local = count_in_process(&text, &WordcountOptions::default(), cores);
    let words = (local.total_words, local.counts.len() as u64);
    drop(local);

    let embedded = {
        let cluster = Cluster::start(2, options.clone(), &agent_flags).await?;
        run_jobs(
            "embedded store",
            &cluster.coordinator.client(),
            fib_items,
            &text,
            words,
        )
        .await?
    };
    let one = {
        let cluster = SharedCluster::start(1, options.clone(), 2, &agent_flags).await?;
        run_jobs(
            "Redis, one coordinator",
            &cluster.coordinators[0].client(),
            fib_items,
            &text,
            words,
        )
        .await?
    };
    let two = {
        let cluster = SharedCluster::start(2, options.clone(), 2, &agent_flags).await?;
        run_jobs(
            "Redis, two coordinators behind a balancer",
            &cluster.client(),
            fib_items,
            &text,
            words,
        )
        .await?
    };
    drop(text);
    ratio_line("Redis, one coordinator", &embedded, &one);
    ratio_line("Redis, two coordinators", &embedded, &two);

    if sim_agents > 0 {
        let cluster = SharedCluster::start(1, options.clone(), 0, &[]).await?;
        simulate(
            "Redis store",
            &cluster.coordinators[0],
            Some(&cluster.redis),
            sim_agents,
            hold,
            window,
        )
        .await?;
        drop(cluster);
        let coord = Coordinator::start(options)?;
        simulate("embedded store", &coord, None, sim_agents, hold, window).await?;
    }
    Ok(())
}
