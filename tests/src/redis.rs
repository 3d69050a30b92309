//! A real `redis-server` for the shared-store tests and benchmarks: its own
//! free loopback port and temporary directory, append-only persistence on,
//! stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// A `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    /// Its working directory: the append-only file and the log.
    pub dir: TempDir,
    /// The port it listens on, kept across restarts.
    pub port: u16,
}

impl RedisServer {
    /// Starts `redis-server` with `appendonly yes` on a free port and waits
    /// until it answers.
    pub fn start() -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("musketeer-redis-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut server = RedisServer {
            child: None,
            dir,
            port,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            // Every write is in the append-only file before Redis replies,
            // so a SIGKILLed server restarts with everything it accepted.
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
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ping().is_ok() {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("redis-server did not answer; its log:\n{}", self.log());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "redis-server exited with {status}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `PING` over a fresh connection; Ok once the data set is loaded.
    pub fn ping(&self) -> Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        if buf[..n].starts_with(b"+PONG") {
            Ok(())
        } else {
            bail!("redis answered {:?}", String::from_utf8_lossy(&buf[..n]))
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// SIGKILLs the server: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory (it reloads
    /// the append-only file).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// Commands the server has run since it started (`INFO stats`), to
    /// measure what a load costs the store.
    pub fn commands_processed(&self) -> Result<u64> {
        self.info_number("stats", "total_commands_processed")
    }

    /// Times Redis had to wait for a slow disk before writing its
    /// append-only file (`INFO persistence`): replies held back meanwhile.
    pub fn delayed_fsyncs(&self) -> Result<u64> {
        self.info_number("persistence", "aof_delayed_fsync")
    }

    /// Runs one command whose reply is an integer (`HEXISTS`, `HSTRLEN`,
    /// `ZCARD`, ...), to look at the store from outside the coordinators.
    pub fn integer_command(&self, args: &[&str]) -> Result<i64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 256];
        while !raw.ends_with(b"\r\n") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw);
        text.trim_end()
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{args:?} answered {text:?}, not an integer"))
    }

    /// One numeric field of `INFO <section>`.
    fn info_number(&self, section: &str, field: &str) -> Result<u64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("INFO {section}\r\n").as_bytes())?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // A bulk reply: `$<len>\r\n<text>\r\n`.
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
                if rest.len() >= len.parse::<usize>().unwrap_or(usize::MAX) {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .with_context(|| format!("INFO {section} has no {field}"))?
            .trim()
            .parse()
            .with_context(|| format!("{field} is not a number"))
    }
}
