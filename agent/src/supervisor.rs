//! The owner's limits on a running agent, decided a hundred times a second:
//! the duty cycle of `--max-cpu-percent`, stepping aside while the host is
//! busy (`--yield-to-host-percent`), task timeouts and the `--memory`
//! backstop. [`DutyBudget`] and [`HostYield`] decide; [`run`] measures
//! (`/proc`) and acts (signals to the worker processes).
//!
//! Both CPU limits suspend the workers with `SIGSTOP` and resume them with
//! `SIGCONT`: a kernel deep in one multiplication of two million-digit
//! numbers stops at once, without any cooperation from it. The agent's own
//! process is never stopped, so heartbeats keep every lease alive while
//! the workers are paused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::process_pool::Shared;
use crate::procfs;
use crate::volunteer::Hold;

/// How often the supervisor measures and decides. Short enough that the
/// duty cycle's bursts are invisible (a worker never runs more than this
/// past its budget), long enough that reading `/proc` costs under a
/// percent of a core.
pub const TICK: Duration = Duration::from_millis(10);
/// The tick while a volunteer's pause holds every worker stopped: nothing
/// runs that needs a 10 ms eye (no CPU, no memory growth, timeouts held),
/// and a paused agent should cost its owner nothing; a resume still acts
/// within a tenth of a second.
const HELD_TICK: Duration = Duration::from_millis(100);
/// How much unused CPU time the duty cycle may save up, per allowed core:
/// an agent idle for a minute must not then run flat out for half of one.
const BURST_PER_CPU: Duration = Duration::from_millis(20);
/// Host load is judged over windows this long: shorter and a compiler's
/// start-up flickers the agent, longer and it steps aside late.
const HOST_WINDOW: Duration = Duration::from_secs(1);
/// Quiet windows in a row before paused workers resume.
const QUIET_WINDOWS_TO_RESUME: u32 = 2;

/// `--max-cpu-percent` as a budget of CPU time: it grows with the wall clock
/// at `percent` of each allowed core and shrinks with the CPU time the agent
/// (its own process and its workers) uses. The workers run while it is
/// positive. Over any stretch of busy work the agent's CPU use is therefore
/// `percent × cpus / 100` cores, whatever the size of its tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct DutyBudget {
    /// Cores' worth of CPU time allowed per second of wall time.
    share: f64,
    /// Seconds of CPU time in hand (negative: overspent).
    credit: f64,
    /// The most credit that can be saved up.
    burst: f64,
}

impl DutyBudget {
    /// A budget for `percent` of each of `cpus` cores; `None` when there is
    /// nothing to limit (no percentage, or 100).
    pub fn new(percent: Option<u8>, cpus: u32) -> Option<DutyBudget> {
        let percent = percent.filter(|&p| (1..100).contains(&p))?;
        let cpus = f64::from(cpus.max(1));
        Some(DutyBudget {
            share: f64::from(percent) / 100.0 * cpus,
            credit: 0.0,
            burst: BURST_PER_CPU.as_secs_f64() * cpus,
        })
    }

    /// Accounts for `wall` time passed in which the agent used `cpu`;
    /// returns whether the workers may run now.
    pub fn update(&mut self, wall: Duration, cpu: Duration) -> bool {
        self.credit += wall.as_secs_f64() * self.share - cpu.as_secs_f64();
        self.credit = self.credit.min(self.burst);
        self.credit > 0.0
    }
}

/// What [`HostYield`] decided after a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HostChange {
    /// Other processes got busy: pause the workers.
    Pause,
    /// They have been quiet long enough: resume.
    Resume,
}

/// Steps aside while other processes keep the host busy: pauses the workers
/// after one window in which others used more than `threshold` of the
/// host's CPU, resumes after [`QUIET_WINDOWS_TO_RESUME`] quiet ones.
#[derive(Clone, Debug, PartialEq)]
pub struct HostYield {
    /// Share of the host's whole CPU (all cores) others may use (0..1).
    threshold: f64,
    paused: bool,
    quiet: u32,
}

impl HostYield {
    /// Steps aside when others use more than `percent` of the host; `None`
    /// when stepping aside is off.
    pub fn new(percent: Option<u8>) -> Option<HostYield> {
        let percent = percent.filter(|&p| (1..=100).contains(&p))?;
        Some(HostYield {
            threshold: f64::from(percent) / 100.0,
            paused: false,
            quiet: 0,
        })
    }

    /// Whether the workers are paused for the host.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Takes one window's measure: others' share of the host's CPU.
    pub fn observe(&mut self, others: f64) -> Option<HostChange> {
        if others > self.threshold {
            self.quiet = 0;
            if !self.paused {
                self.paused = true;
                return Some(HostChange::Pause);
            }
        } else if self.paused {
            self.quiet += 1;
            if self.quiet >= QUIET_WINDOWS_TO_RESUME {
                self.paused = false;
                self.quiet = 0;
                return Some(HostChange::Resume);
            }
        }
        None
    }
}

/// The limits the supervisor applies.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The whole agent (its process and its workers) stays under this many bytes.
    pub memory_limit: u64,
    /// `--max-cpu-percent` with the number of workers.
    pub duty: Option<DutyBudget>,
    /// `--yield-to-host-percent`.
    pub host: Option<HostYield>,
    /// The volunteer's controls ([`crate::volunteer`]): workers stay
    /// stopped while this holds a [`Hold`].
    pub hold: Option<watch::Receiver<Option<Hold>>>,
}

/// The agent's own CPU time (every thread), from `getrusage`.
fn own_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or_default()
}

