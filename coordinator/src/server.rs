//! Starting the coordinator: data directory, trust material, store,
//! scheduler and the HTTPS listener.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use musketeer_tasks::token::{secret_hash, JoinToken};

use crate::api::{self, AppState};
use crate::pki::{self, Pki};
use crate::scheduler::Scheduler;
use crate::store::{RedisStore, SqliteStore, Store};

/// The file in the data directory that holds the URL clients reach us at.
pub const URL_FILE: &str = "url";
/// The default join token, kept so every start can print the join command.
pub const JOIN_TOKEN_FILE: &str = "join.token";
/// The embedded database's file.
pub const DB_FILE: &str = "musketeer.db";

/// How `serve` was asked to run.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where state and trust material live.
    pub data_dir: PathBuf,
    /// The URL agents and clients use, if not `https://<listen address>`.
    pub public_url: Option<String>,
    /// A certificate chain from a public CA, instead of the self-made CA.
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// How long the self-made server certificate lives before it is
    /// renewed (at most [`pki::MAX_SERVER_CERT_LIFETIME`]).
    pub server_cert_lifetime: Duration,
    /// How long a lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// Largest streamed word-count upload, in bytes.
    pub max_upload: u64,
    /// Bytes uploads must leave free on the data directory's disk (`None`:
    /// [`crate::space::DEFAULT_MIN_FREE`], at most a tenth of the disk).
    pub min_free_disk: Option<u64>,
    /// Request-rate limits per agent and per client address.
    pub rate_limits: api::rate_limit::RateLimits,
    /// The operator's release public key (`--release-key`): agents learn it
    /// at enrolment and install only releases it verifies.
    pub release_key: Option<crate::releases::PublicKey>,
    /// Keep all state in this Redis instead of the embedded store, shared
    /// with every coordinator configured alike.
    pub redis: Option<RedisConfig>,
    /// `--public-dashboard`: the dashboard's reads open to anyone.
    pub public_dashboard: bool,
}

/// Where the shared store is.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, or a Redis Cluster:
    /// `redis+cluster://[:password@]host:port[,host:port...]`.
    pub url: String,
    /// The prefix of every key: coordinators with the same URL and prefix
    /// form one cluster.
    pub prefix: String,
}

/// Makes the data directory hold the cluster's trust material (CA, its key,
/// the admin token), kept in the shared store: the first coordinator's
/// wins, the others adopt it, so that a join token and the admin token work
/// on every coordinator. Each still issues its own server certificate.
async fn adopt_shared_trust(dir: &std::path::Path, store: &RedisStore) -> Result<()> {
    let ca_path = dir.join(pki::CA_FILE);
    let key_path = dir.join(pki::CA_KEY_FILE);
    let admin_path = dir.join(pki::ADMIN_TOKEN_FILE);
    let fresh = !ca_path.exists() && !key_path.exists() && !admin_path.exists();
    // Made (or read) as a lone coordinator would, then offered.
    Pki::load_or_create(dir, &pki::server_names(&[]), pki::MAX_SERVER_CERT_LIFETIME)?;
    let admin = pki::load_or_create_admin_token(dir)?;
    let ca = std::fs::read_to_string(&ca_path)?;
    let key = std::fs::read_to_string(&key_path)?;
    let (shared_ca, shared_key, shared_admin) = store
        .share_trust(&ca, &key, &admin)
        .await
        .context("cannot share the CA and admin token through Redis")?;
    if (&shared_ca, &shared_key, &shared_admin) == (&ca, &key, &admin) {
        return Ok(());
    }
    if !fresh {
        anyhow::bail!(
            "{} holds another CA or admin token than the cluster in Redis: remove {}, {} and {} \
             from it to adopt the cluster's, or use another --redis-prefix for a separate cluster",
            dir.display(),
            pki::CA_FILE,
            pki::CA_KEY_FILE,
            pki::ADMIN_TOKEN_FILE
        );
    }
    std::fs::write(&ca_path, shared_ca)?;
    pki::write_private(&key_path, &shared_key)?;
    pki::write_private(&admin_path, &shared_admin)?;
    tracing::info!("adopted the cluster's CA and admin token from Redis");
    Ok(())
}

/// A running coordinator.
pub struct Running {
    /// The URL it serves.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// A join token for agents.
    pub join_token: String,
    /// The admin token.
    pub admin_token: String,
    /// The CA clients trust, PEM.
    pub ca_pem: String,
    handle: axum_server::Handle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (a few seconds at
    /// most), and returns.
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(3)));
        let _ = self.server.await;
    }

    /// Serves until the listener fails.
    pub async fn wait(self) -> Result<()> {
        self.server.await??;
        Ok(())
    }
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Records the URL clients reach us at; on a full disk the coordinator
/// still starts (read-only), so a file it cannot write is only logged.
fn write_url_file(path: &std::path::Path, url: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|saved| saved == url) {
        return Ok(());
    }
    // Whole or not at all: a reader (a script waiting for the coordinator)
    // must never read an empty or half-written URL.
    let tmp = path.with_extension("tmp");
    match std::fs::write(&tmp, url).and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            if crate::space::is_no_space(&e) {
                tracing::warn!("cannot write {} (the disk is full): {e}", path.display());
                return Ok(());
            }
            Err(e).with_context(|| format!("cannot write {}", path.display()))
        }
    }
}

