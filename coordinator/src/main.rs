//! `musketeer-coordinator`: the service (`serve`, `demo`) and its admin CLI
//! (`token`, `agents`, `jobs`, `release`, `completions`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use musketeer_coordinator::api::rate_limit::{
    RateLimit, RateLimits, DEFAULT_ADDRESS_LIMIT, DEFAULT_AGENT_LIMIT,
};
use musketeer_coordinator::cli::{self, Connection};
#[cfg(feature = "demo")]
use musketeer_coordinator::demo;
use musketeer_coordinator::{pki, server};

#[derive(Debug, Parser)]
#[command(
    name = "musketeer-coordinator",
    version,
    about = "The Musketeer coordinator and its admin CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MUSKETEER_LISTEN", default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// Where the store, the CA and the admin token live [default: the platform's data directory].
    #[arg(long, env = "MUSKETEER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The URL agents and clients reach this coordinator at (its host goes in the certificate).
    #[arg(long, env = "MUSKETEER_PUBLIC_URL")]
    public_url: Option<String>,
    /// Serve this certificate chain (from a public CA) instead of the self-made CA.
    #[arg(long, env = "MUSKETEER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, env = "MUSKETEER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds the self-made server certificate is valid (at most 90 days);
    /// it is renewed, without a restart, two thirds of the way through.
    #[arg(long, env = "MUSKETEER_SERVER_CERT_LIFETIME_S", default_value_t = 90.0 * 86400.0)]
    server_cert_lifetime_s: f64,
    /// Seconds a lease lasts without a heartbeat before its task is offered again.
    #[arg(long, env = "MUSKETEER_LEASE_TTL", default_value_t = 30.0)]
    lease_ttl: f64,
    /// Largest streamed word-count upload, in MiB.
    #[arg(long, env = "MUSKETEER_MAX_UPLOAD_MIB", default_value_t = 4096)]
    max_upload_mib: u64,
    /// Disk space every upload must leave free on the data directory's disk
    /// (e.g. 256M, 2G; 0 turns the check off); below it new jobs are refused
    /// with 507 [default: 256M, at most a tenth of the disk].
    #[arg(long, env = "MUSKETEER_MIN_FREE_DISK", value_name = "SIZE", value_parser = parse_min_free)]
    min_free_disk: Option<u64>,
    /// Requests per second each agent may make on average; 0 turns the limit off.
    #[arg(long, env = "MUSKETEER_AGENT_REQUESTS_PER_S", default_value_t = DEFAULT_AGENT_LIMIT.per_s)]
    agent_requests_per_s: f64,
    /// Requests an agent may make at once after a quiet spell.
    #[arg(long, env = "MUSKETEER_AGENT_BURST", default_value_t = DEFAULT_AGENT_LIMIT.burst)]
    agent_burst: f64,
    /// Unauthenticated requests (enrolment, failed logins, public pages) per
    /// second from one client address; 0 turns the limit off.
    #[arg(long, env = "MUSKETEER_ADDRESS_REQUESTS_PER_S", default_value_t = DEFAULT_ADDRESS_LIMIT.per_s)]
    address_requests_per_s: f64,
    /// Unauthenticated requests one address may make at once.
    #[arg(long, env = "MUSKETEER_ADDRESS_BURST", default_value_t = DEFAULT_ADDRESS_LIMIT.burst)]
    address_burst: f64,
    /// The public key (or its .pub file) that agent releases are signed with;
    /// agents learn it at enrolment. Without it no release can be published.
    #[arg(long, env = "MUSKETEER_RELEASE_KEY", value_name = "KEY|FILE")]
    release_key: Option<String>,
    /// Keep all state in this Redis (redis://host:port) or Redis Cluster (redis+cluster://host:port[,host:port...], any of its nodes) instead of the embedded store, so that several coordinators can serve one cluster.
    #[arg(long, env = "MUSKETEER_REDIS_URL")]
    redis: Option<String>,
    /// The prefix of this cluster's keys in Redis (coordinators with the same --redis and prefix form one cluster).
    #[arg(
        long,
        env = "MUSKETEER_REDIS_PREFIX",
        default_value = "musketeer",
        requires = "redis"
    )]
    redis_prefix: String,
    /// Open a read-only dashboard to anyone who can reach the port, without
    /// a login (the API still needs a token; actions still need the admin).
    #[arg(long, env = "MUSKETEER_PUBLIC_DASHBOARD")]
    public_dashboard: bool,
}

/// A `--min-free-disk` size: the size syntax of `--memory`, and 0 for "off".
fn parse_min_free(s: &str) -> Result<u64, String> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(0);
    }
    musketeer_tasks::size::parse_size(s)
}

