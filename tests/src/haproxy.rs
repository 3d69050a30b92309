//! "Several coordinators behind one address", as operators run it: a real
//! HAProxy (Debian's `haproxy`) in TCP mode, so TLS passes through to the
//! coordinators untouched, round-robin over the ones whose `/healthz`
//! answers 200 over TLS. A connection refused by a coordinator that died
//! since the last check is retried on another (`option redispatch`), so a
//! killed coordinator costs its clients one reconnect, not an error.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// How often HAProxy asks each coordinator's `/healthz`; two failures in a
/// row take it out of the rotation, one success puts it back.
const CHECK_INTERVAL_MS: u64 = 500;

/// A running `haproxy`; stopped when dropped.
pub struct Haproxy {
    child: Child,
    /// Its configuration, the coordinators' CA and its log.
    pub dir: TempDir,
    /// The address clients connect to.
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy on a free loopback port in front of `backends`, whose
    /// certificates `ca_pem` signs (the health checks verify them).
    pub fn start(backends: &[SocketAddr], ca_pem: &str) -> Result<Haproxy> {
        let dir = tempfile::Builder::new()
            .prefix("musketeer-haproxy-")
            .tempdir()?;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem)?;
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            configuration(addr, backends, &ca, &dir.path().join("admin.sock")),
        )?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start haproxy: install it (`apt-get install haproxy`) \
                 or run scripts/test, which does",
            )?;
        let mut proxy = Haproxy { child, dir, addr };
        proxy.wait_until_routing(backends.len())?;
        Ok(proxy)
    }

    /// `https://127.0.0.1:<port>`: the one address agents and clients use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// HAProxy's own log (its startup errors and health-check changes).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Each coordinator's state as HAProxy sees it: `(name, status,
    /// last check)`, e.g. `("coordinator0", "UP", "L7OK")`, read from its
    /// admin socket's `show stat`.
    pub fn servers(&self) -> Result<Vec<(String, String, String)>> {
        let mut socket = UnixStream::connect(self.dir.path().join("admin.sock"))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.write_all(b"show stat\n")?;
        let mut csv = String::new();
        socket.read_to_string(&mut csv)?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .context("haproxy's show stat is empty")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st), Some(ck)) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("check_status"),
        ) else {
            bail!("haproxy's show stat lacks the columns this harness reads: {header:?}");
        };
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > ck && f[px] == "coordinators")
            .filter(|f| f[sv] != "BACKEND")
            .map(|f| (f[sv].to_string(), f[st].to_string(), f[ck].to_string()))
            .collect())
    }

    /// Waits until HAProxy has seen every coordinator's health check pass,
    /// so the first requests are spread over all of them.
    fn wait_until_routing(&mut self, backends: usize) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited ({status}); its log:\n{}", self.log());
            }
            if let Ok(servers) = self.servers() {
                let healthy = servers
                    .iter()
                    .filter(|(_, status, check)| status == "UP" && check == "L7OK")
                    .count();
                if healthy == backends {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                bail!(
                    "haproxy did not see every coordinator healthy: {:?}; its log:\n{}",
                    self.servers(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian installs it in /usr/sbin, which a non-root PATH may not hold.
fn haproxy_binary() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// The configuration: TCP passthrough, long client and server timeouts
/// (agents hold long polls open), health checks of `/healthz` over TLS
/// verified against the cluster's CA.
fn configuration(listen: SocketAddr, backends: &[SocketAddr], ca: &Path, admin: &Path) -> String {
    let mut cfg = format!(
        "global\n\
         \x20   maxconn 4096\n\
         \x20   log stderr format short local0 info\n\
         \x20   stats socket {admin} mode 600 level admin\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   log global\n\
         \x20   option dontlognull\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 10m\n\
         \x20   timeout server 10m\n\
         \x20   timeout check 2s\n\
         \x20   retries 3\n\
         \x20   option redispatch\n\
         frontend musketeer\n\
         \x20   bind {listen}\n\
         \x20   default_backend coordinators\n\
         backend coordinators\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri /healthz\n\
         \x20   http-check expect status 200\n\
         \x20   default-server check check-ssl verify required ca-file {ca} inter {CHECK_INTERVAL_MS}ms fall 2 rise 1\n",
        ca = ca.display(),
        admin = admin.display(),
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server coordinator{i} {b}\n"));
    }
    cfg
}
