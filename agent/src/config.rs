//! The agent's configuration: the owner's limits, where state is kept, and
//! which coordinator to join.
//!
//! Every flag has an environment twin so that a container is configured with
//! `-e` alone. clap reads both (flag first, then the variable); the values are
//! then parsed here through [`Source`], a "get this key" trait keyed by the
//! environment variables' names, so that tests parse a map instead of
//! touching the real environment.

pub use musketeer_tasks::size::parse_size;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use std::time::Duration;

use crate::volunteer::Schedule;
use crate::work_loop::Tuning;

/// The coordinator's URL, for `run` in a container configured by `-e` alone.
pub const COORDINATOR: &str = "MUSKETEER_COORDINATOR";
/// The join token, paired with [`COORDINATOR`].
pub const TOKEN: &str = "MUSKETEER_TOKEN";
/// Where the credential is kept.
pub const STATE_DIR: &str = "MUSKETEER_STATE_DIR";
/// `--cpus`.
pub const CPUS: &str = "MUSKETEER_CPUS";
/// `--memory`.
pub const MEMORY: &str = "MUSKETEER_MEMORY";
/// `--module-cache`: most bytes of WebAssembly modules kept in the state directory.
pub const MODULE_CACHE: &str = "MUSKETEER_MODULE_CACHE";
/// `--max-cpu-percent`.
pub const MAX_CPU_PERCENT: &str = "MUSKETEER_MAX_CPU_PERCENT";
/// `--yield-to-host-percent`.
pub const YIELD_TO_HOST_PERCENT: &str = "MUSKETEER_YIELD_TO_HOST_PERCENT";
/// `--corrupt-results`, the hidden test flag of a lying agent.
pub const CORRUPT_RESULTS: &str = "MUSKETEER_CORRUPT_RESULTS";
/// `--queues`.
pub const QUEUES: &str = "MUSKETEER_QUEUES";
/// `--label`, comma-separated `k=v` pairs.
pub const LABELS: &str = "MUSKETEER_LABELS";
/// The tracing filter (`info`, `musketeer=debug`, ...).
pub const LOG: &str = "MUSKETEER_LOG";
/// `--schedule`: compute only in these windows (host local time).
pub const SCHEDULE: &str = "MUSKETEER_SCHEDULE";
/// `--pause-on-battery`.
pub const PAUSE_ON_BATTERY: &str = "MUSKETEER_PAUSE_ON_BATTERY";
/// `--hold-leases-when-paused`.
pub const HOLD_LEASES: &str = "MUSKETEER_HOLD_LEASES_WHEN_PAUSED";
/// `--auto-update`: install signed releases from the coordinator.
pub const AUTO_UPDATE: &str = "MUSKETEER_AUTO_UPDATE";
/// `--update-interval`: seconds between looks for a release.
pub const UPDATE_INTERVAL: &str = "MUSKETEER_UPDATE_INTERVAL";

/// Where the state directory goes when neither `--state-dir` nor the
/// platform's data directory can be had (no home directory, as in some
/// containers).
const FALLBACK_STATE_DIR: &str = "./musketeer-state";

/// The longest queue name, the same bound the coordinator puts on jobs.
const MAX_QUEUE_LEN: usize = 64;

/// A value that cannot be used; the message names the flag and its variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {flag} ({env}) value {value:?}: {reason}")]
pub struct ConfigError {
    /// The flag, as typed on the command line.
    pub flag: &'static str,
    /// The flag's environment twin.
    pub env: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong and what is expected instead.
    pub reason: String,
}

/// Configuration read by key, the keys being the environment variables' names.
pub trait Source {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| v.to_string())
    }
}

impl Source for BTreeMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).map(|v| v.to_string())
    }
}

/// Step aside when other processes use more than this share of the
/// host's CPU, unless told otherwise: a volunteer's own work comes first,
/// yet one busy core of a two-core laptop does not stop the agent.
pub const DEFAULT_YIELD_TO_HOST_PERCENT: &str = "50";

