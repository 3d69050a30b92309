//! What the benchmark binaries share: the jobs they time, checked against
//! what they must produce, and the generated text they count.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use musketeer_client::{result_bytes, ApiClient};
use reqwest::Method;
use serde_json::{json, Value};

/// How often the benchmarks ask whether a job is done: the timings carry up
/// to this much error, but asking more often steals measurable CPU from the
/// cluster on a two-core machine (each ask is a TLS request).
pub const POLL: Duration = Duration::from_millis(25);

/// Polls a job every [`POLL`] (the CLI's 200 ms poll would blur the
/// timing); returns once it has succeeded.
pub async fn wait_fast(c: &ApiClient, id: &str) -> Result<()> {
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
pub async fn upload_text(c: &ApiClient, text: &[u8]) -> Result<(String, u64)> {
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
pub fn generate_text(bytes: usize) -> Vec<u8> {
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

/// The timings of the Fibonacci benchmark job.
#[derive(Debug)]
pub struct FibonacciRun {
    /// Tasks the job was planned into.
    pub tasks: u64,
    /// From the start of the upload to its `201 Created`.
    pub submitted: Duration,
    /// From the start to the job's success.
    pub succeeded: Duration,
    /// From the start to the result fetched.
    pub fetched: Duration,
    /// The JSON result's size.
    pub result_bytes: usize,
}

/// Submits `items` Fibonacci numbers (n = 20 + i mod 11) as one job, waits
/// for it, fetches the result and checks every value.
pub async fn fibonacci_items(c: &ApiClient, items: u64) -> Result<FibonacciRun> {
    let ns: Vec<u64> = (0..items).map(|i| 20 + i % 11).collect();
    let body = serde_json::to_vec(&json!({"kernel": "fibonacci", "n": ns}))?;
    let start = Instant::now();
    let resp: Value = c
        .send(c.request(Method::POST, "/v1/jobs").body(body))
        .await?
        .json()
        .await?;
    let submitted = start.elapsed();
    let id = resp["id"].as_str().context("no id")?.to_string();
    wait_fast(c, &id).await?;
    let succeeded = start.elapsed();
    let bytes = result_bytes(c, &id, "json").await?;
    let fetched = start.elapsed();
    let result: Value = serde_json::from_slice(&bytes)?;
    let values = result["values"].as_array().context("no values")?;
    let mut table = vec![0u128, 1];
    for i in 2..=30 {
        let next = table[i - 1] + table[i - 2];
        table.push(next);
    }
    if values.len() as u64 != items
        || values
            .iter()
            .zip(&ns)
            .any(|(v, &n)| v.as_str() != Some(table[n as usize].to_string().as_str()))
    {
        bail!("the Fibonacci result is wrong");
    }
    Ok(FibonacciRun {
        tasks: resp["tasks"].as_u64().unwrap_or(0),
        submitted,
        succeeded,
        fetched,
        result_bytes: bytes.len(),
    })
}

/// The timings of a word count through the cluster.
#[derive(Debug)]
pub struct WordcountRun {
    /// Tasks (text chunks).
    pub tasks: u64,
    /// From the start of the upload to its `201 Created`.
    pub uploaded: Duration,
    /// From the start to the job's success.
    pub succeeded: Duration,
}

/// Streams `text` to the cluster, waits for the count and checks its total
/// and distinct words against `total_words` and `distinct`.
pub async fn wordcount_text(
    c: &ApiClient,
    text: &[u8],
    total_words: u64,
    distinct: u64,
) -> Result<WordcountRun> {
    let start = Instant::now();
    let (id, tasks) = upload_text(c, text).await?;
    let uploaded = start.elapsed();
    wait_fast(c, &id).await?;
    let succeeded = start.elapsed();
    let got: Value = serde_json::from_slice(&result_bytes(c, &id, "json").await?)?;
    if got["total_words"].as_u64() != Some(total_words)
        || got["distinct"].as_u64() != Some(distinct)
    {
        bail!("the cluster's word count differs from the in-process one: {got}");
    }
    Ok(WordcountRun {
        tasks,
        uploaded,
        succeeded,
    })
}