/// Starts a coordinator and returns once it listens.
pub async fn start(cfg: ServeConfig) -> Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            cfg.data_dir.display()
        )
    })?;
    let listener = TcpListener::bind(cfg.listen).with_context(|| {
        format!(
            "cannot listen on {}: is another coordinator running?",
            cfg.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let url = match &cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if addr.ip().is_unspecified() => format!("https://127.0.0.1:{}", addr.port()),
        None => format!("https://{addr}"),
    };

    let shared = match &cfg.redis {
        Some(r) => Some(
            RedisStore::connect(&r.url, &r.prefix)
                .await
                .context("cannot open the shared store")?,
        ),
        None => None,
    };
    if let (Some(store), None) = (&shared, &cfg.tls_cert) {
        adopt_shared_trust(&cfg.data_dir, store).await?;
    }
    let pki = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Pki::from_files(cert, key)?,
        (None, None) => {
            let extra: Vec<String> = host_of(&url).into_iter().collect();
            Pki::load_or_create(
                &cfg.data_dir,
                &pki::server_names(&extra),
                cfg.server_cert_lifetime,
            )?
        }
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let admin_token = pki::load_or_create_admin_token(&cfg.data_dir)?;
    let store: Arc<dyn Store> = match shared {
        Some(redis) => Arc::new(redis),
        None => Arc::new(
            SqliteStore::open(&cfg.data_dir.join(DB_FILE))
                .context("cannot open the embedded store")?,
        ),
    };
    let space = Arc::new(
        crate::space::Space::new(&cfg.data_dir, cfg.min_free_disk, cfg.redis.is_none())
            .with_context(|| {
                format!(
                    "cannot measure the free space of {}",
                    cfg.data_dir.display()
                )
            })?,
    );
    if let Err(no_room) = space.room_for(0) {
        tracing::warn!("starting read-only: {no_room}");
    }
    space.spawn_monitor();
    let scheduler = Scheduler::new(store.clone(), cfg.lease_ttl);
    scheduler.start().await?;
    crate::workflows::start(&scheduler);
    crate::schedules::start(&scheduler);
    let state = Arc::new(AppState {
        scheduler,
        admin_token_hash: secret_hash(&admin_token),
        pin: pki.pin,
        ca_pem: pki.ca_pem.clone(),
        max_upload: cfg.max_upload,
        limits: api::rate_limit::RateLimiters::new(cfg.rate_limits),
        releases: Arc::new(crate::releases::Releases::open(
            &cfg.data_dir,
            cfg.release_key,
        )?),
        space,
        public_dashboard: cfg.public_dashboard,
    });

    // The join token a fresh coordinator prints; kept (0600) so a restart
    // prints the same command, and made anew if it belongs to another CA.
    let token_path = cfg.data_dir.join(JOIN_TOKEN_FILE);
    let saved = std::fs::read_to_string(&token_path)
        .ok()
        .and_then(|t| JoinToken::parse(&t).ok())
        .filter(|t| t.ca == pki.pin);
    let join_token = match saved {
        Some(t) => t.to_string(),
        None => {
            let t = api::admin_make_token(&state)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            pki::write_private(&token_path, &t.to_string())?;
            t.to_string()
        }
    };
    write_url_file(&cfg.data_dir.join(URL_FILE), &url)?;

    let app = api::router(state);
    let handle = axum_server::Handle::new();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(pki.server_config.clone());
    if let (Some(issuer), Some(not_after)) = (pki.issuer, pki.not_after) {
        tokio::spawn(renew_server_certificate(issuer, not_after, tls.clone()));
    }
    let server = axum_server::from_tcp_rustls(listener, tls)
        .handle(handle.clone())
        // The peer's address feeds the per-address rate limit.
        .serve(app.into_make_service_with_connect_info::<SocketAddr>());
    let server = tokio::spawn(server);
    Ok(Running {
        url,
        addr,
        join_token,
        admin_token,
        ca_pem: pki.ca_pem,
        handle,
        server,
    })
}

/// Renews the self-made server certificate two thirds of the way through
/// each one's life, for as long as the coordinator runs. The new one takes
/// over new handshakes; open connections keep theirs, so agents are never
/// dropped. A failed renewal is retried every minute (the old certificate
/// still has a third of its life).
async fn renew_server_certificate(
    issuer: pki::ServerIssuer,
    mut not_after: std::time::SystemTime,
    tls: axum_server::tls_rustls::RustlsConfig,
) {
    loop {
        let wait = issuer
            .renew_at(not_after)
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        match issuer.issue() {
            Ok((config, until)) => {
                tls.reload_from_config(config);
                not_after = until;
                tracing::info!(
                    "server certificate renewed, valid until {}",
                    time::OffsetDateTime::from(until)
                );
            }
            Err(e) => {
                tracing::error!(
                    "cannot renew the server certificate (retrying in a minute): {e:#}"
                );
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}