/// What the host's owner allows the agent to take.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// At most this many cores; `None` is every core available.
    pub cpus: Option<u32>,
    /// At most this many bytes for tasks; `None` is the host's (or cgroup's) memory.
    pub memory_bytes: Option<u64>,
    /// Keep each worker busy at most this share of the time (1..=100); `None` is 100.
    pub max_cpu_percent: Option<u8>,
    /// Pause tasks while other processes use more than this share of the
    /// host's CPU (1..=100); `None` never pauses.
    pub yield_to_host_percent: Option<u8>,
    /// Test only: upload wrong answers for this fraction of tasks.
    pub corrupt_results: Option<f64>,
    /// Queues to serve; empty serves the default queue.
    pub queues: Vec<String>,
    /// Labels jobs can require.
    pub labels: BTreeMap<String, String>,
    /// Compute only in these windows; `None` is always.
    pub schedule: Option<Schedule>,
    /// Pause while the host runs on battery.
    pub pause_on_battery: bool,
    /// While paused, keep running tasks' leases this long, then give them
    /// back; `None` is [`crate::volunteer::DEFAULT_HOLD_LEASES`].
    pub hold_leases: Option<Duration>,
    /// Keep at most this many bytes of WebAssembly modules; `None` is
    /// [`crate::modules::DEFAULT_CACHE_BYTES`].
    pub module_cache_bytes: Option<u64>,
}

impl Limits {
    /// Parses the limits from `source`, keyed by the environment variables' names.
    pub fn from_source(source: &impl Source) -> Result<Limits, ConfigError> {
        // A variable set empty is not given: compose files pass
        // `${MUSKETEER_CPUS:-}` through, and images set defaults empty.
        let source = NonEmpty(source);
        let mut limits = Limits::default();
        if let Some(v) = source.get(CPUS) {
            limits.cpus = Some(parse_cpus(&v).map_err(|r| err("--cpus", CPUS, &v, r))?);
        }
        if let Some(v) = source.get(MEMORY) {
            limits.memory_bytes = Some(parse_size(&v).map_err(|r| err("--memory", MEMORY, &v, r))?);
        }
        if let Some(v) = source.get(MODULE_CACHE) {
            limits.module_cache_bytes =
                Some(parse_size(&v).map_err(|r| err("--module-cache", MODULE_CACHE, &v, r))?);
        }
        if let Some(v) = source.get(MAX_CPU_PERCENT) {
            limits.max_cpu_percent = Some(
                parse_percent(&v).map_err(|r| err("--max-cpu-percent", MAX_CPU_PERCENT, &v, r))?,
            );
        }
        if let Some(v) = source.get(YIELD_TO_HOST_PERCENT) {
            limits.yield_to_host_percent = parse_yield(&v)
                .map_err(|r| err("--yield-to-host-percent", YIELD_TO_HOST_PERCENT, &v, r))?;
        }
        if let Some(v) = source.get(CORRUPT_RESULTS) {
            limits.corrupt_results = Some(
                crate::corrupt::parse_fraction(&v)
                    .map_err(|r| err("--corrupt-results", CORRUPT_RESULTS, &v, r))?,
            );
        }
        if let Some(v) = source.get(QUEUES) {
            limits.queues = parse_queues(&v).map_err(|r| err("--queues", QUEUES, &v, r))?;
        }
        if let Some(v) = source.get(LABELS) {
            limits.labels = parse_labels(&v).map_err(|r| err("--label", LABELS, &v, r))?;
        }
        if let Some(v) = source.get(SCHEDULE) {
            limits.schedule =
                Some(Schedule::parse(&v).map_err(|r| err("--schedule", SCHEDULE, &v, r))?);
        }
        if let Some(v) = source.get(PAUSE_ON_BATTERY) {
            limits.pause_on_battery =
                parse_bool(&v).map_err(|r| err("--pause-on-battery", PAUSE_ON_BATTERY, &v, r))?;
        }
        if let Some(v) = source.get(HOLD_LEASES) {
            limits.hold_leases = Some(
                parse_duration(&v)
                    .map_err(|r| err("--hold-leases-when-paused", HOLD_LEASES, &v, r))?,
            );
        }
        Ok(limits)
    }
}

