//! Out of space, nothing lost: a coordinator on a small filesystem the test
//! mounts (a tmpfs; the tests need root), a Redis at its `maxmemory`, and
//! an agent whose state directory is full. Writes that cannot fit are
//! refused with `507`, reads go on, nothing accepted is lost, nothing
//! refused is left behind, and work resumes once space returns, without a
//! restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use musketeer_coordinator::cli::ApiClient;
use musketeer_tests::redis::RedisServer;
use musketeer_tests::{bin, wait_exit, Agent, Coordinator, CoordinatorOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// The reserve the coordinator on the small disk keeps.
const RESERVE: u64 = 4 * MIB;

/// A tmpfs of a given size on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts it, or fails the test saying why: a test that cannot make its
    /// small disk must not pass without having run.
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("musketeer-small-disk-")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { dir },
            Ok(o) => panic!(
                "cannot mount a {size} tmpfs on {}: {}; these tests make a small filesystem \
                 and need root (or CAP_SYS_ADMIN)",
                dir.path().display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run mount(8) to make a small filesystem: {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Fills the filesystem holding `dir` to the last byte with one file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for block in [MIB as usize, 4096, 1] {
        let buf = vec![0x55u8; block];
        while f.write_all(&buf).is_ok() {}
    }
    assert!(
        free_bytes(dir) < 64 << 10,
        "the disk is not full after filling it"
    );
    path
}

/// A text of about `bytes` bytes of counted words: `w0 w1 ... w99 w0 ...`.
fn text(bytes: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes as usize + 8);
    let mut i = 0u64;
    while (out.len() as u64) < bytes {
        let _ = write!(out, "w{} ", i % 100);
        i += 1;
    }
    out
}

async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// POSTs `body` with its length.
async fn post(c: &ApiClient, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = c.request(Method::POST, path).body(body).send().await;
    answer(resp.unwrap_or_else(|e| panic!("POST {path} broke off: {e:#}"))).await
}

/// POSTs `body` as a stream with no announced length.
async fn post_stream(c: &ApiClient, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(256 << 10).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks);
    let resp = c
        .request(Method::POST, path)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    answer(resp.unwrap_or_else(|e| panic!("POST {path} broke off: {e:#}"))).await
}

async fn get(c: &ApiClient, path: &str) -> (StatusCode, Value) {
    answer(c.request(Method::GET, path).send().await.unwrap()).await
}

async fn healthz(c: &Coordinator) -> (StatusCode, Value) {
    get(&c.client_with_token(""), "/healthz").await
}

