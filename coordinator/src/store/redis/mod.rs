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
//!
//! # Redis Cluster
//! The same store runs on a Redis Cluster (`redis+cluster://`, see
//! `connection.rs`): the hash tags put each job on one slot and the rest on
//! one other, pipelines that span slots are cut by slot there. A cluster
//! replicates asynchronously, so a master killed right after a write may
//! leave a promoted replica without it. Lost progress (a lease, a result)
//! only makes tasks run again; what must not be lost waits for a replica
//! (`WAIT`, [`REPLICA_WAIT`]) before the caller is answered: a sealed job
//! and its index entries (before its `201`), a finished or cancelled job
//! (before it leaves the indexes, or it would be forgotten half done), a
//! retried job and its entry in the active jobs, tokens, agents and the
//! shared trust.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::{Cmd, ErrorKind, Pipeline, ServerErrorKind, Value};
use musketeer_tasks::protocol::{HeartbeatAck, LeasedTask, TaskOutcome, TaskRef, TaskReport};
use musketeer_tasks::{Cost, Kernel};

use super::rules::{self, Batch};
use super::*;

mod agents;
mod connection;
mod decode;
mod expiry;
mod jobs;
mod keys;
mod leasing;
mod modules;
mod results;
mod schedules;
mod scripts;
mod workflows;

use connection::{Connection, Target};
use decode::*;
use expiry::{EXPIRING, RESULTS_EXPIRING};
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