/// A [`Source`] that reads empty values as unset.
struct NonEmpty<'a, S>(&'a S);

impl<S: Source> Source for NonEmpty<'_, S> {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|v| !v.trim().is_empty())
    }
}

fn err(flag: &'static str, env: &'static str, value: &str, reason: String) -> ConfigError {
    ConfigError {
        flag,
        env,
        value: value.to_string(),
        reason,
    }
}

/// The limit flags shared by `join`, `run` and `info`, each with its
/// environment twin. Values stay strings here and are parsed by
/// [`Limits::from_source`], so flags and variables go through one parser.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LimitArgs {
    /// Use at most N cores.
    #[arg(long, env = CPUS, value_name = "N")]
    pub cpus: Option<String>,
    /// Use at most this much memory for tasks: 512M, 2G, 1.5GiB (binary units, as Docker).
    #[arg(long, env = MEMORY, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Keep at most this much of WebAssembly modules in the state directory (default 256M).
    #[arg(long, env = MODULE_CACHE, value_name = "SIZE")]
    pub module_cache: Option<String>,
    /// Keep each worker busy at most P percent of the time (1 to 100).
    #[arg(long, env = MAX_CPU_PERCENT, value_name = "P")]
    pub max_cpu_percent: Option<String>,
    /// Pause tasks while other processes use more than P percent of the host's CPU (1 to 100, or off).
    #[arg(long, env = YIELD_TO_HOST_PERCENT, value_name = "P", default_value = DEFAULT_YIELD_TO_HOST_PERCENT)]
    pub yield_to_host_percent: Option<String>,
    /// Test only: upload wrong answers for this fraction of tasks (0 to 1).
    #[arg(long, env = CORRUPT_RESULTS, value_name = "F", hide = true)]
    pub corrupt_results: Option<String>,
    /// Serve these queues (comma-separated); default: the default queue.
    #[arg(long, env = QUEUES, value_name = "A,B")]
    pub queues: Option<String>,
    /// Carry the label k=v, which jobs can require (repeatable; the variable is comma-separated).
    #[arg(long = "label", env = LABELS, value_name = "K=V", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Compute only in these windows of the host's local time, e.g. "mon-fri 18:00-08:00,sat-sun".
    #[arg(long, env = SCHEDULE, value_name = "WINDOWS")]
    pub schedule: Option<String>,
    /// Pause while the host runs on battery (true/false; the flag alone is true).
    #[arg(long, env = PAUSE_ON_BATTERY, value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    pub pause_on_battery: Option<String>,
    /// While paused, keep running tasks' leases this long (e.g. 10m, 1h, 0), then give them back.
    #[arg(long = "hold-leases-when-paused", env = HOLD_LEASES, value_name = "DURATION")]
    pub hold_leases: Option<String>,
}

impl Source for LimitArgs {
    fn get(&self, key: &str) -> Option<String> {
        match key {
            CPUS => self.cpus.clone(),
            MEMORY => self.memory.clone(),
            MODULE_CACHE => self.module_cache.clone(),
            MAX_CPU_PERCENT => self.max_cpu_percent.clone(),
            YIELD_TO_HOST_PERCENT => self.yield_to_host_percent.clone(),
            CORRUPT_RESULTS => self.corrupt_results.clone(),
            QUEUES => self.queues.clone(),
            LABELS if !self.labels.is_empty() => Some(self.labels.join(",")),
            SCHEDULE => self.schedule.clone(),
            PAUSE_ON_BATTERY => self.pause_on_battery.clone(),
            HOLD_LEASES => self.hold_leases.clone(),
            _ => None,
        }
    }
}

