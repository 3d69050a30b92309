//! The shared store: Redis, so that several coordinators behind one address
//! serve the same agents and jobs, each able to answer any request.
//!
//! # Design
//! Every state change that must be atomic is one Lua script (sent as
//! `EVALSHA`, loaded again if Redis restarted and forgot it). A job's keys
//! carry one hash tag, `{<prefix>:j:<id>}`, so they share a hash slot, and
//! each per-job script touches only that job's keys: leasing, results,
//! heartbeats, expiry, cancel and finish are atomic per job, which is what
//! "a task is leased once, a result accepted once" needs, and each script
//! stays valid on Redis Cluster. Agents, tokens and the indexes across jobs
//! (queues, active jobs, the job list) carry the tag `{<prefix>}`.
//!
//! The indexes are kept by the coordinator after a per-job script answers,
//! so a crash between the two can leave an index stale, never the job: a
//! job in a queue index that has finished is dropped from it the next time
//! a lease or the expiry loop meets it, and a job is put in its indexes
//! before its first task exists, so no task is ever outside them.
//!
//! A queue's index holds the jobs that have tasks to lease (now or after a
//! retry backoff): a lease script that takes a job's last pending task
//! drops the job from it, and every script that makes tasks pending again
//! returns the job's place for the coordinator to put it back. A lease
//! call costs two round trips whatever the batch: the agent's state and
//! the queue heads, then the lease script of each job in order until the
//! batch is full (usually the first). Results, heartbeats and releases are
//! one pipeline of one script per job they touch. The expiry loop also
//! puts back any job with work that a crash left out of its index.
//!
//! Redundancy: each replica of a task has its own slot in its job
//! (`job_lib.lua` says how slots and lease ids are formed), so leasing,
//! heartbeats and expiry treat replicas as tasks. A returned replica of a
//! replicated job is a vote, and the result script records it and judges
//! the task (as [`validation::judge`]) in one atomic step. What lives with
//! the agent is read or written by the coordinator around that script: the
//! voter's trust before it (once per batch: an agent that earns or loses
//! trust within a batch is judged by its trust at the batch's start), the
//! credit and trust of the voters of decided tasks after it.
//!
//! Everything lives in Redis, large inputs included: coordinators on
//! different hosts share nothing else. Durability is Redis's: with
//! `appendonly yes` a reply is sent after the write reached the AOF file,
//! so a killed Redis loses nothing; `appendfsync everysec` (the default)
//! can lose the last second to a power cut, `always` nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, ErrorKind, Pipeline, ServerErrorKind, Value};
use async_trait::async_trait;
use musketeer_tasks::protocol::{HeartbeatAck, LeasedTask, TaskOutcome, TaskRef, TaskReport};
use musketeer_tasks::{Cost, Kernel};

use super::*;

/// Connections to Redis: Redis runs one command at a time anyway, but a
/// 32 MiB upload batch on one connection must not queue every lease behind it.
const CONNECTIONS: usize = 4;

/// Jobs of each queue a lease call looks at, in priority order. Only jobs
/// with tasks to lease are in a queue's index, so the first usually fills
/// the batch; more are for agents that cannot take the first ones' tasks.
const QUEUE_HEAD: isize = 64;

/// Most tasks one lease call looks at before giving up (as the embedded
/// store): bounds the time Redis is held when a queue is full of work this
/// agent cannot take.
const MAX_LEASE_SCAN: u64 = 16_384;

/// Most CPU time credited for one task (a week), as the embedded store.
const MAX_REPORTED_CPU_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most replicas one task may have in all: in a replicated job a lease id
/// carries its replica in its low bits (`lease % MAX_REPLICAS`), and a slot
/// is a task's index plus its replica times 2^32 (see `job_lib.lua`).
const MAX_REPLICAS: u32 = 32;

/// Replicated jobs this coordinator remembers, so their results go to the
/// script with their digests at once; forgotten all at once past this.
const MAX_KNOWN_REPLICATED: usize = 100_000;

/// How long a coordinator counts as alive after its last sign of life; its
/// unsealed uploads are dropped by the others once it is not.
const ALIVE_TTL: Duration = Duration::from_secs(15);

/// The fields of a job's hash that its status needs, in this order.
const STATUS_FIELDS: [&str; 12] = [
    "kernel",
    "state",
    "queue",
    "priority",
    "total",
    "done",
    "failed",
    "error",
    "created_ms",
    "started_ms",
    "finished_ms",
    "sealed",
];

/// What a judged vote came to, as the result script reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ballot {
    /// It agreed with the accepted answer.
    Agreed,
    /// The majority outvoted it.
    Outvoted,
    /// Its task's replicas disagree and are not resolved yet.
    Disputed,
}

/// One Lua script, called by its SHA-1.
struct Lua {
    code: String,
    sha: String,
}

impl Lua {
    fn new(code: String) -> Lua {
        let sha = ::redis::Script::new(&code).get_hash().to_string();
        Lua { code, sha }
    }

    /// `EVALSHA` with these keys; the caller appends the arguments.
    fn call(&self, keys: &[String]) -> Cmd {
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len()).arg(keys);
        c
    }
}

/// Every script, loaded together so one `NOSCRIPT` reload covers all.
struct Scripts {
    lease: Lua,
    complete: Lua,
    heartbeat: Lua,
    release: Lua,
    expire: Lua,
    renew_all: Lua,
    add_tasks: Lua,
    seal: Lua,
    abort: Lua,
    cancel: Lua,
    finish: Lua,
    token_create: Lua,
    token_revoke: Lua,
    agent_enrol: Lua,
    agent_set_state: Lua,
    trust_share: Lua,
    queue_put: Lua,
    queue_remove: Lua,
}

impl Scripts {
    fn new() -> Scripts {
        // The retry backoff per attempt count, from the one definition.
        let backoff: Vec<String> = (1..=9).map(|a| retry_backoff_ms(a).to_string()).collect();
        // The variant index postcard writes first for each kernel's output,
        // from the kernel registry.
        let tags = Kernel::ALL
            .map(|k| format!("{} = {}", k.name(), k.tag()))
            .join(", ");
        // The judge's numbers by redundancy (1-based, as Lua tables), and
        // the reason a task gives up with, as a Lua expression.
        let redundancies = 1..=musketeer_tasks::job::MAX_REDUNDANCY;
        let quorum: Vec<String> = redundancies
            .clone()
            .map(|r| validation::quorum(r).to_string())
            .collect();
        let extra: Vec<String> = redundancies
            .map(|r| validation::max_extra_replicas(r).to_string())
            .collect();
        let give_up = format!(
            "[[{}]]",
            validation::give_up_reason(
                "]] .. votes .. [[",
                "]] .. distinct .. [[",
                "]] .. quorum .. [["
            )
        );
        let lib = include_str!("job_lib.lua")
            .replace("__BACKOFF__", &backoff.join(", "))
            .replace("__KERNEL_TAGS__", &tags)
            .replace("__MAX_REPLICAS__", &MAX_REPLICAS.to_string())
            .replace("__QUORUM__", &quorum.join(", "))
            .replace("__EXTRA_REPLICAS__", &extra.join(", "))
            .replace("__GIVE_UP_REASON__", &give_up);
        let job = |body: &str| Lua::new(format!("{lib}\n{body}"));
        Scripts {
            lease: job(include_str!("job_lease.lua")),
            complete: job(include_str!("job_complete.lua")),
            heartbeat: job(include_str!("job_heartbeat.lua")),
            release: job(include_str!("job_release.lua")),
            expire: job(include_str!("job_expire.lua")),
            renew_all: job(include_str!("job_renew_all.lua")),
            add_tasks: job(include_str!("job_add_tasks.lua")),
            seal: job(include_str!("job_seal.lua")),
            abort: job(include_str!("job_abort.lua")),
            cancel: job(include_str!("job_cancel.lua")),
            finish: job(include_str!("job_finish.lua")),
            token_create: Lua::new(include_str!("token_create.lua").into()),
            token_revoke: Lua::new(include_str!("token_revoke.lua").into()),
            agent_enrol: Lua::new(include_str!("agent_enrol.lua").into()),
            agent_set_state: Lua::new(include_str!("agent_set_state.lua").into()),
            trust_share: Lua::new(include_str!("trust_share.lua").into()),
            queue_put: Lua::new(include_str!("queue_put.lua").into()),
            queue_remove: Lua::new(include_str!("queue_remove.lua").into()),
        }
    }