/// Where the host window started.
struct Window {
    at: Instant,
    host_busy: Duration,
    agent_cpu: Duration,
}

/// Supervises the workers in `shared` until the pool closes.
pub fn run(shared: Arc<Mutex<Shared>>, mut policy: Policy) {
    let mut last = Instant::now();
    let mut own_last = own_cpu();
    // CPU time of the whole agent since start, for the host windows.
    let mut agent_cpu = Duration::ZERO;
    let mut window = procfs::host_cpu().map(|h| Window {
        at: last,
        host_busy: h.busy,
        agent_cpu,
    });
    let mut tick = TICK;
    loop {
        std::thread::sleep(tick);
        let now = Instant::now();
        let wall = now - last;
        last = now;
        let own = own_cpu();
        let mut used = own.saturating_sub(own_last);
        own_last = own;
        let parent_rss = procfs::own_rss().unwrap_or(0);

        let mut shared = match shared.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        if shared.closed {
            return;
        }
        shared.parent_rss = parent_rss;
        used += std::mem::take(&mut shared.retired_cpu);
        for slot in shared.slots.iter_mut() {
            let Some(pid) = slot.pid else {
                slot.rss = 0;
                continue;
            };
            if let Some(cpu) = procfs::process_cpu(pid) {
                used += cpu.saturating_sub(slot.last_cpu);
                slot.last_cpu = cpu;
            }
            if let Some(rss) = procfs::process_rss(pid) {
                slot.rss = rss;
                if slot.task.is_none() {
                    slot.idle_rss = rss;
                }
            }
        }
        agent_cpu += used;

        let run_duty = policy.duty.as_mut().is_none_or(|d| d.update(wall, used));
        if let (Some(host), Some(w)) = (policy.host.as_mut(), window.as_mut()) {
            if now - w.at >= HOST_WINDOW {
                if let Some(h) = procfs::host_cpu() {
                    let span = (now - w.at).as_secs_f64() * f64::from(h.cores);
                    let busy = h.busy.saturating_sub(w.host_busy);
                    let ours = agent_cpu.saturating_sub(w.agent_cpu);
                    let others = busy.saturating_sub(ours).as_secs_f64() / span;
                    match host.observe(others) {
                        Some(HostChange::Pause) => tracing::info!(
                            "the host is busy (other processes use {:.0}% of its CPU): pausing tasks",
                            others * 100.0
                        ),
                        Some(HostChange::Resume) => {
                            tracing::info!("the host is quiet again: resuming tasks")
                        }
                        None => {}
                    }
                    *w = Window {
                        at: now,
                        host_busy: h.busy,
                        agent_cpu,
                    };
                }
            }
        }
        let held = policy.hold.as_ref().is_some_and(|h| h.borrow().is_some());
        let suspend = held || !run_duty || policy.host.as_ref().is_some_and(HostYield::paused);
        shared.suspend_all(suspend);
        if held {
            // A volunteer's pause may last an hour: it must not count
            // against a task's timeout, as a short CPU-limit pause does.
            shared.postpone_timeouts(wall);
        }
        shared.enforce_timeouts(now);
        shared.enforce_memory(policy.memory_limit);
        tick = if held { HELD_TICK } else { TICK };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a budget against work that uses every bit of CPU it is allowed,
    /// tick by tick, and returns the share of the time it ran.
    fn simulate(budget: &mut DutyBudget, cpus: u32, ticks: u32) -> f64 {
        let mut ran = 0;
        let mut running = true;
        for _ in 0..ticks {
            let cpu = if running { TICK * cpus } else { Duration::ZERO };
            if running {
                ran += 1;
            }
            running = budget.update(TICK, cpu);
        }
        f64::from(ran) / f64::from(ticks)
    }

    #[test]
    fn the_duty_budget_holds_the_percentage() {
        for (percent, cpus) in [(50, 1), (50, 4), (25, 2), (80, 1), (10, 3)] {
            let mut b = DutyBudget::new(Some(percent), cpus).unwrap();
            let share = simulate(&mut b, cpus, 1000);
            assert!(
                (share - f64::from(percent) / 100.0).abs() < 0.02,
                "{percent}% of {cpus}: ran {share}"
            );
        }
        assert!(DutyBudget::new(None, 2).is_none());
        assert!(DutyBudget::new(Some(100), 2).is_none());
    }

    #[test]
    fn an_idle_spell_saves_up_only_a_short_burst() {
        let mut b = DutyBudget::new(Some(50), 1).unwrap();
        for _ in 0..6000 {
            assert!(b.update(TICK, Duration::ZERO));
        }
        // A minute idle, then flat out: it runs for about the burst only.
        let mut ran = 0;
        while b.update(TICK, TICK) {
            ran += 1;
        }
        assert!(ran <= 5, "ran {ran} ticks after idling");
    }

    #[test]
    fn stepping_aside_pauses_at_once_and_resumes_after_quiet() {
        let mut h = HostYield::new(Some(50)).unwrap();
        assert_eq!(h.observe(0.3), None);
        assert_eq!(h.observe(0.7), Some(HostChange::Pause));
        assert!(h.paused());
        assert_eq!(h.observe(0.9), None);
        assert_eq!(h.observe(0.1), None);
        assert_eq!(h.observe(0.8), None, "a busy window restarts the count");
        assert_eq!(h.observe(0.1), None);
        assert_eq!(h.observe(0.2), Some(HostChange::Resume));
        assert!(!h.paused());
        assert!(HostYield::new(None).is_none());
    }
}
