//! Why a job waits: its waiting tasks set against the agents that could run
//! them. `GET /v1/jobs/{id}/why`, `jobs why ID` and the dashboard's queues
//! page all show this one explanation.
//!
//! The reasons are what leasing would find, read from the store (the job's
//! [`Backlog`]) and the agent list, matched by the rules of
//! [`super::matching`]: no agent online, none serving the queue, a label or
//! architecture no online agent carries, tasks larger than any agent's
//! memory, higher-priority work first, retries waiting out their backoff.
//! When nothing blocks the job, it waits for a free agent and says so.

use musketeer_tasks::job::{AGENT_LABEL, ARCH_LABEL};
use serde::Serialize;

use super::matching::{agent_labels, serves_queue};
use crate::store::{AgentRecord, AgentState, Backlog, JobState, JobStatus};

/// An agent counts as online if it called within this long: an idle agent
/// renews its long poll at least every 25 s (`MAX_LEASE_WAIT`), a busy one
/// heartbeats more often, so a minute of silence means it is gone.
pub const ONLINE_WINDOW_MS: u64 = 60_000;

/// A job's answer to "why does it wait?".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Why {
    /// The job's id.
    pub id: String,
    /// Its lifecycle state.
    pub state: JobState,
    /// Tasks (replicas) not yet leased: leasable now or after a backoff.
    pub waiting: u64,
    /// Tasks leased now.
    pub leased: u64,
    /// Online agents that could take its tasks (queue, labels, memory).
    pub eligible_agents: u64,
    /// Why the waiting tasks wait, the blocking reasons first; empty when
    /// nothing waits.
    pub reasons: Vec<Reason>,
}

/// One reason a job waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reason {
    /// Stable and machine-readable: `no_agent`, `no_queue`,
    /// `missing_label`, `missing_arch`, `missing_agent`, `labels_apart`,
    /// `memory`, `behind_priority`, `retry_backoff`, `busy`.
    pub code: String,
    /// For a person, e.g. "no active agent carries label gpu=yes".
    pub message: String,
}

fn reason(code: &str, message: String) -> Reason {
    Reason {
        code: code.to_string(),
        message,
    }
}

