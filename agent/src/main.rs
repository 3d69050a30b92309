//! `musketeer`: the agent's command line. Logs go to standard error;
//! standard output carries only what a command prints (`info`, `bench`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use musketeer::config::{self, default_state_dir, LimitArgs, Limits, UpdateArgs};
use musketeer::{capacity, control, AgentConfig, Exit, UpdatePolicy};

/// This build's version. `MUSKETEER_VERSION` at compile time overrides the
/// crate's, so that a test can build a genuinely newer agent by rebuilding
/// only this binary crate.
const VERSION: &str = match option_env!("MUSKETEER_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The Musketeer agent: lend this machine's spare cores to a Musketeer cluster.
#[derive(Parser, Debug)]
#[command(name = "musketeer", version = VERSION)]
struct Cli {
    /// Where the credential is kept [default: the platform's data directory].
    #[arg(long, global = true, env = config::STATE_DIR, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// What to log: a level (error, warn, info, debug) or target=level pairs, e.g. info,musketeer::work_loop=debug
    #[arg(long, global = true, env = config::LOG, value_name = "FILTER", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enrol with a coordinator (once; the credential is saved), then work until stopped.
    Join {
        /// The coordinator, https://HOST:PORT.
        #[arg(env = config::COORDINATOR)]
        url: String,
        /// The join token, as `musketeer-coordinator token create` prints it.
        #[arg(long, env = config::TOKEN, hide_env_values = true)]
        token: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Work with the saved credential, or join first when a coordinator and token are given.
    Run {
        /// The coordinator to join if this agent has not joined it yet.
        #[arg(long, env = config::COORDINATOR, requires = "token")]
        coordinator: Option<String>,
        /// The join token for --coordinator.
        #[arg(long, env = config::TOKEN, hide_env_values = true, requires = "coordinator")]
        token: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Print the capacity this host would advertise, and this build's target triple, as JSON.
    Info {
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run each built-in kernel on a sample here and print its speed.
    Bench,
    /// Pause the running agent's tasks (frozen, leases kept for a while), for DURATION or until `resume`.
    Pause {
        /// How long: 90s, 30m, 1h30m, 2d, or seconds; none pauses until `musketeer resume`.
        duration: Option<String>,
    },
    /// Lift a `musketeer pause` (the schedule and the battery still apply).
    Resume,
    /// Show the running agent: coordinator, state, tasks, limits, and the work and credit the coordinator counts.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Counts the heap of worker processes and holds them to their memory
/// share; in the agent's own process it only forwards to the system.
#[global_allocator]
static ALLOCATOR: musketeer::memory_cap::CappedAlloc = musketeer::memory_cap::CappedAlloc;

fn main() -> ExitCode {
    // The agent starts its worker processes from this binary; they are not
    // a command for people, so they bypass the CLI (and its logging).
    if std::env::args_os().nth(1).as_deref() == Some(musketeer::worker::SUBCOMMAND.as_ref()) {
        return match musketeer::worker::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("musketeer worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let filter: Targets = filter.parse().unwrap_or_else(|e| {
        eprintln!("warning: ignoring the log filter {filter:?} ({e}); using info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    match cli.command {
        Command::Join {
            url,
            token,
            limits,
            update,
        } => work(with_update(
            AgentConfig::new(state_dir)
                .joining(url, token)
                .with_limits(parse_limits(&limits)?),
            &update,
        )),
        Command::Run {
            coordinator,
            token,
            limits,
            update,
        } => {
            let mut config = AgentConfig::new(state_dir).with_limits(parse_limits(&limits)?);
            // An image built without a baked coordinator sets both variables
            // empty: that means "not given", so the saved credential is used.
            config.coordinator = coordinator.filter(|s| !s.trim().is_empty());
            config.token = token.filter(|s| !s.trim().is_empty());
            work(with_update(config, &update))
        }
        Command::Info { limits } => {
            let mut capacity = capacity::detect(&parse_limits(&limits)?);
            capacity.version = VERSION.to_string();
            // The target triple too: it names the build to publish for this host.
            let mut info = serde_json::to_value(&capacity)?;
            info["target"] = musketeer::update::TARGET.into();
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Pause { duration } => {
            let seconds = duration
                .map(|d| config::parse_duration(&d).map(|d| d.as_secs()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("invalid pause: {e}"))?;
            let status = control::call(&state_dir, &control::Request::Pause { seconds })?;
            print!("{}", musketeer::status::render(&status));
            Ok(())
        }
        Command::Resume => {
            let status = control::call(&state_dir, &control::Request::Resume)?;
            print!("{}", musketeer::status::render(&status));
            Ok(())
        }
        Command::Status { json } => {
            let status = control::call(&state_dir, &control::Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", musketeer::status::render(&status));
            }
            Ok(())
        }
        Command::Bench => {
            let rows = musketeer::bench::run_samples();
            print!("{}", musketeer::bench::render(&rows));
            let twin = musketeer::bench::bench_primes(
                musketeer::bench::PRIME_BLOCKS,
                musketeer::bench::MIN_BENCH_TIME,
            );
            match &twin {
                Ok(t) => print!("{}", musketeer::bench::render_twin(t)),
                Err(e) => println!("wasm       cannot run the interpreted kernel: {e}"),
            }
            if rows.iter().any(Result::is_err) || twin.is_err() {
                anyhow::bail!("some benchmarks could not run (see above)");
            }
            Ok(())
        }
    }
}

fn parse_limits(args: &LimitArgs) -> anyhow::Result<Limits> {
    Ok(Limits::from_source(args)?)
}

/// This build's version, and the update policy the flags ask for.
fn with_update(mut config: AgentConfig, args: &UpdateArgs) -> AgentConfig {
    config.version = VERSION.to_string();
    if !args.auto_update {
        return config;
    }
    // The path we were started from, read now: once replaced, Linux reports
    // the running image as "<path> (deleted)".
    match std::env::current_exe() {
        Ok(exe) => {
            config.update = Some(UpdatePolicy {
                exe,
                interval: std::time::Duration::from_secs(args.update_interval),
            })
        }
        Err(e) => tracing::warn!("self-update is off: cannot tell where this binary is ({e})"),
    }
    config
}

/// Starts the freshly installed binary in this process's place, with the
/// same arguments and environment (and so the same state directory and
/// credential). Returns only if that fails.
#[cfg(unix)]
fn restart(exe: &std::path::Path) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!(
        "the new release is installed at {} but cannot be started ({err}); start the agent again",
        exe.display()
    )
}

#[cfg(not(unix))]
fn restart(exe: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the new release is installed at {}; start the agent again",
        exe.display()
    )
}

/// Runs the agent until SIGINT or SIGTERM; a second signal quits at once.
fn work(mut config: AgentConfig) -> anyhow::Result<()> {
    config.worker_exe =
        Some(std::env::current_exe().context("cannot find this binary to start worker processes")?);
    // One thread is plenty for the network side: tasks run on the
    // executor's own threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let exit = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            signal().await;
            tracing::info!("stopping (a second Ctrl-C quits at once)");
            let _ = stop_tx.send(());
            signal().await;
            tracing::warn!("quitting without waiting for running tasks");
            std::process::exit(130);
        });
        musketeer::run_until_update(config, async {
            let _ = stop_rx.await;
        })
        .await
    })?;
    // Let the runtime's threads go before this process becomes the new one.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match exit {
        Exit::Stopped(_) => Ok(()),
        Exit::Updated(_, installed) => {
            tracing::info!(
                "restarting as version {} ({})",
                installed.version,
                installed.exe.display()
            );
            Err(restart(&installed.exe))
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (`docker stop`, systemd).
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