/// Jobs with input files in the blob folder.
fn blob_jobs(data: &Path) -> usize {
    std::fs::read_dir(data.join("musketeer.blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `cond` every 50 ms for up to `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < end, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_507(v: &Value, code: &str, words: &[&str]) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(message.contains(w), "{w:?} missing from {message:?}");
    }
    // Never the driver's text.
    for driver in [
        "os error",
        "database or disk",
        "OOM",
        "Redis error",
        "database error",
    ] {
        assert!(!message.contains(driver), "driver text in {message:?}");
    }
}

fn small_job() -> Value {
    json!({"kernel": "fibonacci", "n": [10]})
}

/// The words a finished word count counted.
async fn total_words(c: &Coordinator, id: &str) -> u64 {
    let result = c.result(id, JOB_TIMEOUT).await.unwrap();
    result["total_words"]
        .as_u64()
        .unwrap_or_else(|| panic!("no total_words in {result}"))
}

/// The words in a text made by [`text`].
fn words_in(text: &[u8]) -> u64 {
    text.split(|b| *b == b' ').filter(|w| !w.is_empty()).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_disk_refuses_what_cannot_fit_keeps_reads_and_recovers_without_a_restart() {
    let disk = Tmpfs::mount("24m");
    let data = disk.path().join("data");
    let mut c = Coordinator::start_with_data_dir(
        CoordinatorOptions {
            extra: vec!["--min-free-disk".into(), format!("{}", RESERVE)],
            ..Default::default()
        },
        Some(data.clone()),
    )
    .unwrap();
    let _agent = Agent::join(&c.url, &c.join_token, &[]).unwrap();
    let client = c.client();
    let first = c.submit(&small_job()).await.unwrap();
    c.result(&first, JOB_TIMEOUT).await.unwrap();

    // A 40 MiB upload on a 24 MiB disk, announced: refused before a byte
    // is stored, with the numbers and what to do.
    let big = text(40 * MIB);
    let (s, v) = post(&client, "/v1/jobs/wordcount", big.clone()).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_507(
        &v,
        "insufficient_storage",
        &[
            "MiB free",
            "this upload needs",
            "must stay free",
            "purge finished jobs",
        ],
    );
    assert_eq!(blob_jobs(&data), 0, "a refused upload left files");

    // The same text streamed with no length: refused while it is read,
    // and every byte it wrote goes at once.
    let free_before = free_bytes(&data);
    let (s, v) = post_stream(&client, "/v1/jobs/wordcount", big).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_507(&v, "insufficient_storage", &["MiB free", "must stay free"]);
    wait_until(
        "the refused upload's files are removed",
        Duration::from_secs(10),
        async || blob_jobs(&data) == 0,
    )
    .await;
    assert!(
        free_bytes(&data) + 4 * MIB >= free_before,
        "the refused upload's bytes still take the disk: {} free, {} before",
        free_bytes(&data),
        free_before
    );
    let v = client.get_json("/v1/jobs").await.unwrap();
    assert_eq!(
        v["jobs"].as_array().unwrap().len(),
        1,
        "a refused job shows: {v}"
    );

    // Small jobs are accepted again, and a restart works.
    let second = c.submit(&small_job()).await.unwrap();
    c.result(&second, JOB_TIMEOUT).await.unwrap();
    c.restart().unwrap();
    let third = c.submit(&small_job()).await.unwrap();
    c.result(&third, JOB_TIMEOUT).await.unwrap();

    // Space freed by deleting a job lets a refused job in. The first text
    // waits in a queue no agent serves, holding its share of the disk.
    let size = (free_bytes(&data) - RESERVE) * 6 / 10;
    let words = text(size);
    let (s, v) = post(&client, "/v1/jobs/wordcount?queue=parked", words.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let parked = v["id"].as_str().unwrap().to_string();
    let (s, v) = post(&client, "/v1/jobs/wordcount", words.clone()).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_507(&v, "insufficient_storage", &["MiB free"]);
    let resp = client
        .send(client.request(Method::DELETE, &format!("/v1/jobs/{parked}")))
        .await
        .unwrap();
    let cancelled: Value = resp.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(blob_jobs(&data), 0, "a deleted job's inputs stay on disk");
    let (s, v) = post(&client, "/v1/jobs/wordcount", words.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let resubmitted = v["id"].as_str().unwrap().to_string();
    let expected = words_in(&words);
    assert_eq!(total_words(&c, &resubmitted).await, expected);

    // A disk filled by something else: writes get 507, reads go on,
    // /healthz says degraded.
    let filler = fill(&data);
    let (s, v) = post(&client, "/v1/jobs", small_job().to_string().into_bytes()).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_507(&v, "insufficient_storage", &["free"]);
    let (s, v) = post(&client, "/v1/jobs/wordcount", b"a few words".to_vec()).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    let status = c.job_status(&first).await.unwrap();
    assert_eq!(status["state"], "succeeded");
    c.result(&first, JOB_TIMEOUT).await.unwrap();
    assert_eq!(total_words(&c, &resubmitted).await, expected);
    // The dashboard still reads, and says why it is degraded.
    let snapshot = c.client().get_json("/dashboard/snapshot").await.unwrap();
    assert!(
        snapshot["degraded"]
            .as_str()
            .is_some_and(|d| d.contains("disk space low")),
        "{snapshot}"
    );
    let (s, v) = healthz(&c).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["status"], "degraded", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("disk space low"),
        "{v}"
    );
    let metrics = c
        .client_with_token("")
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("musketeer_requests_refused_no_space_total "))
        .unwrap_or_else(|| panic!("no refusal counter in:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(refused >= 2, "{refused} refusals counted since the restart");

    // It starts on the full disk, read-only, and says so. (The harness
    // deletes the URL file first: the coordinator writes it into the page
    // that frees, and nothing else.)
    c.restart().unwrap();
    assert!(c.log().contains("starting read-only"), "{}", c.log());
    assert_eq!(healthz(&c).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (s, v) = post(&client, "/v1/jobs", small_job().to_string().into_bytes()).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_eq!(c.job_status(&third).await.unwrap()["state"], "succeeded");

    // Space returns: normal again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        "/healthz says ok again",
        Duration::from_secs(10),
        async || healthz(&c).await.0 == StatusCode::OK,
    )
    .await;
    let again = c.submit(&small_job()).await.unwrap();
    c.result(&again, JOB_TIMEOUT).await.unwrap();
    let log = c.log();
    assert!(log.contains("disk space is back"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_reserve_a_disk_filled_by_an_upload_is_a_clean_507_and_its_bytes_go() {
    let disk = Tmpfs::mount("16m");
    let data = disk.path().join("data");
    let mut c = Coordinator::start_with_data_dir(
        CoordinatorOptions {
            extra: vec!["--min-free-disk".into(), "0".into()],
            ..Default::default()
        },
        Some(data.clone()),
    )
    .unwrap();
    let _agent = Agent::join(&c.url, &c.join_token, &[]).unwrap();
    let client = c.client();

    // Nothing refuses it early: the disk itself fills under the blob files.
    let free_before = free_bytes(&data);
    let (s, v) = post_stream(&client, "/v1/jobs/wordcount", text(40 * MIB)).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_507(
        &v,
        "store_full",
        &["disk is full", "reads still work", "Purge finished jobs"],
    );
    wait_until(
        "the failed upload's files are removed",
        Duration::from_secs(10),
        async || blob_jobs(&data) == 0,
    )
    .await;
    assert!(
        free_bytes(&data) + 4 * MIB >= free_before,
        "the failed upload's bytes still take the disk: {} free, {} before",
        free_bytes(&data),
        free_before
    );
    let v = client.get_json("/v1/jobs").await.unwrap();
    assert_eq!(v["jobs"], json!([]), "a failed upload shows");

    // The next job is accepted and runs; so does a restart.
    let id = c.submit(&small_job()).await.unwrap();
    c.result(&id, JOB_TIMEOUT).await.unwrap();
    c.restart().unwrap();
    let id = c.submit(&small_job()).await.unwrap();
    c.result(&id, JOB_TIMEOUT).await.unwrap();

    // A crash mid-upload, then a disk filled to the last page: the restart
    // removes the upload's files before it writes anything, and works.
    let slow = futures::stream::unfold(0u32, |sent| async move {
        if sent >= 32 {
            // Then the client goes quiet, as a crash would find it.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Some((Ok::<_, std::io::Error>(text(256 << 10)), sent + 1))
    });
    let upload = {
        let client = c.client();
        tokio::spawn(async move {
            let _ = client
                .request(Method::POST, "/v1/jobs/wordcount?queue=parked")
                .body(reqwest::Body::wrap_stream(slow))
                .send()
                .await;
        })
    };
    wait_until(
        "the upload's first chunk is on disk",
        Duration::from_secs(30),
        async || blob_jobs(&data) > 0,
    )
    .await;
    c.kill();
    upload.abort();
    let _filler = fill(&data);
    c.restart().unwrap();
    assert_eq!(
        blob_jobs(&data),
        0,
        "the cut-off upload's files are still there"
    );
    let id = c.submit(&small_job()).await.unwrap();
    c.result(&id, JOB_TIMEOUT).await.unwrap();
}

/// `redis-cli -p PORT ARGS...`'s output.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn used_memory(redis: &RedisServer) -> u64 {
    redis_cli(redis, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_refuses_with_507_and_every_accepted_job_completes() {
    let redis = RedisServer::start().unwrap();
    let c = Coordinator::start(CoordinatorOptions {
        extra: vec!["--redis".into(), redis.url()],
        ..Default::default()
    })
    .unwrap();
    let _agent = Agent::join(&c.url, &c.join_token, &[]).unwrap();
    let client = c.client();
    let first = c.submit(&small_job()).await.unwrap();
    c.result(&first, JOB_TIMEOUT).await.unwrap();

    // Room for a few more jobs: they wait in a queue no agent serves until
    // Redis is full, streamed texts and JSON jobs in turn.
    let limit = used_memory(&redis) + 3 * MIB;
    assert_eq!(
        redis_cli(&redis, &["CONFIG", "SET", "maxmemory", &limit.to_string()]),
        "OK"
    );
    let words = text(400 << 10);
    let per_job = words_in(&words);
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..100 {
        let (s, v) = if i % 4 == 3 {
            let job = json!({"kernel": "fibonacci", "n": [20, 30], "queue": "parked"});
            post(&client, "/v1/jobs", job.to_string().into_bytes()).await
        } else {
            post(&client, "/v1/jobs/wordcount?queue=parked", words.clone()).await
        };
        match s {
            StatusCode::CREATED => accepted.push((
                v["id"].as_str().unwrap().to_string(),
                v["tasks"].as_u64().unwrap(),
                i % 4 != 3,
            )),
            StatusCode::INSUFFICIENT_STORAGE => {
                refusal = Some(v);
                break;
            }
            other => panic!("job {i}: {other} {v}"),
        }
    }
    let refusal = refusal.expect("Redis never filled up");
    assert_507(&refusal, "store_full", &["maxmemory", "reads still work"]);
    assert!(!accepted.is_empty(), "no job fitted before Redis was full");
    let (s, v) = healthz(&c).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("maxmemory"), "{v}");

    // The refused upload left nothing: no unsealed job, no job in the list
    // that was not accepted. Reads go on.
    wait_until(
        "the refused job is dropped",
        Duration::from_secs(10),
        async || redis_cli(&redis, &["HLEN", "{musketeer}:unsealed"]) == "0",
    )
    .await;
    let listed = client.get_json("/v1/jobs?limit=1000").await.unwrap();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        accepted.len() + 1,
        "{listed}"
    );
    assert_eq!(c.job_status(&first).await.unwrap()["state"], "succeeded");

    // Memory freed: work resumes without a restart.
    assert_eq!(
        redis_cli(&redis, &["CONFIG", "SET", "maxmemory", "0"]),
        "OK"
    );
    let after = c.submit(&small_job()).await.unwrap();
    c.result(&after, JOB_TIMEOUT).await.unwrap();
    assert_eq!(healthz(&c).await.0, StatusCode::OK);

    // Every accepted job is whole and completes.
    let _parked = Agent::join(&c.url, &c.join_token, &["--queues", "parked"]).unwrap();
    for (id, tasks, wordcount) in &accepted {
        let status = c.wait(id, JOB_TIMEOUT).await.unwrap();
        assert_eq!(status["state"], "succeeded", "{status}");
        assert_eq!(
            status["progress"]["total"].as_u64(),
            Some(*tasks),
            "{status}"
        );
        if *wordcount {
            assert_eq!(total_words(&c, id).await, per_job);
        }
    }
}

/// `musketeer join` with its state in `state_dir` and its log in `log`.
fn join(c: &Coordinator, state_dir: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin("musketeer"))
        .arg("join")
        .arg(&c.url)
        .arg("--token")
        .arg(&c.join_token)
        .arg("--state-dir")
        .arg(state_dir)
        .env("MUSKETEER_LOG", "info")
        .env("MUSKETEER_YIELD_TO_HOST_PERCENT", "off")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

async fn wait_log(log: &Path, what: &str) {
    wait_until(
        &format!("the agent logs {what:?}"),
        Duration::from_secs(30),
        async || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(what)
        },
    )
    .await;
}

fn stop(mut agent: Child) {
    musketeer_tests::terminate(&agent);
    wait_exit(&mut agent, Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_full_state_directory_keeps_its_credential_and_works() {
    let state = Tmpfs::mount("1m");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("agent.log");
    let credential = state.path().join("agent.json");
    let c = Coordinator::start(CoordinatorOptions::default()).unwrap();

    // Nowhere to save the credential: the agent says so and works anyway.
    let filler = fill(state.path());
    let mut agent = join(&c, state.path(), &log);
    wait_log(&log, "cannot save the credential").await;
    let id = c.submit(&small_job()).await.unwrap();
    c.result(&id, JOB_TIMEOUT).await.unwrap();
    assert!(agent.try_wait().unwrap().is_none(), "the agent died");
    assert!(!credential.exists());
    assert!(
        !state.path().join("agent.json.tmp").exists(),
        "half a credential left"
    );
    stop(agent);

    // With room, it is saved.
    std::fs::remove_file(&filler).unwrap();
    agent = join(&c, state.path(), &log);
    wait_log(&log, "credential saved").await;
    let saved = std::fs::read(&credential).unwrap();
    stop(agent);

    // Full again: the saved credential is used, and kept whole when
    // joining another cluster cannot save the new one.
    let _filler = fill(state.path());
    agent = join(&c, state.path(), &log);
    wait_log(&log, "using the saved credential").await;
    let id = c.submit(&small_job()).await.unwrap();
    c.result(&id, JOB_TIMEOUT).await.unwrap();
    stop(agent);
    let other = Coordinator::start(CoordinatorOptions::default()).unwrap();
    agent = join(&other, state.path(), &log);
    wait_log(&log, "cannot save the credential").await;
    let id = other.submit(&small_job()).await.unwrap();
    other.result(&id, JOB_TIMEOUT).await.unwrap();
    assert!(agent.try_wait().unwrap().is_none(), "the agent died");
    stop(agent);
    assert_eq!(
        std::fs::read(&credential).unwrap(),
        saved,
        "the credential changed"
    );
    assert!(
        !state.path().join("agent.json.tmp").exists(),
        "half a credential left"
    );
}
