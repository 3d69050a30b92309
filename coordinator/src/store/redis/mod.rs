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
use musketeer_tasks::protocol::{HeartbeatAck, LeasedTask, TaskOutcome, TaskRef, TaskReport};
use musketeer_tasks::{Cost, Kernel};

use super::rules::{self, Batch};
use super::*;

mod agents;
mod decode;
mod jobs;
mod keys;
mod leasing;
mod results;
mod scripts;

use decode::*;
use keys::Keys;
use scripts::Scripts;

/// Connections to Redis: Redis runs one command at a time anyway, but a
/// 32 MiB upload batch on one connection must not queue every lease behind it.
const CONNECTIONS: usize = 4;

/// Jobs of each queue a lease call looks at, in priority order. Only jobs
/// with tasks to lease are in a queue's index, so the first usually fills
/// the batch; more are for agents that cannot take the first ones' tasks.
const QUEUE_HEAD: isize = 64;

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

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> StoreError {
        let full = is_full(&e);
        let source = Box::new(e);
        if full {
            return StoreError::Full {
                store: "Redis",
                source,
            };
        }
        StoreError::Database {
            store: "Redis",
            source,
        }
    }
}

/// Whether Redis refused for lack of room: `OOM` (maxmemory reached) or
/// `MISCONF` (it cannot persist, its own disk full, and refuses writes
/// until it can); a pipeline's or a transaction's failures come as a list.
fn is_full(e: &::redis::RedisError) -> bool {
    e.clone().into_server_errors().is_some_and(|errors| {
        errors
            .iter()
            .any(|(_, e)| matches!(e.code(), "OOM" | "MISCONF"))
    })
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
        let keys = [k.queue(queue), k.shared("qver")];
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

    /// The unfinished jobs and their queues.
    async fn active_jobs(&self) -> StoreResult<Vec<(String, String)>> {
        let v = self.one(hgetall(self.keys().shared("active"))).await?;
        Ok(reply_pairs(v))
    }

    /// Drops finished (or vanished) jobs from the indexes across jobs.
    async fn forget_finished(&self, jobs: &[(String, String)]) -> StoreResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let k = self.keys();
        let mut p = ::redis::pipe();
        for (id, queue) in jobs {
            p.cmd("HDEL").arg(k.shared("active")).arg(id).ignore();
            p.cmd("ZREM").arg(k.queue(queue)).arg(id).ignore();
            p.cmd("HDEL").arg(k.shared("qver")).arg(id).ignore();
        }
        self.run::<()>(&p).await
    }

    /// Puts a job back in its queue's index if a script answered with its
    /// place (queue key, score, version) at `at` in its reply.
    fn put_back(&self, p: &mut Pipeline, id: &str, reply: &[Value], at: usize) {
        if let (Some(key), Some(score), Some(ver)) = (
            reply.get(at).and_then(reply_string),
            reply.get(at + 1).and_then(reply_string),
            reply.get(at + 2),
        ) {
            let mut c = self
                .scripts()
                .queue_put
                .call(&[key, self.keys().shared("qver")]);
            c.arg(id).arg(score).arg(reply_i64(ver));
            p.add_command(c).ignore();
        }
    }

    /// Tells long-polls on every coordinator that tasks may be leasable.
    fn bump_epoch(&self, p: &mut Pipeline) {
        p.cmd("INCR").arg(self.keys().shared("epoch")).ignore();
    }
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

// Each operation lives in the module of its kind (agents, jobs, leasing,
// results), as in the embedded store: see `store_by_operation!`.
store_by_operation!(RedisStore {
    async fn work_epoch(&self, now_ms: u64) -> StoreResult<Option<u64>> {
        jobs::work_epoch(self, now_ms).await
    }
});

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