/// The self-update flags shared by `join` and `run`.
#[derive(clap::Args, Clone, Debug)]
pub struct UpdateArgs {
    /// Install newer releases the coordinator publishes, once their signature
    /// verifies with the release key learnt at enrolment (true/false).
    #[arg(long, env = AUTO_UPDATE, value_name = "BOOL", default_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub auto_update: bool,
    /// Seconds between looks for a newer release.
    #[arg(long, env = UPDATE_INTERVAL, value_name = "SECONDS", default_value_t = crate::update::DEFAULT_INTERVAL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub update_interval: u64,
}

/// How the agent updates itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// The executable to replace: the path this process was started from.
    pub exe: PathBuf,
    /// Time between looks for a release.
    pub interval: std::time::Duration,
}

/// Everything [`crate::run`] needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Where the credential and the pinned CA are kept (created if missing).
    pub state_dir: PathBuf,
    /// The owner's limits.
    pub limits: Limits,
    /// Join this coordinator (with [`AgentConfig::token`]) unless already
    /// enrolled with it; `None` works with the saved credential.
    pub coordinator: Option<String>,
    /// The join token for [`AgentConfig::coordinator`].
    pub token: Option<String>,
    /// Timings of the work loop; the defaults suit production.
    pub tuning: Tuning,
    /// The `musketeer` binary to start worker processes from; `None` runs
    /// tasks on threads of this process, where limits are weaker (see
    /// [`crate::executor`]). The binary sets it; embedders usually cannot.
    pub worker_exe: Option<PathBuf>,
    /// The version this agent reports (`musketeer --version`).
    pub version: String,
    /// Install signed releases; `None` (the library's default) never does.
    pub update: Option<UpdatePolicy>,
}

impl AgentConfig {
    /// A configuration with no limits that works with what `state_dir` holds.
    pub fn new(state_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            state_dir: state_dir.into(),
            limits: Limits::default(),
            coordinator: None,
            token: None,
            tuning: Tuning::default(),
            worker_exe: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            update: None,
        }
    }

    /// Joins `url` with `token` (or reuses the saved enrolment with it).
    pub fn joining(mut self, url: impl Into<String>, token: impl Into<String>) -> AgentConfig {
        self.coordinator = Some(url.into());
        self.token = Some(token.into());
        self
    }

    /// Applies the owner's limits.
    pub fn with_limits(mut self, limits: Limits) -> AgentConfig {
        self.limits = limits;
        self
    }
}

/// The platform's data directory for "musketeer" (`~/.local/share/musketeer`
/// on Linux), or `./musketeer-state` when there is no home directory.
pub fn default_state_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "musketeer")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(FALLBACK_STATE_DIR))
}

/// Parses a duration: `90s`, `30m`, `1h30m`, `2d`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration: use e.g. 90s, 30m, 1h30m or 2d");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_cpus(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err("expected a whole number of cores, 1 or more".into()),
        Ok(n) => Ok(n),
    }
}

fn parse_percent(s: &str) -> Result<u8, String> {
    match s.trim().trim_end_matches('%').parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err("expected a whole percentage from 1 to 100".into()),
    }
}

fn parse_yield(s: &str) -> Result<Option<u8>, String> {
    match s.trim() {
        "off" | "none" | "never" => Ok(None),
        v => parse_percent(v)
            .map(Some)
            .map_err(|_| "expected a whole percentage from 1 to 100, or off".into()),
    }
}