    fn all(&self) -> [&Lua; 18] {
        [
            &self.lease,
            &self.complete,
            &self.heartbeat,
            &self.release,
            &self.expire,
            &self.renew_all,
            &self.add_tasks,
            &self.seal,
            &self.abort,
            &self.cancel,
            &self.finish,
            &self.token_create,
            &self.token_revoke,
            &self.agent_enrol,
            &self.agent_set_state,
            &self.trust_share,
            &self.queue_put,
            &self.queue_remove,
        ]
    }
}

/// Key names under one prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    /// A key in the slot shared by agents, tokens and the indexes.
    fn g(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// A job's keys, in the order the job scripts' KEYS expect.
    fn job(&self, id: &str) -> Vec<String> {
        let tag = format!("{{{}:j:{id}}}", self.prefix);
        [
            "m", "pend", "wait", "live", "t", "in", "out", "held", "votes",
        ]
        .iter()
        .map(|k| format!("{tag}:{k}"))
        .collect()
    }

    fn meta(&self, id: &str) -> String {
        format!("{{{}:j:{id}}}:m", self.prefix)
    }

    fn agent(&self, id: &str) -> String {
        self.g(&format!("a:{id}"))
    }

    fn token(&self, id: &str) -> String {
        self.g(&format!("t:{id}"))
    }

    fn queue(&self, queue: &str) -> String {
        self.g(&format!("q:{queue}"))
    }

    fn alive(&self, instance: &str) -> String {
        self.g(&format!("coord:{instance}"))
    }
}

struct Inner {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    keys: Keys,
    scripts: Scripts,
    /// This store's identity: its unsealed uploads are its own to drop.
    instance: String,
    /// Jobs known to have redundancy above 1 (it never changes): their
    /// results need digests and the agent's trust before the script runs,
    /// which jobs without redundancy never pay for.
    replicated: std::sync::Mutex<HashSet<String>>,
}

/// The Redis store. Cheap to clone; every clone shares the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// A job's place in its queue: higher priority first, then older first.
fn queue_score(priority: u8, seq: u64) -> f64 {
    ((9u64.saturating_sub(priority as u64) << 40) + seq) as f64
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        Value::Double(d) => *d as i64,
        _ => 0,
    }
}

fn opt_int(v: &Value) -> Option<i64> {
    match v {
        Value::Nil => None,
        v => Some(int(v)),
    }
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Nil => Vec::new(),
        v => vec![v],
    }
}

