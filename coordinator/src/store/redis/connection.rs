//! The connection to Redis: one server (`redis://`) or a Redis Cluster
//! (`redis+cluster://host:port[,host:port...]`), behind one type that every
//! operation uses alike, as `redis::aio::ConnectionLike`.
//!
//! On a cluster each command goes to the master of its key's slot. A
//! pipeline whose commands lie in several slots (a job's script and the
//! indexes it updates, say) is cut here into runs of consecutive commands
//! of one slot, sent in order, so that it means on a cluster what it means
//! on one server: the crate itself refuses such a pipeline (`CROSSSLOT`).
//! A pipeline of reads only is cut by slot instead, and its parts are sent
//! at once. A script or a transaction must still touch one slot, which the
//! key layout guarantees (see `keys.rs`).
//!
//! Commands without keys that concern every node (`SCRIPT LOAD`,
//! `FLUSHALL`, `INFO`...) are sent on their own, and the crate sends them to
//! every node (or master) and checks every answer. `WAIT` goes with the run
//! before it, to that run's master.
//!
//! The store never re-sends a command on its own (the cluster client's
//! retries are off): a command whose answer was lost with its connection
//! may have run or not, and only the operation knows whether running it
//! again is safe (adding a job's tasks twice is not). As with one server,
//! the error goes to the caller, and the next command finds the new
//! topology after a failover.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use ::redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::{StoreError, StoreResult};

/// The URL scheme of a Redis Cluster.
pub(super) const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where the store's Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// One server, `redis://[:password@]host:port[/db]`.
    Single(String),
    /// A cluster, as the `redis://` URL of each seed node.
    Cluster(Vec<String>),
}

impl Target {
    /// Parses `redis://...` or
    /// `redis+cluster://[user:password@]host:port[,host:port...]`.
    pub(super) fn parse(url: &str) -> StoreResult<Target> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            ::redis::Client::open(url).map_err(|e| {
                StoreError::Config(format!(
                    "{url} is not a Redis URL: {e} (use redis://host:port for one server, \
                     {CLUSTER_SCHEME}host:port,host:port for a Redis Cluster)"
                ))
            })?;
            return Ok(Target::Single(url.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        if hosts.contains('/') || hosts.contains('?') {
            return Err(StoreError::Config(format!(
                "{url}: a Redis Cluster has no database number or options: \
                 give {CLUSTER_SCHEME}host:port[,host:port...]"
            )));
        }
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{auth}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err(StoreError::Config(format!(
                "{url} names no node: give {CLUSTER_SCHEME}host:port[,host:port...]"
            )));
        }
        for node in &nodes {
            ::redis::Client::open(node.as_str()).map_err(|e| {
                StoreError::Config(format!("{url}: {node} is not a node's address: {e}"))
            })?;
        }
        Ok(Target::Cluster(nodes))
    }

    /// Opens `n` independent connections (each multiplexed), so that one
    /// large command does not queue every other behind it.
    pub(super) async fn connect(&self, url: &str, n: usize) -> StoreResult<Vec<Connection>> {
        let unreachable = |e: ::redis::RedisError| {
            StoreError::Config(format!(
                "cannot reach Redis at {url}: {e} (is redis-server running there?)"
            ))
        };
        let mut conns = Vec::with_capacity(n);
        match self {
            Target::Single(url) => {
                let client = ::redis::Client::open(url.as_str())
                    .map_err(|e| StoreError::Config(format!("{url} is not a Redis URL: {e}")))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(Duration::from_secs(60)))
                    .set_number_of_retries(3)
                    .set_max_delay(Duration::from_secs(1))
                    // Thousands of agents' calls at once: queue them in the
                    // connection's pipeline rather than in front of it.
                    .set_pipeline_buffer_size(4096);
                for _ in 0..n {
                    let c = ConnectionManager::new_with_config(client.clone(), config.clone())
                        .await
                        .map_err(unreachable)?;
                    conns.push(Connection::Single(c));
                }
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(5))
                    .response_timeout(Duration::from_secs(60))
                    // See the module's note: no command is sent twice.
                    .retries(0)
                    .build()
                    .map_err(|e| StoreError::Config(format!("{url}: {e}")))?;
                for _ in 0..n {
                    let c = client.get_async_connection().await.map_err(unreachable)?;
                    conns.push(Connection::Cluster(c));
                }
            }
        }
        Ok(conns)
    }
}