/// How long a write that must survive a failover waits for a replica of
/// its master on a Redis Cluster; past it the write stands on its master
/// alone (and its append-only file), with a warning.
pub const REPLICA_WAIT: Duration = Duration::from_secs(1);

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
    conns: Vec<Connection>,
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
    /// Connects to Redis at `url`: one server
    /// (`redis://[:password@]host:port[/db]`) or a Redis Cluster
    /// (`redis+cluster://[:password@]host:port[,host:port...]`, any of its
    /// nodes), with every key under `prefix`, so several clusters (or
    /// tests) can share one Redis.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(StoreError::Config(format!(
                "the Redis key prefix {prefix:?} must be non-empty and without braces"
            )));
        }
        let conns = Target::parse(url)?.connect(url, CONNECTIONS).await?;
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

    fn conn(&self) -> Connection {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[i].clone()
    }

    /// Loads every script (on a cluster, on every node).
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
        self.run_on(&mut self.conn(), p).await
    }

    /// [`RedisStore::run`] on the connection `c`.
    async fn run_on<T: ::redis::FromRedisValue>(
        &self,
        c: &mut Connection,
        p: &Pipeline,
    ) -> StoreResult<T> {
        if p.is_empty() {
            return ::redis::from_redis_value(Value::Array(Vec::new()))
                .map_err(|e| corrupt(e.to_string()));
        }
        match p.query_async(c).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                Ok(p.query_async(c).await?)
            }
            r => Ok(r?),
        }
    }

    /// Runs a pipeline whose writes must survive a failover: on a Redis
    /// Cluster, returns once a replica of each master that the slots of
    /// `keys` are on has them (or after [`REPLICA_WAIT`], with a warning).
    async fn run_failover_safe<T: ::redis::FromRedisValue>(
        &self,
        p: &Pipeline,
        keys: &[&str],
    ) -> StoreResult<T> {
        let mut c = self.conn();
        let out = self.run_on(&mut c, p).await?;
        self.wait_failover_safe(&mut c, keys).await?;
        Ok(out)
    }

    /// Waits until a replica has what `c` wrote to the masters of `keys`
    /// (see [`RedisStore::run_failover_safe`]); nothing on one server.
    async fn wait_failover_safe(&self, c: &mut Connection, keys: &[&str]) -> StoreResult<()> {
        for key in keys {
            if c.wait_for_replica(key, REPLICA_WAIT).await? == Some(0) {
                tracing::warn!(
                    "no replica of the Redis master of {key} acknowledged a write within {} ms: \
                     it stands on that master alone until one does (give every master a replica)",
                    REPLICA_WAIT.as_millis()
                );
            }
        }
        Ok(())
    }

    /// [`RedisStore::one`] for a write that must survive a failover, as
    /// [`RedisStore::run_failover_safe`].
    async fn one_failover_safe(&self, cmd: Cmd, keys: &[&str]) -> StoreResult<Value> {
        let mut p = ::redis::pipe();
        p.add_command(cmd);
        let mut v: Vec<Value> = self.run_failover_safe(&p, keys).await?;
        Ok(v.pop().unwrap_or(Value::Nil))
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

    /// Forgets `id` as a sweep does that read it finished before a retry
    /// reopened it (the race `restore_reopened` mends), for tests.
    #[cfg(test)]
    pub async fn forget_stale(&self, id: &str) -> StoreResult<()> {
        let mut c = ::redis::cmd("HGET");
        c.arg(self.keys().meta(id)).arg("queue");
        let queue = reply_string(&self.one(c).await?).unwrap_or_default();
        self.forget_finished(&[(id.to_string(), queue)]).await
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
        self.run::<()>(&p).await?;
        self.restore_reopened(jobs).await
    }

    /// Puts back in the indexes the `jobs` that a retry reopened between
    /// the caller's read (finished) and `forget_finished`'s removals: the
    /// indexes live in other slots than a job's own keys on Redis Cluster,
    /// so no one script can both check a job's state and forget it.
    async fn restore_reopened(&self, jobs: &[(String, String)]) -> StoreResult<()> {
        let k = self.keys();
        let mut p = ::redis::pipe();
        for (id, _) in jobs {
            p.cmd("HGET").arg(k.meta(id)).arg("state");
        }
        let states: Vec<Option<String>> = self.run(&p).await?;
        let reopened: Vec<&(String, String)> = jobs
            .iter()
            .zip(states)
            .filter(|(_, s)| {
                s.as_deref()
                    .and_then(JobState::parse)
                    .is_some_and(|s| !s.is_finished())
            })
            .map(|(job, _)| job)
            .collect();
        if reopened.is_empty() {
            return Ok(());
        }
        let mut p = ::redis::pipe();
        for (id, queue) in reopened {
            p.cmd("HSET")
                .arg(k.shared("active"))
                .arg(id)
                .arg(queue)
                .ignore();
            let place = reply_items(self.one(self.scripts().place.call(&k.job(id))).await?);
            self.put_back(&mut p, id, &place, 0);
        }
        self.bump_epoch(&mut p);
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

    /// A store on the Redis Cluster of `MUSKETEER_TEST_REDIS_CLUSTER_URL`
    /// (scripts/test starts one), under a prefix of its own.
    async fn cluster_store() -> RedisStore {
        let var = "MUSKETEER_TEST_REDIS_CLUSTER_URL";
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: this test needs a Redis Cluster; run scripts/test (it starts one)")
        });
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        RedisStore::connect(&url, &prefix).await.unwrap()
    }

    /// Pipelines whose commands lie in several slots (on several masters)
    /// answer in their own order, writes in runs and reads all at once.
    #[tokio::test]
    async fn cluster_pipelines_across_slots_keep_their_order() {
        let s = cluster_store().await;
        let k = s.keys();
        let keys: Vec<String> = (0..12)
            .map(|i| format!("{}:x", k.meta(&i.to_string())))
            .chain([k.shared("x")])
            .collect();
        let slots: HashSet<_> = keys
            .iter()
            .map(::redis::cluster_routing::Slot::for_key)
            .collect();
        assert!(slots.len() > 3, "the keys span several slots");
        let mut p = ::redis::pipe();
        for (i, key) in keys.iter().enumerate() {
            p.cmd("SET").arg(key).arg(i).ignore();
            p.cmd("INCR").arg(key);
        }
        let incremented: Vec<i64> = s.run(&p).await.unwrap();
        assert_eq!(incremented, (1..=keys.len() as i64).collect::<Vec<_>>());
        let mut p = ::redis::pipe();
        for key in keys.iter().rev() {
            p.cmd("GET").arg(key);
        }
        let read: Vec<i64> = s.run(&p).await.unwrap();
        assert_eq!(read, (1..=keys.len() as i64).rev().collect::<Vec<_>>());
        // A failover-safe write is on a replica of its master on return.
        let mut c = s.conn();
        let mut p = ::redis::pipe();
        p.cmd("SET").arg(&keys[0]).arg("kept").ignore();
        s.run_on::<()>(&mut c, &p).await.unwrap();
        let replicas = c.wait_for_replica(&keys[0], REPLICA_WAIT).await.unwrap();
        assert!(replicas >= Some(1), "{replicas:?}");
    }

    /// Scripts reloaded on every node after a `SCRIPT FLUSH` everywhere: a
    /// `NOSCRIPT` from any master is answered by loading them again.
    #[tokio::test]
    async fn cluster_scripts_come_back_after_a_flush() {
        let s = cluster_store().await;
        crate::store::conformance::enrol(&s, "a").await;
        let mut p = ::redis::pipe();
        p.cmd("SCRIPT").arg("FLUSH").ignore();
        s.run::<()>(&p).await.unwrap();
        crate::store::conformance::job(&s, "j", 2, musketeer_tasks::JobOptions::default()).await;
        let got = s
            .lease(crate::store::conformance::query("a", 1_000_000, 2))
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
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