/// A rate limit from its flags, checked.
fn rate_limit(per_s: f64, burst: f64, flag: &str) -> Result<RateLimit> {
    if !per_s.is_finite() || per_s < 0.0 {
        anyhow::bail!("--{flag}-requests-per-s is {per_s}: use 0 (no limit) or more");
    }
    if per_s == 0.0 {
        return Ok(RateLimit::OFF);
    }
    if !burst.is_finite() || burst < 1.0 {
        anyhow::bail!("--{flag}-burst is {burst}: use 1 or more");
    }
    Ok(RateLimit { per_s, burst })
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve(ServeArgs),
    /// Run the whole system on this machine: a coordinator, local agents, every kernel's sample job.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: cli::TokenCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Agents.
    Agents {
        #[command(subcommand)]
        command: cli::AgentsCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Jobs.
    Jobs {
        #[command(subcommand)]
        command: cli::JobsCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// WebAssembly modules: your own kernels (push, list, rm).
    Modules {
        #[command(subcommand)]
        command: cli::ModulesCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Schedules: cron expressions that submit a job at each tick.
    Schedules {
        #[command(subcommand)]
        command: cli::SchedulesCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Workflows: graphs of jobs whose steps feed each other.
    Workflows {
        #[command(subcommand)]
        command: cli::WorkflowsCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Signed agent releases: keygen, publish, list.
    Release {
        #[command(subcommand)]
        command: cli::ReleaseCommand,
    },
    /// Print a shell completion script, e.g. `source <(musketeer-coordinator completions bash)`.
    Completions {
        /// The shell to complete in (bash, zsh, fish; also elvish, powershell).
        shell: clap_complete::Shell,
    },
}

async fn serve(args: ServeArgs) -> Result<()> {
    if !(0.1..=86_400.0).contains(&args.lease_ttl) {
        anyhow::bail!(
            "--lease-ttl is {} s: use 0.1 to 86400 seconds",
            args.lease_ttl
        );
    }
    let cfg = server::ServeConfig {
        listen: args.listen,
        data_dir: args.data_dir.unwrap_or_else(pki::default_data_dir),
        public_url: args.public_url,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        server_cert_lifetime: Duration::try_from_secs_f64(args.server_cert_lifetime_s).map_err(
            |_| anyhow::anyhow!("--server-cert-lifetime-s must be a positive number of seconds"),
        )?,
        lease_ttl: Duration::from_secs_f64(args.lease_ttl),
        max_upload: args.max_upload_mib << 20,
        min_free_disk: args.min_free_disk,
        rate_limits: RateLimits {
            per_agent: rate_limit(args.agent_requests_per_s, args.agent_burst, "agent")?,
            per_address: rate_limit(args.address_requests_per_s, args.address_burst, "address")?,
        },
        release_key: args
            .release_key
            .as_deref()
            .map(musketeer_coordinator::releases::PublicKey::from_arg)
            .transpose()?,
        redis: args.redis.map(|url| server::RedisConfig {
            url,
            prefix: args.redis_prefix,
        }),
        public_dashboard: args.public_dashboard,
    };
    let data_dir = cfg.data_dir.clone();
    let running = server::start(cfg).await?;
    tracing::info!(url = %running.url, data_dir = %data_dir.display(), "coordinator listening on {}", running.addr);
    eprintln!("Musketeer coordinator serving {}", running.url);
    eprintln!(
        "Join an agent to this cluster with:\n\n    musketeer join {} --token {}\n",
        running.url, running.join_token
    );
    eprintln!(
        "Submit jobs with:\n\n    curl --cacert {0}/ca.pem -H \"Authorization: Bearer $(cat {0}/admin.token)\" {1}/v1/jobs -d '{{\"kernel\":\"factorial\",\"n\":100}}'\n",
        data_dir.display(),
        running.url
    );
    tokio::select! {
        r = running.wait() => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSKETEER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args).await,
        Command::Token {
            command,
            connection,
        } => cli::token(&cli::connect(&connection)?, command).await,
        Command::Agents {
            command,
            connection,
        } => cli::agents(&cli::connect(&connection)?, command).await,
        Command::Jobs {
            command,
            connection,
        } => cli::jobs(&cli::connect(&connection)?, command).await,
        Command::Modules {
            command,
            connection,
        } => cli::modules::modules(&cli::connect(&connection)?, command).await,
        Command::Schedules {
            command,
            connection,
        } => cli::schedules::schedules(&cli::connect(&connection)?, command).await,
        Command::Workflows {
            command,
            connection,
        } => cli::workflows::workflows(&cli::connect(&connection)?, command).await,
        Command::Release { command } => cli::release::release(command).await,
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let name = cmd.get_name().to_string();
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            Ok(())
        }
    }
}