/// A connection to one Redis server or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Connection {
    /// One server, reconnected when it drops.
    Single(ConnectionManager),
    /// A cluster: one connection per node, routed by slot.
    Cluster(ClusterConnection),
}

impl Connection {
    /// Waits until a replica of the master of `key`'s slot has every write
    /// this connection sent to that master, or `timeout`; returns how many
    /// replicas have them. `None` on one server, which has no failover to
    /// lose writes to.
    pub(super) async fn wait_for_replica(
        &mut self,
        key: &str,
        timeout: Duration,
    ) -> RedisResult<Option<i64>> {
        let Connection::Cluster(c) = self else {
            return Ok(None);
        };
        let mut wait = ::redis::cmd("WAIT");
        wait.arg(1).arg(timeout.as_millis() as u64);
        let route = Route::with_key(key, SlotAddr::Master);
        let v = c
            .route_command(
                wait,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
            .await?;
        Ok(Some(::redis::from_redis_value(v)?))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => Box::pin(cluster_pipeline(c, pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a command goes on a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The master of this slot.
    Slot(Slot),
    /// With the commands around it (`WAIT`, `ECHO`, an `EVALSHA` of no key).
    Anywhere,
    /// On its own: the crate sends it to every node or master.
    Everywhere,
}

/// A command's name and, for its subcommand families, its subcommand.
fn name(cmd: &Cmd) -> Vec<u8> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(b) => Some(b),
        _ => None,
    });
    let mut name = args.next().unwrap_or_default().to_ascii_uppercase();
    if matches!(&name[..], b"SCRIPT" | b"CONFIG" | b"CLUSTER" | b"FUNCTION") {
        if let Some(sub) = args.next() {
            name.push(b' ');
            name.extend(sub.to_ascii_uppercase());
        }
    }
    name
}

/// The `i`th argument of `cmd` (0 is its name).
fn arg(cmd: &Cmd, i: usize) -> Option<&[u8]> {
    match cmd.args_iter().nth(i)? {
        Arg::Simple(b) => Some(b),
        _ => None,
    }
}

fn place(cmd: &Cmd) -> Place {
    let name = name(cmd);
    match &name[..] {
        b"SCRIPT LOAD" | b"SCRIPT FLUSH" | b"SCRIPT EXISTS" | b"FLUSHALL" | b"FLUSHDB"
        | b"DBSIZE" | b"INFO" | b"PING" | b"KEYS" | b"CONFIG SET" | b"CONFIG GET"
        | b"FUNCTION LOAD" | b"FUNCTION FLUSH" => Place::Everywhere,
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" | b"FCALL" | b"FCALL_RO" => {
            let keys = arg(cmd, 2)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            match arg(cmd, 3) {
                Some(key) if keys > 0 => Place::Slot(Slot::for_key(key)),
                _ => Place::Anywhere,
            }
        }
        b"WAIT" | b"ECHO" | b"TIME" => Place::Anywhere,
        _ => match arg(cmd, 1) {
            Some(key) => Place::Slot(Slot::for_key(key)),
            None => Place::Anywhere,
        },
    }
}

/// Commands that only read: a pipeline of these alone may be sent in
/// parts at once.
fn is_read(cmd: &Cmd) -> bool {
    matches!(
        &name(cmd)[..],
        b"GET"
            | b"MGET"
            | b"STRLEN"
            | b"EXISTS"
            | b"TYPE"
            | b"TTL"
            | b"PTTL"
            | b"HGET"
            | b"HMGET"
            | b"HGETALL"
            | b"HEXISTS"
            | b"HLEN"
            | b"HKEYS"
            | b"HVALS"
            | b"ZRANGE"
            | b"ZREVRANGE"
            | b"ZRANGEBYSCORE"
            | b"ZREVRANGEBYSCORE"
            | b"ZSCORE"
            | b"ZCARD"
            | b"ZCOUNT"
            | b"ZRANK"
            | b"SMEMBERS"
            | b"SISMEMBER"
            | b"SCARD"
            | b"LRANGE"
            | b"LLEN"
    )
}

/// A pipeline of some of `cmds`' commands, each answered.
fn part<'a>(cmds: impl IntoIterator<Item = &'a Cmd>) -> Pipeline {
    let mut p = ::redis::pipe();
    for c in cmds {
        p.add_command(c.clone());
    }
    p
}

