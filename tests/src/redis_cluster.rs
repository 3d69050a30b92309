//! A real Redis Cluster for the cluster tests: six `redis-server
//! --cluster-enabled yes` on free loopback ports, each with its own
//! directory in one temporary directory, joined by `redis-cli --cluster
//! create` as three masters with a replica each. A master is declared
//! failed after [`NODE_TIMEOUT_MS`] without answer, and its replica takes
//! over its slots. Every process is stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// `cluster-node-timeout`: short, so a failover takes a second or two.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// Nodes of the cluster: three masters and a replica of each.
const NODES: usize = 6;

/// One node's process and port.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A node as `CLUSTER NODES` describes it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master now.
    pub master: bool,
    /// Whether the cluster has marked it failed (or possibly failed).
    pub failed: bool,
    /// Its master's id, if it is a replica.
    pub master_id: Option<String>,
    /// The slot ranges it serves (inclusive), if a master.
    pub slots: Vec<(u16, u16)>,
}

/// Six `redis-server` processes forming one cluster.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// One directory per node (named by its port): append-only file,
    /// `nodes.conf` and `redis.log`.
    pub dir: TempDir,
}

/// `n` free loopback ports whose cluster bus ports (port + 10000) are free
/// too.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == n {
            break;
        }
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port >= 55_535 {
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + 10_000)) else {
            continue;
        };
        held.push((l, bus));
        ports.push(port);
    }
    if ports.len() < n {
        bail!("cannot find {n} free loopback ports with free cluster bus ports");
    }
    Ok(ports)
}

impl RedisCluster {
    /// Starts the six servers, creates the cluster and waits until every
    /// node says `cluster_state:ok` and every replica is in sync.
    pub fn start() -> Result<RedisCluster> {
        let dir = tempfile::Builder::new()
            .prefix("musketeer-redis-cluster-")
            .tempdir()?;
        let nodes = free_ports(NODES)?
            .into_iter()
            .map(|port| Node { port, child: None })
            .collect();
        let mut cluster = RedisCluster { nodes, dir };
        for i in 0..NODES {
            cluster.spawn(i)?;
        }
        for i in 0..NODES {
            cluster.wait_answers(cluster.nodes[i].port)?;
        }
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context(
                "cannot run redis-cli: install redis-tools (`apt-get install redis-server` \
                 brings it) or run scripts/test, which does",
            )?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn node_dir(&self, port: u16) -> std::path::PathBuf {
        self.dir.path().join(port.to_string())
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let port = self.nodes[i].port;
        let dir = self.node_dir(port);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // As the single server of the other tests: every write is in
            // the append-only file before the node replies.
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start redis-server: install it (`apt-get install redis-server`) \
                 or run scripts/test, which does",
            )?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// `redis+cluster://127.0.0.1:<port>,...`: every node, as the store's
    /// `--redis` takes it.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Every node's port, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// Runs `redis-cli -p <port> <args>` and returns what it printed.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run redis-cli")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("ERR") || text.starts_with("CLUSTERDOWN") {
            bail!(
                "redis-cli -p {port} {}: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    fn wait_answers(&self, port: u16) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if self.cli(port, &["ping"]).is_ok_and(|r| r.trim() == "PONG") {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("redis-server on {port} did not answer:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every running node says the cluster is ok, knows all
    /// nodes, and every running replica is in sync with its master.
    fn healthy(&self) -> bool {
        self.running().all(|port| {
            let info = self.cli(port, &["cluster", "info"]).unwrap_or_default();
            let replication = self.cli(port, &["info", "replication"]).unwrap_or_default();
            info.contains("cluster_state:ok")
                && info.contains(&format!("cluster_known_nodes:{NODES}"))
                && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
        })
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while !self.healthy() {
            if Instant::now() > end {
                bail!("the Redis Cluster did not become ready:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The nodes as a running node sees them.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let port = self.running().next().context("no node is running")?;
        let text = self.cli(port, &["cluster", "nodes"])?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 {
                    bail!("malformed CLUSTER NODES line: {line}");
                }
                let address = f[1].split(['@', ',']).next().unwrap_or_default();
                let port = address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("no port in {line}"))?;
                let flags: Vec<&str> = f[2].split(',').collect();
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect();
                Ok(NodeInfo {
                    id: f[0].to_string(),
                    port,
                    master: flags.contains(&"master"),
                    failed: flags.iter().any(|f| f.starts_with("fail")),
                    master_id: (f[3] != "-").then(|| f[3].to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> Result<u16> {
        let port = self.running().next().context("no node is running")?;
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])?
            .trim()
            .trim_start_matches("(integer) ")
            .parse()
            .context("CLUSTER KEYSLOT did not answer a number")?;
        self.nodes()?
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// The port of a replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> Result<u16> {
        let nodes = self.nodes()?;
        let id = nodes
            .iter()
            .find(|n| n.port == master)
            .map(|n| n.id.clone())
            .with_context(|| format!("no node on {master}"))?;
        nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
            .with_context(|| format!("the master on {master} has no replica"))
    }

    /// SIGKILLs the node on `port`: no shutdown code runs.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Waits until the node on `port` is a master serving slots and every
    /// running node says the cluster is ok: a replica's failover done.
    pub fn wait_promoted(&self, port: u16, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let promoted = self.nodes().is_ok_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n.port == port && n.master && !n.slots.is_empty())
            });
            let ok = self.running().all(|p| {
                self.cli(p, &["cluster", "info"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if promoted && ok {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "the replica on {port} was not promoted in {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's log so far, for failure messages.
    pub fn log(&self) -> String {
        self.ports()
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(self.node_dir(*p).join("redis.log"))
                    .unwrap_or_default();
                format!("--- redis {p}:\n{log}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in self.ports() {
            self.kill(port);
        }
    }
}