fn parse_queues(s: &str) -> Result<Vec<String>, String> {
    let mut queues: Vec<String> = Vec::new();
    for q in s.split(',').map(str::trim).filter(|q| !q.is_empty()) {
        if q.len() > MAX_QUEUE_LEN {
            return Err(format!(
                "queue names are at most {MAX_QUEUE_LEN} characters"
            ));
        }
        if !queues.iter().any(|have| have == q) {
            queues.push(q.to_string());
        }
    }
    if queues.is_empty() {
        return Err("expected queue names separated by commas, e.g. default,gpu".into());
    }
    Ok(queues)
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not k=v"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        labels.insert(k.to_string(), v.trim().to_string());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_from_a_map() {
        let env = HashMap::from([
            (CPUS, "2"),
            (MEMORY, "1.5G"),
            (MAX_CPU_PERCENT, "50%"),
            (YIELD_TO_HOST_PERCENT, "30"),
            (CORRUPT_RESULTS, "0.5"),
            (QUEUES, "gpu, default,gpu"),
            (LABELS, "zone=eu, arch = arm"),
            (SCHEDULE, "mon-fri 18:00-08:00,sat-sun"),
            (PAUSE_ON_BATTERY, "yes"),
            (HOLD_LEASES, "1h30m"),
            (MODULE_CACHE, "64M"),
            ("UNRELATED", "x"),
        ]);
        let limits = Limits::from_source(&env).unwrap();
        assert_eq!(
            limits,
            Limits {
                cpus: Some(2),
                memory_bytes: Some(3 << 29),
                max_cpu_percent: Some(50),
                yield_to_host_percent: Some(30),
                corrupt_results: Some(0.5),
                queues: vec!["gpu".into(), "default".into()],
                labels: BTreeMap::from([
                    ("zone".into(), "eu".into()),
                    ("arch".into(), "arm".into())
                ]),
                schedule: Some(Schedule::parse("mon-fri 18:00-08:00,sat-sun").unwrap()),
                pause_on_battery: true,
                hold_leases: Some(Duration::from_secs(5400)),
                module_cache_bytes: Some(64 << 20),
            }
        );
        assert_eq!(
            Limits::from_source(&HashMap::new()).unwrap(),
            Limits::default()
        );
        let empty = HashMap::from([
            (CPUS, ""),
            (MEMORY, " "),
            (SCHEDULE, ""),
            (PAUSE_ON_BATTERY, ""),
        ]);
        assert_eq!(Limits::from_source(&empty).unwrap(), Limits::default());
    }

    #[test]
    fn bad_limits_name_the_flag_and_the_variable() {
        let cases = [
            (CPUS, "0", "--cpus"),
            (CPUS, "two", "--cpus"),
            (MEMORY, "lots", "--memory"),
            (MODULE_CACHE, "0", "--module-cache"),
            (MAX_CPU_PERCENT, "0", "--max-cpu-percent"),
            (MAX_CPU_PERCENT, "101", "--max-cpu-percent"),
            (YIELD_TO_HOST_PERCENT, "0", "--yield-to-host-percent"),
            (YIELD_TO_HOST_PERCENT, "lots", "--yield-to-host-percent"),
            (CORRUPT_RESULTS, "2", "--corrupt-results"),
            (QUEUES, " , ", "--queues"),
            (LABELS, "novalue", "--label"),
            (LABELS, "=v", "--label"),
            (SCHEDULE, "nightly", "--schedule"),
            (PAUSE_ON_BATTERY, "maybe", "--pause-on-battery"),
            (HOLD_LEASES, "10 minutes", "--hold-leases-when-paused"),
        ];
        for (key, value, flag) in cases {
            let e = Limits::from_source(&HashMap::from([(key, value)])).unwrap_err();
            assert_eq!((e.flag, e.env), (flag, key), "{key}={value}");
            let text = e.to_string();
            assert!(text.contains(flag) && text.contains(key), "{text}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "m", "1h30", "5x", "-1s", "99999999999999999999d"] {
            assert!(
                parse_duration(bad).unwrap_err().contains("duration"),
                "{bad}"
            );
        }
    }

    #[test]
    fn flags_feed_the_same_parser() {
        let args = LimitArgs {
            cpus: Some("3".into()),
            labels: vec!["a=1".into(), "b=2".into()],
            ..LimitArgs::default()
        };
        let limits = Limits::from_source(&args).unwrap();
        assert_eq!(limits.cpus, Some(3));
        assert_eq!(limits.labels.len(), 2);
        assert_eq!(limits.queues, Vec::<String>::new());
        let off = LimitArgs {
            yield_to_host_percent: Some("off".into()),
            ..LimitArgs::default()
        };
        assert_eq!(
            Limits::from_source(&off).unwrap().yield_to_host_percent,
            None
        );
    }
}