/// A job's status from its [`STATUS_FIELDS`], if it exists and is sealed.
fn status_of(id: &str, f: &[Value]) -> Option<JobStatus> {
    if string(&f[11]).as_deref() != Some("1") {
        return None;
    }
    Some(JobStatus {
        id: id.to_string(),
        kernel: string(&f[0])?,
        state: JobState::parse(&string(&f[1])?).unwrap_or(JobState::Failed),
        queue: string(&f[2])?,
        priority: int(&f[3]) as u8,
        progress: Progress {
            total: int(&f[4]) as u64,
            done: int(&f[5]) as u64,
            failed: int(&f[6]) as u64,
        },
        error: string(&f[7]),
        created_ms: int(&f[8]) as u64,
        started_ms: opt_int(&f[9]).map(|v| v as u64),
        finished_ms: opt_int(&f[10]).map(|v| v as u64),
    })
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://[:password@]host:port[/db]`),
    /// with every key under `prefix`, so several clusters (or tests) can
    /// share one server.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(StoreError::Config(format!(
                "the Redis key prefix {prefix:?} must be non-empty and without braces"
            )));
        }
        let client = ::redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("{url} is not a Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1))
            // Thousands of agents' calls at once: queue them in the
            // connection's pipeline rather than in front of it.
            .set_pipeline_buffer_size(4096);
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .map_err(|e| {
                    StoreError::Config(format!(
                        "cannot reach Redis at {url}: {e} (is redis-server running there?)"
                    ))
                })?;
            conns.push(conn);
        }
        let store = RedisStore {
            inner: Arc::new(Inner {
                conns,
                next: AtomicUsize::new(0),
                keys: Keys {
                    prefix: prefix.to_string(),
                },
                scripts: Scripts::new(),
                instance: uuid::Uuid::now_v7().simple().to_string(),
                replicated: std::sync::Mutex::new(HashSet::new()),
            }),
        };
        store.load_scripts().await?;
        store.heartbeat_self().await?;
        // Signs of life while the store is in use, so that other
        // coordinators leave this one's uploads alone.
        let weak: Weak<Inner> = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ALIVE_TTL / 3).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = RedisStore { inner };
                if let Err(e) = store.heartbeat_self().await {
                    tracing::warn!("cannot tell Redis this coordinator is alive: {e}");
                }
            }
        });
        Ok(store)
    }

    async fn heartbeat_self(&self) -> StoreResult<()> {
        let key = self.inner.keys.alive(&self.inner.instance);
        let mut p = ::redis::pipe();
        p.cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64);
        self.run::<Value>(&p).await.map(drop)
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[i].clone()
    }

    async fn load_scripts(&self) -> StoreResult<()> {
        let mut p = ::redis::pipe();
        for s in self.inner.scripts.all() {
            p.cmd("SCRIPT").arg("LOAD").arg(&s.code).ignore();
        }
        let mut c = self.conn();
        p.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// Runs a pipeline; if Redis forgot the scripts (it restarted), loads
    /// them and runs it again. Scripts that found no script did not run, so
    /// the retry is safe; other commands in a pipeline with scripts must
    /// be safe to repeat.
    async fn run<T: ::redis::FromRedisValue>(&self, p: &Pipeline) -> StoreResult<T> {
        if p.is_empty() {
            return ::redis::from_redis_value(Value::Array(Vec::new()))
                .map_err(|e| corrupt(e.to_string()));
        }
        let mut c = self.conn();
        match p.query_async(&mut c).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                Ok(p.query_async(&mut c).await?)
            }
            r => Ok(r?),
        }
    }

    /// Runs one command (in a pipeline of one, for the script reload).
    async fn one(&self, cmd: Cmd) -> StoreResult<Value> {
        let mut p = ::redis::pipe();
        p.add_command(cmd);
        let mut v: Vec<Value> = self.run(&p).await?;
        Ok(v.pop().unwrap_or(Value::Nil))
    }

    /// The key prefix this store works under.
    pub fn prefix(&self) -> String {
        self.inner.keys.prefix.clone()
    }

    /// Makes this store look dead to the others (until its next sign of
    /// life): what a SIGKILL does, for tests.
    #[cfg(test)]
    pub async fn forget_alive(&self) -> StoreResult<()> {
        let mut c = ::redis::cmd("DEL");
        c.arg(self.inner.keys.alive(&self.inner.instance));
        self.one(c).await.map(drop)
    }

    /// Applies a queue index put-back and a removal for `id` in `queue`,
    /// in this order, with these versions; returns whether the job is in the
    /// index after: the race of a lease that drained the job with a release
    /// that gave it work again, for tests.
    #[cfg(test)]
    pub async fn queue_race(
        &self,
        id: &str,
        queue: &str,
        put: i64,
        remove: i64,
    ) -> StoreResult<bool> {
        let k = self.keys();
        let keys = [k.queue(queue), k.g("qver")];
        let mut p = ::redis::pipe();
        let mut c = self.scripts().queue_put.call(&keys);
        c.arg(id).arg(1.0).arg(put);
        p.add_command(c).ignore();
        let mut c = self.scripts().queue_remove.call(&keys);
        c.arg(id).arg(remove);
        p.add_command(c).ignore();
        p.cmd("ZSCORE").arg(&keys[0]).arg(id);
        let (score,): (Option<f64>,) = self.run(&p).await?;
        Ok(score.is_some())
    }

    fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    /// The cluster's shared trust material: stores this coordinator's CA
    /// certificate, CA key and admin token unless another coordinator
    /// stored its own first, and returns what is stored.
    pub async fn share_trust(
        &self,
        ca_pem: &str,
        ca_key_pem: &str,
        admin_token: &str,
    ) -> StoreResult<(String, String, String)> {
        let mut c = self.scripts().trust_share.call(&[self.keys().g("trust")]);
        c.arg(ca_pem).arg(ca_key_pem).arg(admin_token);
        let v = array(self.one(c).await?);
        match v.as_slice() {
            [a, b, c] => Ok((
                string(a).ok_or_else(|| corrupt("no shared CA"))?,
                string(b).ok_or_else(|| corrupt("no shared CA key"))?,
                string(c).ok_or_else(|| corrupt("no shared admin token"))?,
            )),
            _ => Err(corrupt("the shared trust material is malformed")),
        }
    }

    /// The unfinished jobs and their queues.
    async fn active_jobs(&self) -> StoreResult<Vec<(String, String)>> {
        let v = self.one(hgetall(self.keys().g("active"))).await?;
        Ok(pairs(v))
    }

    /// Drops finished (or vanished) jobs from the indexes across jobs.
    async fn forget_finished(&self, jobs: &[(String, String)]) -> StoreResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let k = self.keys();
        let mut p = ::redis::pipe();
        for (id, queue) in jobs {
            p.cmd("HDEL").arg(k.g("active")).arg(id).ignore();
            p.cmd("ZREM").arg(k.queue(queue)).arg(id).ignore();
            p.cmd("HDEL").arg(k.g("qver")).arg(id).ignore();
        }
        self.run::<()>(&p).await
    }

    /// Puts a job back in its queue's index if a script answered with its
    /// place (queue key, score, version) at `at` in its reply.
    fn put_back(&self, p: &mut Pipeline, id: &str, reply: &[Value], at: usize) {
        if let (Some(key), Some(score), Some(ver)) = (
            reply.get(at).and_then(string),
            reply.get(at + 1).and_then(string),
            reply.get(at + 2),
        ) {
            let mut c = self.scripts().queue_put.call(&[key, self.keys().g("qver")]);
            c.arg(id).arg(score).arg(int(ver));
            p.add_command(c).ignore();
        }
    }

    /// Tells long-polls on every coordinator that tasks may be leasable.
    fn bump_epoch(&self, p: &mut Pipeline) {
        p.cmd("INCR").arg(self.keys().g("epoch")).ignore();
    }

    /// Drops unsealed jobs (uploads in flight) of coordinators that are no
    /// longer alive, and this store's own if `own` (at start, when it has
    /// none in flight); returns how many.
    async fn drop_orphan_uploads(&self, own: bool) -> StoreResult<u64> {
        let k = self.keys();
        let unsealed = pairs(self.one(hgetall(k.g("unsealed"))).await?);
        if unsealed.is_empty() {
            return Ok(0);
        }
        let owners: Vec<String> = unsealed
            .iter()
            .map(|(_, o)| o.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut p = ::redis::pipe();
        for o in &owners {
            p.cmd("EXISTS").arg(k.alive(o));
        }
        let alive: Vec<i64> = self.run(&p).await?;
        let alive: HashSet<&str> = owners
            .iter()
            .zip(alive)
            .filter(|(o, a)| *a == 1 && !(own && **o == self.inner.instance))
            .map(|(o, _)| o.as_str())
            .collect();
        let mut dropped = 0;
        for (id, owner) in &unsealed {
            if alive.contains(owner.as_str()) {
                continue;
            }
            if self.abort(id).await? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Deletes an unsealed job and its index entries; true if it was one.
    async fn abort(&self, id: &str) -> StoreResult<bool> {
        let k = self.keys();
        let v = array(self.one(self.scripts().abort.call(&k.job(id))).await?);
        let mut p = ::redis::pipe();
        let deleted = v.first().map(int) == Some(1);
        match v.as_slice() {
            [_, queue] => {
                let queue = string(queue).unwrap_or_default();
                p.cmd("HDEL").arg(k.g("unsealed")).arg(id).ignore();
                p.cmd("HDEL").arg(k.g("active")).arg(id).ignore();
                p.cmd("ZREM").arg(k.queue(&queue)).arg(id).ignore();
            }
            // Sealed already (its seal's index update was cut off): keep
            // it and finish the update.
            [_, _, seq] => {
                p.cmd("ZADD")
                    .arg(k.g("jobs"))
                    .arg(int(seq))
                    .arg(id)
                    .ignore();
                p.cmd("HDEL").arg(k.g("unsealed")).arg(id).ignore();
            }
            _ => {
                p.cmd("HDEL").arg(k.g("unsealed")).arg(id).ignore();
                p.cmd("HDEL").arg(k.g("active")).arg(id).ignore();
            }
        }
        self.run::<()>(&p).await?;
        Ok(deleted)
    }

    /// Whether this coordinator knows `job` to have redundancy above 1.
    fn is_replicated(&self, job: &str) -> bool {
        self.inner
            .replicated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(job)
    }

    /// Remembers that `job` has redundancy above 1.
    fn remember_replicated(&self, job: &str) {
        let mut known = self
            .inner
            .replicated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_KNOWN_REPLICATED {
            known.clear();
        }
        known.insert(job.to_string());
    }

    /// Whether the agent's record earns it unreplicated work.
    async fn trusted(&self, agent_id: &str) -> StoreResult<bool> {
        let mut c = ::redis::cmd("HMGET");
        c.arg(self.keys().agent(agent_id))
            .arg("results_valid")
            .arg("results_invalid")
            .arg("valid_streak");
        let f: Vec<i64> = array(self.one(c).await?).iter().map(int).collect();
        let [valid, invalid, streak] = f[..] else {
            return Err(corrupt("malformed agent record"));
        };
        let record = validation::TrustRecord {
            valid: valid as u64,
            invalid: invalid as u64,
            streak: streak as u64,
        };
        Ok(record.trust() == Trust::Trusted)
    }

    /// The result script's call for one job's reports. With `trusted`
    /// (the job is replicated), each result also carries its digest and
    /// whether the agent's answer may stand alone.
    fn complete_call(
        &self,
        job: &str,
        reports: &[TaskReport],
        agent_id: &str,
        now_ms: u64,
        trusted: Option<bool>,
    ) -> Cmd {
        let mut c = self.scripts().complete.call(&self.keys().job(job));
        c.arg(agent_id)
            .arg(now_ms)
            .arg(if trusted.is_some() { "v" } else { "-" });
        for r in reports {
            c.arg(r.task.index).arg(r.task.lease);
            match &r.outcome {
                TaskOutcome::Done(bytes) => c.arg("d").arg(bytes),
                TaskOutcome::Failed(why) => c.arg("f").arg(why),
            };
            c.arg(r.cpu_ms.min(MAX_REPORTED_CPU_MS));
            if let Some(trusted) = trusted {
                match &r.outcome {
                    TaskOutcome::Done(bytes) => c.arg(hex::encode(validation::digest(bytes))),
                    TaskOutcome::Failed(_) => c.arg(""),
                };
                let solo = trusted && !validation::is_spot_check(job, r.task.index);
                c.arg(if solo { "1" } else { "0" });
            }
        }
        c
    }

    /// The lease script's answer for one job: its status (finished or gone),
    /// the version of its queue place if it has no work left, its tasks.
    fn parse_lease(job: &str, v: Value) -> StoreResult<(i64, Option<i64>, Vec<LeasedTask>)> {
        let mut it = array(v).into_iter();
        let status = it.next().map(|v| int(&v)).unwrap_or(1);
        let timeout = it.next().map(|v| int(&v)).unwrap_or(-1);
        let has_work = it.next().map(|v| int(&v)).unwrap_or(0) == 1;
        let version = it.next().map(|v| int(&v)).unwrap_or(0);
        let rest: Vec<Value> = it.collect();
        if !rest.len().is_multiple_of(5) {
            return Err(corrupt("malformed lease reply"));
        }
        let mut tasks = Vec::with_capacity(rest.len() / 5);
        let mut rest = rest.into_iter();
        while let (Some(idx), Some(lease), Some(work), Some(mem), Some(input)) = (
            rest.next(),
            rest.next(),
            rest.next(),
            rest.next(),
            rest.next(),
        ) {
            tasks.push(LeasedTask {
                task: TaskRef {
                    job: job.to_string(),
                    index: int(&idx) as u32,
                    lease: int(&lease) as u64,
                },
                cost: Cost {
                    work: int(&work) as u64,
                    mem_bytes: int(&mem) as u64,
                },
                timeout_ms: (timeout >= 0).then(|| timeout as u64 * 1000),
                input: bytes(input).unwrap_or_default(),
            });
        }
        Ok((status, (!has_work).then_some(version), tasks))
    }
}

fn hgetall(key: String) -> Cmd {
    let mut c = ::redis::cmd("HGETALL");
    c.arg(key);
    c
}

/// A hash's fields and values as strings.
fn pairs(v: Value) -> Vec<(String, String)> {
    let flat = array(v);
    flat.chunks(2)
        .filter_map(|kv| Some((string(kv.first()?)?, string(kv.get(1)?)?)))
        .collect()
}

/// Reports grouped by job, in first-seen order.
fn by_job<T>(items: Vec<T>, job: impl Fn(&T) -> &str) -> Vec<(String, Vec<T>)> {
    let mut order: Vec<(String, Vec<T>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for item in items {
        let id = job(&item).to_string();
        match at.get(&id) {
            Some(&i) => order[i].1.push(item),
            None => {
                at.insert(id.clone(), order.len());
                order.push((id, vec![item]));
            }
        }
    }
    order
}

#[async_trait]
impl Store for RedisStore {
    async fn create_token(&self, id: &str, secret_hash: [u8; 32], now_ms: u64) -> StoreResult<()> {
        let k = self.keys();
        let mut c = self
            .scripts()
            .token_create
            .call(&[k.g("tokens"), k.g("tokh"), k.token(id)]);
        c.arg(id).arg(hex::encode(secret_hash)).arg(now_ms);
        self.one(c).await.map(drop)
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let k = self.keys();
        let ids: Vec<String> = array(
            self.one({
                let mut c = ::redis::cmd("ZRANGE");
                c.arg(k.g("tokens")).arg(0).arg(-1);
                c
            })
            .await?,
        )
        .iter()
        .filter_map(string)
        .collect();
        let mut p = ::redis::pipe();
        for id in &ids {
            p.cmd("HMGET")
                .arg(k.token(id))
                .arg("created_ms")
                .arg("revoked")
                .arg("uses");
        }
        let rows: Vec<Value> = self.run(&p).await?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .map(|(id, row)| {
                let f = array(row);
                TokenRecord {
                    id,
                    created_ms: f.first().map(int).unwrap_or(0) as u64,
                    revoked: f.get(1).map(int).unwrap_or(0) != 0,
                    uses: f.get(2).map(int).unwrap_or(0) as u64,
                }
            })
            .collect())
    }

    async fn revoke_token(&self, id: &str) -> StoreResult<bool> {
        let c = self.scripts().token_revoke.call(&[self.keys().token(id)]);
        Ok(int(&self.one(c).await?) == 1)
    }

    async fn enrol_agent(
        &self,
        token_hash: [u8; 32],
        agent: NewAgent,
    ) -> StoreResult<Result<(), EnrolRefusal>> {
        let k = self.keys();
        let capacity =
            serde_json::to_string(&agent.capacity).map_err(|e| corrupt(e.to_string()))?;
        let mut c =
            self.scripts()
                .agent_enrol
                .call(&[k.g("tokh"), k.g("agents"), k.agent(&agent.id)]);
        c.arg(hex::encode(token_hash))
            .arg(k.g("t:"))
            .arg(&agent.id)
            .arg(&agent.secret_hash[..])
            .arg(capacity)
            .arg(agent.now_ms);
        Ok(match int(&self.one(c).await?) {
            0 => Ok(()),
            1 => Err(EnrolRefusal::UnknownToken),
            _ => Err(EnrolRefusal::RevokedToken),
        })
    }

    async fn agent_auth(&self, id: &str) -> StoreResult<Option<AgentAuth>> {
        let mut c = ::redis::cmd("HMGET");
        c.arg(self.keys().agent(id)).arg("secret").arg("state");
        let mut f = array(self.one(c).await?).into_iter();
        let (Some(secret), Some(state)) = (f.next(), f.next()) else {
            return Ok(None);
        };
        let Some(secret) = bytes(secret) else {
            return Ok(None);
        };
        let secret_hash: [u8; 32] = secret
            .try_into()
            .map_err(|_| corrupt("secret hash is not 32 bytes"))?;
        Ok(Some(AgentAuth {
            secret_hash,
            state: string(&state)
                .and_then(|s| AgentState::parse(&s))
                .unwrap_or(AgentState::Removed),
        }))
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        let k = self.keys();
        let ids: Vec<String> = array(
            self.one({
                let mut c = ::redis::cmd("ZRANGE");
                c.arg(k.g("agents")).arg(0).arg(-1);
                c
            })
            .await?,
        )
        .iter()
        .filter_map(string)
        .collect();
        let active = self.active_jobs().await?;
        let mut p = ::redis::pipe();
        for id in &ids {
            p.cmd("HMGET").arg(k.agent(id)).arg(&[
                "capacity",
                "state",
                "token",
                "enrolled_ms",
                "last_seen_ms",
                "tasks_done",
                "cpu_ms",
                "results_valid",
                "results_invalid",
                "valid_streak",
            ]);
        }
        for (job, _) in &active {
            p.cmd("HGETALL").arg(&k.job(job)[7]);
        }
        let mut rows: Vec<Value> = self.run(&p).await?;
        let held_rows = rows.split_off(ids.len());
        let mut held: HashMap<String, u64> = HashMap::new();
        for row in held_rows {
            for (agent, n) in pairs(row) {
                *held.entry(agent).or_default() += n.parse::<u64>().unwrap_or(0);
            }
        }
        Ok(ids
            .into_iter()
            .zip(rows)
            .filter_map(|(id, row)| {
                let f = array(row);
                let capacity = string(f.first()?)?;
                Some(AgentRecord {
                    capacity: serde_json::from_str(&capacity).unwrap_or_default(),
                    state: AgentState::parse(&string(&f[1])?).unwrap_or(AgentState::Removed),
                    token_id: string(&f[2]).unwrap_or_default(),
                    enrolled_ms: int(&f[3]) as u64,
                    last_seen_ms: int(&f[4]) as u64,
                    tasks_done: int(&f[5]) as u64,
                    cpu_ms: int(&f[6]) as u64,
                    results_valid: int(&f[7]) as u64,
                    results_invalid: int(&f[8]) as u64,
                    trust: validation::TrustRecord {
                        valid: int(&f[7]) as u64,
                        invalid: int(&f[8]) as u64,
                        streak: int(&f[9]) as u64,
                    }
                    .trust(),
                    leased: held.get(&id).copied().unwrap_or(0),
                    id,
                })
            })
            .collect())
    }

    async fn drain_agent(&self, id: &str) -> StoreResult<bool> {
        let mut c = self
            .scripts()
            .agent_set_state
            .call(&[self.keys().agent(id)]);
        c.arg("draining").arg("active");
        Ok(int(&self.one(c).await?) == 1)
    }

    async fn remove_agent(&self, id: &str, _now_ms: u64) -> StoreResult<bool> {
        let mut c = self
            .scripts()
            .agent_set_state
            .call(&[self.keys().agent(id)]);
        c.arg("removed").arg("active").arg("draining");
        let changed = int(&self.one(c).await?) == 1;
        // The operator took the agent away; that is no fault of the tasks
        // it held, so they go back without losing an attempt.
        let active = self.active_jobs().await?;
        if !active.is_empty() {
            let mut p = ::redis::pipe();
            for (job, _) in &active {
                let mut c = self.scripts().release.call(&self.keys().job(job));
                c.arg(id);
                p.add_command(c);
            }
            let rows: Vec<Value> = self.run(&p).await?;
            let mut p = ::redis::pipe();
            for ((job, _), row) in active.iter().zip(rows) {
                self.put_back(&mut p, job, &array(row), 1);
            }
            self.bump_epoch(&mut p);
            self.run::<()>(&p).await?;
        }
        Ok(changed)
    }

    async fn begin_job(&self, job: NewJob) -> StoreResult<()> {
        let k = self.keys();
        let seq = int(&self
            .one({
                let mut c = ::redis::cmd("INCR");
                c.arg(k.g("seq"));
                c
            })
            .await?) as u64;
        let labels =
            serde_json::to_string(&job.options.labels).map_err(|e| corrupt(e.to_string()))?;
        let o = &job.options;
        let mut p = ::redis::pipe();
        // First the upload's entry (so a crash from here on leaves nothing
        // abort_unsealed_jobs cannot find), then the job, then the indexes
        // (so whoever meets the job there finds its fields).
        p.cmd("HSET")
            .arg(k.g("unsealed"))
            .arg(&job.id)
            .arg(&self.inner.instance)
            .ignore();
        let meta = k.meta(&job.id);
        p.cmd("HSET")
            .arg(&meta)
            .arg("seq")
            .arg(seq)
            .arg("qkey")
            .arg(k.queue(&o.queue))
            .arg("qscore")
            .arg(queue_score(o.priority, seq))
            .arg("kernel")
            .arg(&job.kernel)
            .arg("queue")
            .arg(&o.queue)
            .arg("priority")
            .arg(o.priority)
            .arg("max_attempts")
            .arg(o.max_attempts)
            .arg("redundancy")
            .arg(o.redundancy)
            .arg("labels")
            .arg(labels)
            .arg("state")
            .arg("queued")
            .arg("sealed")
            .arg(0)
            .arg("total")
            .arg(0)
            .arg("done")
            .arg(0)
            .arg("failed")
            .arg(0)
            .arg("lease_seq")
            .arg(0)
            .arg("created_ms")
            .arg(job.created_ms)
            .arg("plan")
            .arg(job.reduce_plan)
            .ignore();
        if let Some(t) = o.timeout_s {
            p.cmd("HSET").arg(&meta).arg("timeout_s").arg(t).ignore();
        }
        p.cmd("HSET")
            .arg(k.g("active"))
            .arg(&job.id)
            .arg(&o.queue)
            .ignore();
        p.cmd("ZADD")
            .arg(k.queue(&o.queue))
            .arg(queue_score(o.priority, seq))
            .arg(&job.id)
            .ignore();
        self.run::<()>(&p).await
    }

    async fn add_tasks(&self, job_id: &str, tasks: Vec<NewTask>) -> StoreResult<()> {
        let mut c = self.scripts().add_tasks.call(&self.keys().job(job_id));
        for t in &tasks {
            c.arg(t.cost.work).arg(t.cost.mem_bytes).arg(&t.input);
        }
        drop(tasks);
        let reply = array(self.one(c).await?);
        let mut p = ::redis::pipe();
        self.put_back(&mut p, job_id, &reply, 1);
        self.bump_epoch(&mut p);
        self.run::<()>(&p).await
    }

    async fn seal_job(&self, job_id: &str) -> StoreResult<(u64, bool)> {
        let k = self.keys();
        let v = array(self.one(self.scripts().seal.call(&k.job(job_id))).await?);
        let [total, done, seq] = v.as_slice() else {
            return Err(corrupt("malformed seal reply"));
        };
        let (total, done) = (int(total) as u64, int(done) as u64);
        let mut p = ::redis::pipe();
        p.cmd("ZADD")
            .arg(k.g("jobs"))
            .arg(int(seq))
            .arg(job_id)
            .ignore();
        p.cmd("HDEL").arg(k.g("unsealed")).arg(job_id).ignore();
        self.bump_epoch(&mut p);
        self.run::<()>(&p).await?;
        Ok((total, total > 0 && done == total))
    }

    async fn abort_job(&self, job_id: &str) -> StoreResult<()> {
        self.abort(job_id).await.map(drop)
    }

    async fn abort_unsealed_jobs(&self) -> StoreResult<u64> {
        self.drop_orphan_uploads(true).await
    }

    async fn job(&self, id: &str) -> StoreResult<Option<JobStatus>> {
        let mut c = ::redis::cmd("HMGET");
        c.arg(self.keys().meta(id)).arg(&STATUS_FIELDS[..]);
        Ok(status_of(id, &array(self.one(c).await?)))
    }

    async fn list_jobs(&self, limit: u32) -> StoreResult<Vec<JobStatus>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let k = self.keys();
        let mut c = ::redis::cmd("ZREVRANGE");
        c.arg(k.g("jobs")).arg(0).arg(limit as i64 - 1);
        let ids: Vec<String> = array(self.one(c).await?)
            .iter()
            .filter_map(string)
            .collect();
        let mut p = ::redis::pipe();
        for id in &ids {
            p.cmd("HMGET").arg(k.meta(id)).arg(&STATUS_FIELDS[..]);
        }
        let rows: Vec<Value> = self.run(&p).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|(id, row)| status_of(id, &array(row)))
            .collect())
    }

    async fn cancel_job(&self, id: &str, now_ms: u64) -> StoreResult<Option<JobStatus>> {
        let mut c = self.scripts().cancel.call(&self.keys().job(id));
        c.arg(now_ms);
        let changed = int(&self.one(c).await?) == 1;
        let status = self.job(id).await?;
        if let (true, Some(s)) = (changed, &status) {
            self.forget_finished(&[(id.to_string(), s.queue.clone())])
                .await?;
        }
        Ok(status)
    }

    async fn job_outputs(&self, id: &str) -> StoreResult<(Vec<u8>, Vec<Vec<u8>>)> {
        let keys = self.keys().job(id);
        let mut p = ::redis::pipe();
        p.cmd("HMGET").arg(&keys[0]).arg("plan").arg("total");
        p.cmd("HGETALL").arg(&keys[6]);
        let mut v: Vec<Value> = self.run(&p).await?;
        let outs = v.pop().unwrap_or(Value::Nil);
        let mut meta = array(v.pop().unwrap_or(Value::Nil)).into_iter();
        let plan = meta
            .next()
            .and_then(bytes)
            .ok_or_else(|| corrupt(format!("job {id} does not exist")))?;
        let total = meta.next().map(|v| int(&v)).unwrap_or(0) as usize;
        let mut outputs: Vec<(u64, Vec<u8>)> = array(outs)
            .chunks_exact_mut(2)
            .map(|kv| {
                let idx = int(&kv[0]) as u64;
                (idx, bytes(std::mem::take(&mut kv[1])).unwrap_or_default())
            })
            .collect();
        if outputs.len() != total {
            return Err(corrupt(format!(
                "job {id} has {} outputs for {total} tasks",
                outputs.len()
            )));
        }
        outputs.sort_unstable_by_key(|(i, _)| *i);
        Ok((plan, outputs.into_iter().map(|(_, o)| o).collect()))
    }

    async fn finish_job(
        &self,
        id: &str,
        result: Result<Vec<u8>, String>,
        now_ms: u64,
    ) -> StoreResult<()> {
        let keys = self.keys().job(id);
        let mut c = self.scripts().finish.call(&keys);
        match result {
            Ok(bytes) => c.arg(1).arg(bytes),
            Err(reason) => c.arg(0).arg(reason),
        };
        c.arg(now_ms);
        let mut p = ::redis::pipe();
        p.add_command(c).ignore();
        p.cmd("HGET").arg(&keys[0]).arg("queue");
        let (queue,): (Option<String>,) = self.run(&p).await?;
        if let Some(queue) = queue {
            self.forget_finished(&[(id.to_string(), queue)]).await?;
        }
        Ok(())
    }

    async fn job_result(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        let mut c = ::redis::cmd("HMGET");
        c.arg(self.keys().meta(id)).arg("state").arg("result");
        let mut f = array(self.one(c).await?).into_iter();
        match (f.next().as_ref().and_then(string), f.next()) {
            (Some(s), Some(result)) if s == "succeeded" => Ok(bytes(result)),
            _ => Ok(None),
        }
    }

    async fn jobs_to_reduce(&self) -> StoreResult<Vec<String>> {
        let active = self.active_jobs().await?;
        let mut p = ::redis::pipe();
        for (id, _) in &active {
            p.cmd("HMGET")
                .arg(self.keys().meta(id))
                .arg("sealed")
                .arg("total")
                .arg("done")
                .arg("state");
        }
        let rows: Vec<Value> = self.run(&p).await?;
        let mut ready = Vec::new();
        let mut gone = Vec::new();
        for ((id, queue), row) in active.into_iter().zip(rows) {
            let f = array(row);
            let state = f.get(3).and_then(string).and_then(|s| JobState::parse(&s));
            match state {
                None => {}
                Some(s) if s.is_finished() => gone.push((id, queue)),
                Some(_) => {
                    let total = int(&f[1]);
                    if int(&f[0]) == 1 && total > 0 && int(&f[2]) == total {
                        ready.push(id);
                    }
                }
            }
        }
        self.forget_finished(&gone).await?;
        Ok(ready)
    }

    async fn lease(&self, q: LeaseQuery) -> StoreResult<Vec<LeasedTask>> {
        let k = self.keys();
        let queues: Vec<&str> = if q.queues.is_empty() {
            vec![musketeer_tasks::job::DEFAULT_QUEUE]
        } else {
            q.queues.iter().map(String::as_str).collect()
        };
        let capacity = serde_json::to_string(&q.capacity).map_err(|e| corrupt(e.to_string()))?;
        // 1. The agent's state (checked at every call: a long-poll can
        //    outlast a drain or removal) and the head of each queue.
        let mut p = ::redis::pipe();
        p.cmd("HGET").arg(k.agent(&q.agent_id)).arg("state");
        p.cmd("HSET")
            .arg(k.agent(&q.agent_id))
            .arg("last_seen_ms")
            .arg(q.now_ms)
            .arg("capacity")
            .arg(capacity)
            .ignore();
        for queue in &queues {
            p.cmd("ZRANGE")
                .arg(k.queue(queue))
                .arg(0)
                .arg(QUEUE_HEAD - 1)
                .arg("WITHSCORES");
        }
        let mut v: Vec<Value> = self.run(&p).await?;
        let heads = v.split_off(1);
        if v.first().and_then(string).as_deref() != Some("active") {
            return Ok(Vec::new());
        }
        let mut candidates: Vec<(f64, String, String)> = Vec::new();
        for (queue, head) in queues.iter().zip(heads) {
            for kv in array(head).chunks(2) {
                let (Some(id), Some(score)) = (kv.first().and_then(string), kv.get(1)) else {
                    continue;
                };
                let score = string(score)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::MAX);
                candidates.push((score, id, queue.to_string()));
            }
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // 2. Lease job by job until the batch is full.
        let deadline = q.now_ms + q.ttl_ms;
        let labels = serde_json::to_string(&q.labels).map_err(|e| corrupt(e.to_string()))?;
        let mut granted: Vec<LeasedTask> = Vec::new();
        let (mut work, mut bytes_so_far) = (0u64, 0u64);
        // Jobs finished or gone, and jobs without work left: out of the
        // queue index.
        let mut finished = Vec::new();
        let mut drained_jobs = Vec::new();
        for (_, id, queue) in candidates {
            if granted.len() as u32 >= q.max_tasks
                || (!granted.is_empty() && (work >= q.max_work || bytes_so_far >= q.max_bytes))
            {
                break;
            }
            let mut c = self.scripts().lease.call(&k.job(&id));
            c.arg(&q.agent_id)
                .arg(q.now_ms)
                .arg(deadline)
                .arg(q.max_tasks)
                .arg(q.max_work.min(1 << 52))
                .arg(q.max_bytes.min(1 << 52))
                .arg(work)
                .arg(bytes_so_far)
                .arg(granted.len())
                .arg(q.mem_bytes.min(1 << 52))
                .arg(&labels)
                .arg(MAX_LEASE_SCAN);
            let (status, drained, tasks) = Self::parse_lease(&id, self.one(c).await?)?;
            if status == 1 {
                finished.push((id, queue));
            } else if let Some(version) = drained {
                drained_jobs.push((id, queue, version));
            }
            for t in tasks {
                work += t.cost.work;
                bytes_so_far += t.input.len() as u64;
                granted.push(t);
            }
        }
        self.forget_finished(&finished).await?;
        if !drained_jobs.is_empty() {
            let mut p = ::redis::pipe();
            for (id, queue, version) in &drained_jobs {
                let mut c = self
                    .scripts()
                    .queue_remove
                    .call(&[k.queue(queue), k.g("qver")]);
                c.arg(id).arg(*version);
                p.add_command(c).ignore();
            }
            self.run::<()>(&p).await?;
        }
        Ok(granted)
    }

    async fn complete(
        &self,
        agent_id: &str,
        reports: Vec<TaskReport>,
        now_ms: u64,
    ) -> StoreResult<CompleteOutcome> {
        let k = self.keys();
        let groups = by_job(reports, |r| &r.task.job);
        // Votes of replicated jobs need the voter's trust (the solo rule),
        // which lives with the agent, outside the job's slot: read first,
        // once for the batch.
        let votes_in = |i: &usize| {
            groups[*i]
                .1
                .iter()
                .any(|r| matches!(r.outcome, TaskOutcome::Done(_)))
        };
        let replicated: Vec<usize> = (0..groups.len())
            .filter(|i| self.is_replicated(&groups[*i].0))
            .collect();
        let mut trusted = None;
        if replicated.iter().any(votes_in) {
            trusted = Some(self.trusted(agent_id).await?);
        }
        let mut p = ::redis::pipe();
        for (i, (job, reports)) in groups.iter().enumerate() {
            let t = replicated.contains(&i).then(|| trusted.unwrap_or(false));
            p.add_command(self.complete_call(job, reports, agent_id, now_ms, t));
        }
        let mut rows: Vec<Value> = if groups.is_empty() {
            Vec::new()
        } else {
            self.run(&p).await?
        };
        // Replicated jobs this coordinator did not know of: their script
        // changed nothing and asked for the votes' digests.
        let retry: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| matches!(row, Value::Array(a) if a.len() == 1 && int(&a[0]) == -1))
            .map(|(i, _)| i)
            .collect();
        if !retry.is_empty() {
            for &i in &retry {
                self.remember_replicated(&groups[i].0);
            }
            if trusted.is_none() && retry.iter().any(votes_in) {
                trusted = Some(self.trusted(agent_id).await?);
            }
            let mut p = ::redis::pipe();
            for &i in &retry {
                let (job, reports) = &groups[i];
                let t = Some(trusted.unwrap_or(false));
                p.add_command(self.complete_call(job, reports, agent_id, now_ms, t));
            }
            let again: Vec<Value> = self.run(&p).await?;
            for (i, row) in retry.into_iter().zip(again) {
                rows[i] = row;
            }
        }
        let mut out = CompleteOutcome::default();
        let (mut credit_tasks, mut credit_cpu) = (0i64, 0i64);
        let mut added = 0;
        // (agent, what its vote came to, cpu ms) of each judged vote.
        let mut voters: Vec<(String, Ballot, i64)> = Vec::new();
        let mut p = ::redis::pipe();
        for ((job, _), row) in groups.iter().zip(rows) {
            let mut row = array(row);
            let f: Vec<i64> = row.iter().take(9).map(int).collect();
            let [accepted, stale, requeued, ready, tasks, cpu, due, _finished, more] = f[..] else {
                return Err(corrupt("malformed result reply"));
            };
            let decided = array(row.get_mut(9).map(std::mem::take).unwrap_or(Value::Nil));
            for v in decided.chunks(3) {
                let [agent, agreed, cpu] = v else {
                    return Err(corrupt("malformed voter in a result reply"));
                };
                let agent = string(agent).ok_or_else(|| corrupt("voter without an agent"))?;
                let ballot = match int(agreed) {
                    1 => Ballot::Agreed,
                    0 => {
                        tracing::warn!(agent = %agent, job = %job, "outvoted: its result disagreed with the majority");
                        Ballot::Outvoted
                    }
                    _ => Ballot::Disputed,
                };
                voters.push((agent, ballot, int(cpu)));
            }
            self.put_back(&mut p, job, &row, 10);
            out.accepted += accepted as u32;
            out.stale += stale as u32;
            out.requeued += requeued as u32;
            added += more;
            if ready == 1 {
                out.ready.push(job.clone());
            }
            credit_tasks += tasks;
            credit_cpu += cpu;
            if due > now_ms as i64 {
                p.cmd("ZADD").arg(k.g("due")).arg(due).arg(job).ignore();
            }
        }
        if out.requeued > 0 || added > 0 {
            self.bump_epoch(&mut p);
        }
        // Scripts and idempotent commands only: `run` may send it twice.
        self.run::<()>(&p).await?;
        let mut p = ::redis::pipe();
        let agent = k.agent(agent_id);
        p.cmd("HINCRBY")
            .arg(&agent)
            .arg("tasks_done")
            .arg(credit_tasks)
            .ignore();
        p.cmd("HINCRBY")
            .arg(&agent)
            .arg("cpu_ms")
            .arg(credit_cpu)
            .ignore();
        p.cmd("HSET")
            .arg(&agent)
            .arg("last_seen_ms")
            .arg(now_ms)
            .ignore();
        // Decided votes, in the order they were decided: credit and trust
        // for agreeing voters, a mark for outvoted ones.
        for (voter, ballot, cpu) in &voters {
            let key = k.agent(voter);
            if *ballot == Ballot::Disputed {
                p.cmd("HSET").arg(&key).arg("valid_streak").arg(0).ignore();
            } else if *ballot == Ballot::Agreed {
                p.cmd("HINCRBY")
                    .arg(&key)
                    .arg("results_valid")
                    .arg(1)
                    .ignore();
                p.cmd("HINCRBY")
                    .arg(&key)
                    .arg("valid_streak")
                    .arg(1)
                    .ignore();
                p.cmd("HINCRBY").arg(&key).arg("tasks_done").arg(1).ignore();
                p.cmd("HINCRBY").arg(&key).arg("cpu_ms").arg(*cpu).ignore();
            } else {
                p.cmd("HINCRBY")
                    .arg(&key)
                    .arg("results_invalid")
                    .arg(1)
                    .ignore();
                p.cmd("HSET").arg(&key).arg("valid_streak").arg(0).ignore();
            }
        }
        self.run::<()>(&p).await?;
        Ok(out)
    }

    async fn heartbeat(
        &self,
        agent_id: &str,
        running: Vec<TaskRef>,
        now_ms: u64,
        ttl_ms: u64,
    ) -> StoreResult<HeartbeatAck> {
        let k = self.keys();
        let groups = by_job(running, |t| &t.job);
        let mut p = ::redis::pipe();
        p.cmd("HGET").arg(k.agent(agent_id)).arg("state");
        p.cmd("HSET")
            .arg(k.agent(agent_id))
            .arg("last_seen_ms")
            .arg(now_ms)
            .ignore();
        for (job, tasks) in &groups {
            let mut c = self.scripts().heartbeat.call(&k.job(job));
            c.arg(agent_id).arg(now_ms + ttl_ms);
            for t in tasks {
                c.arg(t.index).arg(t.lease);
            }
            p.add_command(c);
        }
        let mut v: Vec<Value> = self.run(&p).await?;
        let lost_rows = v.split_off(1);
        let mut ack = HeartbeatAck {
            drain: v.first().and_then(string).as_deref() != Some("active"),
            ..HeartbeatAck::default()
        };
        for ((_, tasks), lost) in groups.into_iter().zip(lost_rows) {
            let lost: HashSet<i64> = array(lost).iter().map(int).collect();
            ack.lost.extend(
                tasks
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| lost.contains(&(*i as i64 + 1)))
                    .map(|(_, t)| t),
            );
        }
        Ok(ack)
    }

    async fn release(&self, agent_id: &str, tasks: Vec<TaskRef>) -> StoreResult<u32> {
        let k = self.keys();
        let groups = by_job(tasks, |t| &t.job);
        if groups.is_empty() {
            return Ok(0);
        }
        let mut p = ::redis::pipe();
        for (job, tasks) in &groups {
            let mut c = self.scripts().release.call(&k.job(job));
            c.arg(agent_id);
            for t in tasks {
                c.arg(t.index).arg(t.lease);
            }
            p.add_command(c);
        }
        let rows: Vec<Value> = self.run(&p).await?;
        let mut n = 0;
        let mut p = ::redis::pipe();
        for ((job, _), row) in groups.iter().zip(rows) {
            let row = array(row);
            n += row.first().map(int).unwrap_or(0);
            self.put_back(&mut p, job, &row, 1);
        }
        if n > 0 {
            self.bump_epoch(&mut p);
        }
        self.run::<()>(&p).await?;
        Ok(n as u32)
    }

    async fn expire_leases(&self, now_ms: u64) -> StoreResult<u32> {
        let active = self.active_jobs().await?;
        if active.is_empty() {
            return Ok(0);
        }
        let mut p = ::redis::pipe();
        for (id, _) in &active {
            let mut c = self.scripts().expire.call(&self.keys().job(id));
            c.arg(now_ms);
            p.add_command(c);
        }
        let rows: Vec<Value> = self.run(&p).await?;
        let mut expired = 0;
        let mut finished = Vec::new();
        let mut p = ::redis::pipe();
        for (job, row) in active.into_iter().zip(rows) {
            let row = array(row);
            self.put_back(&mut p, &job.0, &row, 2);
            let f: Vec<i64> = row.iter().take(2).map(int).collect();
            expired += f.first().copied().unwrap_or(0);
            // Only a sealed job is done being written; an unsealed one that
            // vanished is its upload's to clean up.
            if f.get(1) == Some(&1) {
                finished.push(job);
            }
        }
        if expired > 0 {
            self.bump_epoch(&mut p);
        }
        self.run::<()>(&p).await?;
        self.forget_finished(&finished).await?;
        Ok(expired as u32)
    }

    async fn purge_finished_inputs(&self) -> StoreResult<u64> {
        // A failed or cancelled job's inputs go in the same script that
        // ends it; what is left to purge is uploads whose coordinator died.
        self.drop_orphan_uploads(false).await
    }

    async fn renew_all_leases(&self, now_ms: u64, ttl_ms: u64) -> StoreResult<u64> {
        let active = self.active_jobs().await?;
        if active.is_empty() {
            return Ok(0);
        }
        let mut p = ::redis::pipe();
        for (id, _) in &active {
            let mut c = self.scripts().renew_all.call(&self.keys().job(id));
            c.arg(now_ms + ttl_ms);
            p.add_command(c);
        }
        let n: Vec<i64> = self.run(&p).await?;
        Ok(n.iter().sum::<i64>() as u64)
    }

    async fn stats(&self) -> StoreResult<Stats> {
        let k = self.keys();
        let mut p = ::redis::pipe();
        p.cmd("ZRANGE").arg(k.g("jobs")).arg(0).arg(-1);
        p.cmd("ZRANGE").arg(k.g("agents")).arg(0).arg(-1);
        let (jobs, agents): (Vec<String>, Vec<String>) = self.run(&p).await?;
        let active = self.active_jobs().await?;
        let mut p = ::redis::pipe();
        for id in &jobs {
            p.cmd("HGET").arg(k.meta(id)).arg("state");
        }
        for id in &agents {
            p.cmd("HGET").arg(k.agent(id)).arg("state");
        }
        for (id, _) in &active {
            let keys = k.job(id);
            p.cmd("ZCARD").arg(&keys[1]);
            p.cmd("ZCARD").arg(&keys[2]);
            p.cmd("ZCARD").arg(&keys[3]);
        }
        let v: Vec<Value> = self.run(&p).await?;
        let mut stats = Stats::default();
        let (job_states, rest) = v.split_at(jobs.len());
        let (agent_states, counts) = rest.split_at(agents.len());
        for s in job_states.iter().filter_map(string) {
            *stats.jobs.entry(s).or_default() += 1;
        }
        for s in agent_states.iter().filter_map(string) {
            *stats.agents.entry(s).or_default() += 1;
        }
        for c in counts.chunks(3) {
            stats.tasks_pending += (int(&c[0]) + int(&c[1])) as u64;
            stats.tasks_leased += int(&c[2]) as u64;
        }
        Ok(stats)
    }

    async fn work_epoch(&self, now_ms: u64) -> StoreResult<Option<u64>> {
        let k = self.keys();
        let mut p = ::redis::pipe();
        p.cmd("GET").arg(k.g("epoch"));
        p.cmd("ZRANGEBYSCORE")
            .arg(k.g("due"))
            .arg("-inf")
            .arg(now_ms);
        let (epoch, due): (Option<u64>, Vec<String>) = self.run(&p).await?;
        if due.is_empty() {
            return Ok(Some(epoch.unwrap_or(0)));
        }
        // Retries whose backoff ran out: another change every coordinator sees.
        let mut p = ::redis::pipe();
        p.cmd("ZREM").arg(k.g("due")).arg(&due).ignore();
        p.cmd("INCR").arg(k.g("epoch"));
        let (epoch,): (u64,) = self.run(&p).await?;
        Ok(Some(epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_keys_share_one_slot() {
        let k = Keys {
            prefix: "musketeer".into(),
        };
        let keys = k.job("0190abcd");
        let tag = "{musketeer:j:0190abcd}";
        assert!(keys.iter().all(|key| key.starts_with(tag)), "{keys:?}");
        assert!(k.agent("a").starts_with("{musketeer}:"));
        assert!(k.queue("default").starts_with("{musketeer}:"));
    }

    #[test]
    fn queue_order_is_priority_then_age() {
        assert!(queue_score(9, 1000) < queue_score(5, 1));
        assert!(queue_score(5, 1) < queue_score(5, 2));
        assert!(queue_score(0, 1) > queue_score(1, 1 << 39));
    }

    #[test]
    fn scripts_carry_the_backoff_table() {
        let s = Scripts::new();
        assert!(s
            .complete
            .code
            .contains("local BACKOFF = {1000, 2000, 4000"));
        assert!(!s.lease.code.contains("__"));
        assert!(s.complete.code.contains("local QUORUM = {1, 2, 2, 3"));
    }

    #[test]
    fn every_replica_fits_in_a_lease_id() {
        for r in 1..=musketeer_tasks::job::MAX_REDUNDANCY {
            assert!(r + validation::max_extra_replicas(r) <= MAX_REPLICAS, "{r}");
        }
    }
}

#[cfg(test)]
mod differential;
