//! "Several coordinators behind one address": a small TCP load balancer,
//! round-robin over the backends that accept a connection, forwarding bytes
//! both ways (TLS passes through untouched, as behind a layer-4 balancer).
//! It runs on its own thread and runtime, so a test that blocks its own
//! thread (starting a process, say) does not stall the traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};

/// A running balancer; stops when dropped.
pub struct Balancer {
    /// The address clients connect to.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    /// Listens on a free loopback port and spreads connections over `backends`.
    pub fn start(backends: Vec<SocketAddr>) -> Result<Balancer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the balancer's runtime builds");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener converts");
                let backends = Arc::new(backends);
                let next = Arc::new(AtomicUsize::new(0));
                let serve = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let backends = backends.clone();
                        let next = next.clone();
                        tokio::spawn(async move {
                            if let Some(mut server) = connect_next(&backends, &next).await {
                                let mut client = client;
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Ok(Balancer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:<port>`: the one address agents and clients use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// The next backend in turn that accepts a connection; a dead one (refused)
/// is skipped, as a health-checking balancer would.
async fn connect_next(backends: &[SocketAddr], next: &AtomicUsize) -> Option<TcpStream> {
    for _ in 0..backends.len() {
        let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
        let attempt = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(backends[i]));
        if let Ok(Ok(s)) = attempt.await {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
    }
    None
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