/// Bytes for a person: "8 GiB", "1.5 GiB", "512 MiB", "100 B".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if (value - value.round()).abs() < 0.05 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A time of day in UTC, to the second: "14:03:07 UTC".
fn clock_time(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// Whether an agent carries label `k=v`, reserved labels included.
fn carries(a: &AgentRecord, k: &str, v: &str) -> bool {
    agent_labels(&a.id, &a.capacity).get(k).map(String::as_str) == Some(v)
}

/// Why `job`, with `backlog` waiting, waits, given every agent at `now_ms`.
pub fn explain(job: &JobStatus, backlog: &Backlog, agents: &[AgentRecord], now_ms: u64) -> Why {
    let waiting = backlog.leasable + backlog.retrying;
    let mut why = Why {
        id: job.id.clone(),
        state: job.state,
        waiting,
        leased: backlog.leased,
        eligible_agents: 0,
        reasons: Vec::new(),
    };
    if job.state.is_finished() || waiting == 0 {
        return why;
    }
    let reasons = &mut why.reasons;
    let online: Vec<&AgentRecord> = agents
        .iter()
        .filter(|a| {
            a.state == AgentState::Active
                && now_ms.saturating_sub(a.last_seen_ms) <= ONLINE_WINDOW_MS
        })
        .collect();
    let serving: Vec<&AgentRecord> = online
        .iter()
        .copied()
        .filter(|a| serves_queue(&a.capacity, &backlog.queue))
        .collect();
    let matching: Vec<&AgentRecord> = serving
        .iter()
        .copied()
        .filter(|a| backlog.labels.iter().all(|(k, v)| carries(a, k, v)))
        .collect();
    if online.is_empty() {
        reasons.push(reason(
            "no_agent",
            "no agent is active: join one with `musketeer join URL --token TOKEN`".into(),
        ));
    } else if serving.is_empty() {
        reasons.push(reason(
            "no_queue",
            format!(
                "no active agent serves queue {}: start agents with --queues {}",
                backlog.queue, backlog.queue
            ),
        ));
    } else {
        let mut missing = false;
        for (k, v) in &backlog.labels {
            if serving.iter().any(|a| carries(a, k, v)) {
                continue;
            }
            missing = true;
            reasons.push(match k.as_str() {
                ARCH_LABEL => reason(
                    "missing_arch",
                    format!("wants arch {v}, no active agent has it"),
                ),
                AGENT_LABEL => reason(
                    "missing_agent",
                    format!("wants agent {v}, which is not an active agent"),
                ),
                _ => reason(
                    "missing_label",
                    format!("no active agent carries label {k}={v}"),
                ),
            });
        }
        if !missing && matching.is_empty() {
            let all: Vec<String> = backlog
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            reasons.push(reason(
                "labels_apart",
                format!("no single active agent carries all of {}", all.join(", ")),
            ));
        }
        // Memory among the agents that match, or, when none does, among
        // those of the queue: a job can lack a label and be too big too.
        let pool = if matching.is_empty() {
            &serving
        } else {
            &matching
        };
        let largest = pool
            .iter()
            .map(|a| a.capacity.memory_bytes)
            .max()
            .unwrap_or(0);
        if backlog.mem_min > largest {
            reasons.push(reason(
                "memory",
                format!(
                    "needs {}, the largest active agent offers {}",
                    human_bytes(backlog.mem_min),
                    human_bytes(largest)
                ),
            ));
        } else if backlog.mem_max > largest {
            reasons.push(reason(
                "memory",
                format!(
                    "some tasks need up to {}, the largest active agent offers {}",
                    human_bytes(backlog.mem_max),
                    human_bytes(largest)
                ),
            ));
        }
        why.eligible_agents = matching
            .iter()
            .filter(|a| a.capacity.memory_bytes >= backlog.mem_min)
            .count() as u64;
    }
    let blocked = !reasons.is_empty();
    if !blocked && backlog.ahead > 0 {
        reasons.push(reason(
            "behind_priority",
            format!("queued behind {} tasks of higher priority", backlog.ahead),
        ));
    }
    // Issue 12's delays (`countdown_s`, `not_before`) belong here, as
    // `not_before` with "not before HH:MM": a time gate, like the backoff.
    if backlog.retrying > 0 {
        let until = backlog
            .retry_at_ms
            .map(|t| format!(" until {}", clock_time(t)))
            .unwrap_or_default();
        reasons.push(reason(
            "retry_backoff",
            format!(
                "{} failed tasks wait out their retry backoff{until}",
                backlog.retrying
            ),
        ));
    }
    if !blocked && backlog.ahead == 0 && backlog.leasable > 0 {
        let held: u64 = matching.iter().map(|a| a.leased).sum();
        reasons.push(reason(
            "busy",
            format!(
                "waiting for a free agent: {} can run it, and they hold {held} tasks",
                why.eligible_agents
            ),
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use musketeer_tasks::protocol::Capacity;

    use super::*;
    use crate::store::{Progress, Trust};

    const NOW: u64 = 10_000_000;

    fn agent(id: &str, memory_bytes: u64, labels: &[(&str, &str)]) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            capacity: Capacity {
                cpus: 2,
                memory_bytes,
                arch: "x86_64".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Capacity::default()
            },
            state: AgentState::Active,
            token_id: "t".into(),
            enrolled_ms: 0,
            last_seen_ms: NOW - 1000,
            leased: 3,
            tasks_done: 0,
            cpu_ms: 0,
            results_valid: 0,
            results_invalid: 0,
            trust: Trust::New,
        }
    }

    fn queued() -> JobStatus {
        JobStatus {
            id: "j".into(),
            kernel: "matmul".into(),
            state: JobState::Queued,
            queue: "default".into(),
            priority: 5,
            progress: Progress::default(),
            error: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            not_before_ms: None,
            expires_ms: None,
            result_expires_ms: None,
            workflow: None,
            schedule: None,
        }
    }

    fn backlog(labels: &[(&str, &str)], mem: u64) -> Backlog {
        Backlog {
            queue: "default".into(),
            priority: 5,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            leasable: 4,
            mem_min: mem,
            mem_max: mem,
            ..Backlog::default()
        }
    }

    fn messages(why: &Why) -> Vec<&str> {
        why.reasons.iter().map(|r| r.message.as_str()).collect()
    }

    #[test]
    fn every_blocking_reason_is_named() {
        let small = agent("a", 4 << 30, &[("gpu", "no")]);
        let job = queued();
        let why = explain(
            &job,
            &backlog(&[("gpu", "yes")], 1),
            std::slice::from_ref(&small),
            NOW,
        );
        assert_eq!(messages(&why), ["no active agent carries label gpu=yes"]);
        assert_eq!(why.eligible_agents, 0);

        let why = explain(
            &job,
            &backlog(&[], 8 << 30),
            std::slice::from_ref(&small),
            NOW,
        );
        assert_eq!(
            messages(&why),
            ["needs 8 GiB, the largest active agent offers 4 GiB"]
        );

        let arch = backlog(&[(ARCH_LABEL, "aarch64")], 1);
        let why = explain(&job, &arch, std::slice::from_ref(&small), NOW);
        assert_eq!(
            messages(&why),
            ["wants arch aarch64, no active agent has it"]
        );
        assert_eq!(why.reasons[0].code, "missing_arch");

        // An agent silent for longer than the window is not online.
        let mut gone = small.clone();
        gone.last_seen_ms = NOW - ONLINE_WINDOW_MS - 1;
        let why = explain(&job, &backlog(&[], 1), &[gone], NOW);
        assert_eq!(why.reasons[0].code, "no_agent");
        let why = explain(&job, &backlog(&[], 1), &[], NOW);
        assert!(why.reasons[0].message.starts_with("no agent is active"));

        let mut video = backlog(&[], 1);
        video.queue = "video".into();
        let why = explain(&job, &video, std::slice::from_ref(&small), NOW);
        assert_eq!(why.reasons[0].code, "no_queue");

        // Each label somewhere, both nowhere on one agent.
        let gpu = agent("g", 4 << 30, &[("gpu", "yes")]);
        let ssd = agent("s", 4 << 30, &[("disk", "ssd")]);
        let both = backlog(&[("gpu", "yes"), ("disk", "ssd")], 1);
        let why = explain(&job, &both, &[gpu, ssd], NOW);
        assert_eq!(
            messages(&why),
            ["no single active agent carries all of disk=ssd, gpu=yes"]
        );
    }

    #[test]
    fn an_unblocked_job_waits_for_priority_or_a_free_agent() {
        let a = agent("a", 4 << 30, &[]);
        let job = queued();
        let mut b = backlog(&[], 1);
        b.ahead = 12;
        let why = explain(&job, &b, std::slice::from_ref(&a), NOW);
        assert_eq!(
            messages(&why),
            ["queued behind 12 tasks of higher priority"]
        );
        assert_eq!(why.eligible_agents, 1);
        b.ahead = 0;
        let why = explain(&job, &b, std::slice::from_ref(&a), NOW);
        assert_eq!(
            messages(&why),
            ["waiting for a free agent: 1 can run it, and they hold 3 tasks"]
        );
        // Retries name the time their backoff ends.
        b.leasable = 0;
        b.retrying = 2;
        b.retry_at_ms = Some(12 * 3_600_000 + 30_000);
        let why = explain(&job, &b, std::slice::from_ref(&a), NOW);
        assert_eq!(
            messages(&why),
            ["2 failed tasks wait out their retry backoff until 12:00:30 UTC"]
        );
        // A finished job, or one with nothing waiting, waits for nothing.
        let mut done = queued();
        done.state = JobState::Succeeded;
        assert!(explain(&done, &backlog(&[("x", "y")], 1), &[], NOW)
            .reasons
            .is_empty());
        let mut running = backlog(&[], 1);
        running.leasable = 0;
        running.leased = 4;
        let why = explain(&job, &running, &[], NOW);
        assert!(why.reasons.is_empty());
        assert_eq!((why.waiting, why.leased), (0, 4));
    }

    #[test]
    fn sizes_read_like_a_person_wrote_them() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