/// Sends `pipeline` to a cluster; see the module's note.
async fn cluster_pipeline(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let places: Vec<Place> = cmds.iter().map(|c| place(c)).collect();
    let mut slots: Vec<Slot> = places
        .iter()
        .filter_map(|p| match p {
            Place::Slot(s) => Some(*s),
            _ => None,
        })
        .collect();
    slots.dedup();
    let one_slot = slots.iter().all(|s| *s == slots[0]);
    // A transaction is one slot's or none (the crate refuses it otherwise),
    // and so is a pipeline whose keys share a slot.
    if pipeline.is_transaction() || (one_slot && !places.contains(&Place::Everywhere)) {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    debug_assert_eq!((offset, count), (0, cmds.len()));
    if cmds.iter().all(|c| is_read(c)) {
        return read_by_slot(conn, &cmds, &places).await;
    }
    // Runs of consecutive commands of one slot (commands of no slot join
    // the run they are in), in order, each run's answers after the last's.
    let mut answers = Vec::with_capacity(cmds.len());
    let mut i = 0;
    while i < cmds.len() {
        if places[i] == Place::Everywhere {
            answers.push(conn.req_packed_command(cmds[i]).await?);
            i += 1;
            continue;
        }
        let mut slot = None;
        let mut end = i;
        while end < cmds.len() {
            match (places[end], slot) {
                (Place::Everywhere, _) => break,
                (Place::Slot(s), Some(run)) if s != run => break,
                (Place::Slot(s), None) => slot = Some(s),
                _ => {}
            }
            end += 1;
        }
        let run = part(cmds[i..end].iter().copied());
        answers.extend(conn.req_packed_commands(&run, 0, run.len()).await?);
        i = end;
    }
    Ok(answers)
}

/// Sends a pipeline of reads as one part per slot, all at once, and puts
/// the answers back in the pipeline's order.
async fn read_by_slot(
    conn: &ClusterConnection,
    cmds: &[&Cmd],
    places: &[Place],
) -> RedisResult<Vec<Value>> {
    let mut groups: Vec<(Place, Vec<usize>)> = Vec::new();
    for (i, p) in places.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| g == p) {
            Some((_, members)) => members.push(i),
            None => groups.push((*p, vec![i])),
        }
    }
    let sent = groups.iter().map(|(_, members)| {
        let mut conn = conn.clone();
        let p = part(members.iter().map(|&i| cmds[i]));
        async move { conn.req_packed_commands(&p, 0, p.len()).await }
    });
    let replies = futures::future::try_join_all(sent).await?;
    let mut answers = vec![Value::Nil; cmds.len()];
    for ((_, members), reply) in groups.iter().zip(replies) {
        for (&i, v) in members.iter().zip(reply) {
            answers[i] = v;
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_or_a_cluster() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379").unwrap(),
            Target::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://:secret@10.0.0.1:7000, 10.0.0.2:7001/").unwrap(),
            Target::Cluster(vec![
                "redis://:secret@10.0.0.1:7000".into(),
                "redis://:secret@10.0.0.2:7001".into()
            ])
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://h:1/2",
            "redis+cluster://h:notaport",
            "http://h:1",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("redis"), "{bad}: {e}");
        }
    }

    #[test]
    fn commands_go_to_their_keys_slot() {
        let slot = |c: &Cmd| match place(c) {
            Place::Slot(s) => Some(s),
            _ => None,
        };
        let mut eval = ::redis::cmd("EVALSHA");
        eval.arg("abc")
            .arg(2)
            .arg("{m:j:1}:m")
            .arg("{m:j:1}:t")
            .arg("x");
        let mut hset = ::redis::cmd("HSET");
        hset.arg("{m:j:1}:m").arg("f").arg(1);
        let mut index = ::redis::cmd("ZADD");
        index.arg("{m}:jobs").arg(1).arg("1");
        assert_eq!(slot(&eval), slot(&hset));
        assert_ne!(slot(&eval), slot(&index));
        let mut load = ::redis::cmd("SCRIPT");
        load.arg("load").arg("return 1");
        assert_eq!(place(&load), Place::Everywhere);
        let mut wait = ::redis::cmd("WAIT");
        wait.arg(1).arg(100);
        assert_eq!(place(&wait), Place::Anywhere);
        let mut keyless = ::redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0).arg("x");
        assert_eq!(place(&keyless), Place::Anywhere);
        assert!(is_read(&::redis::cmd("hmget")));
        assert!(!is_read(&eval));
    }
}
