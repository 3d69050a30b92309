//! Worker processes (see [`crate::worker`]), one per allowed core, each
//! driven by a thread of the agent that hands it a task, waits for the
//! answer, and starts a new worker when the old one was stopped.
//!
//! What the pool and the [`crate::supervisor`] share is one [`Shared`]
//! under a mutex: each slot's worker pid, task, memory and pause state.
//! A pid is removed from it *before* its process is reaped, so no signal
//! the supervisor sends can reach a recycled pid.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use musketeer_tasks::protocol::{LeasedTask, TaskOutcome};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedSender;

use crate::executor::{kernel_of, module_for, Finished};
use crate::memory_cap::EXIT_OVER_MEMORY;
use crate::modules::Modules;
use crate::supervisor::{self, Policy};
use crate::worker;

/// Kept free beside a task's cap for what the allocator itself holds
/// (fragmentation, metadata), which the cap does not count.
const CAP_MARGIN: u64 = 2 << 20;
/// A worker that still holds this much more than when idle after a task
/// is replaced, so that the memory goes back to the host instead of
/// sitting in a freed-but-kept heap until the next big task.
const RESPAWN_SLACK: u64 = 16 << 20;
/// After a worker fails to start, wait this long before the next try.
const SPAWN_RETRY: Duration = Duration::from_millis(500);

/// Memory in whole MiB, as limits are shown to people.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", (bytes + (1 << 19)) >> 20)
}

/// A duration as a person reads a timeout: "2 s", "1.5 s", "300 ms".
pub fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d.as_secs() > 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// What a pool needs to start its workers and hold them to the limits.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The `musketeer` binary (usually `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Workers: one per allowed core.
    pub workers: usize,
    /// The limits the supervisor applies.
    pub policy: Policy,
}

/// The task a worker is on.
#[derive(Debug)]
pub(crate) struct SlotTask {
    started: Instant,
    timeout: Option<Duration>,
    mem_estimate: u64,
}

/// One worker's state, as the slot thread and the supervisor see it.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The live worker process, if any.
    pub(crate) pid: Option<u32>,
    /// Whether it has been sent `SIGSTOP` (and no `SIGCONT` since).
    stopped: bool,
    /// Its CPU time at the last tick.
    pub(crate) last_cpu: Duration,
    /// Its resident memory at the last tick.
    pub(crate) rss: u64,
    /// Its resident memory when last seen without a task.
    pub(crate) idle_rss: u64,
    /// The task it runs.
    pub(crate) task: Option<SlotTask>,
    /// Why the supervisor ended it, for the task's report.
    kill_reason: Option<String>,
}

/// Everything the slot threads and the supervisor share.
#[derive(Debug, Default)]
pub struct Shared {
    pub(crate) slots: Vec<Slot>,
    /// The agent's own resident memory at the last tick.
    pub(crate) parent_rss: u64,
    /// The pool is gone: the supervisor stops.
    pub(crate) closed: bool,
    /// CPU time of workers retired since the supervisor last looked, which
    /// its samples of their pids would otherwise miss.
    pub(crate) retired_cpu: Duration,
    memory_limit: u64,
}

impl Shared {
    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) every worker.
    pub(crate) fn suspend_all(&mut self, suspend: bool) {
        for slot in &mut self.slots {
            if let Some(pid) = slot.pid {
                if slot.stopped != suspend {
                    let signal = if suspend {
                        Signal::SIGSTOP
                    } else {
                        Signal::SIGCONT
                    };
                    let _ = kill(Pid::from_raw(pid as i32), signal);
                    slot.stopped = suspend;
                }
            }
        }
    }

    /// Moves every running task's start `by` later, so that time spent
    /// paused does not count towards its timeout.
    pub(crate) fn postpone_timeouts(&mut self, by: Duration) {
        for task in self.slots.iter_mut().filter_map(|s| s.task.as_mut()) {
            task.started += by;
        }
    }

    /// Ends the workers whose task has run past its timeout.
    pub(crate) fn enforce_timeouts(&mut self, now: Instant) {
        for slot in &mut self.slots {
            let Some(task) = &slot.task else { continue };
            let Some(timeout) = task.timeout else {
                continue;
            };
            if now.saturating_duration_since(task.started) > timeout && slot.kill_reason.is_none() {
                slot.end(format!("ran past its timeout of {}", seconds(timeout)));
            }
        }
    }

    /// If the agent as a whole (its process and its workers) is over the
    /// limit, ends the worker holding the most memory. The workers' own caps
    /// make this rare; it catches what they cannot see (the agent's own
    /// growth, several workers growing at once).
    pub(crate) fn enforce_memory(&mut self, limit: u64) {
        let total = self.parent_rss + self.slots.iter().map(|s| s.rss).sum::<u64>();
        // One at a time: a worker just ended still shows its memory until
        // its slot thread has reaped it.
        if total <= limit || self.slots.iter().any(|s| s.kill_reason.is_some()) {
            return;
        }
        let largest = self
            .slots
            .iter_mut()
            .filter(|s| s.task.is_some() && s.kill_reason.is_none())
            .max_by_key(|s| s.rss);
        if let Some(slot) = largest {
            slot.end(format!(
                "exceeded the agent's memory limit of {} (the agent's processes reached {})",
                mib(limit),
                mib(total)
            ));
        }
    }

    /// The heap cap for a task starting in slot `i`: the limit less the
    /// agent's own memory, the other workers' (at least their tasks'
    /// estimates, which they were promised), this worker's idle size and a
    /// margin.
    fn cap_for(&self, i: usize) -> u64 {
        let others: u64 = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, s)| {
                s.rss
                    .max(s.task.as_ref().map_or(0, |t| s.idle_rss + t.mem_estimate))
            })
            .sum();
        self.memory_limit
            .saturating_sub(self.parent_rss)
            .saturating_sub(others)
            .saturating_sub(self.slots[i].idle_rss)
            .saturating_sub(CAP_MARGIN)
    }
}

impl Slot {
    /// Ends the worker (the slot thread sees it gone and reports `reason`).
    fn end(&mut self, reason: String) {
        if let Some(pid) = self.pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            self.kill_reason = Some(reason);
        }
    }
}

/// A live worker process and its pipes.
struct WorkerProcess {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// The worker processes, their slot threads and the supervisor.
pub struct ProcessPool {
    shared: Arc<Mutex<Shared>>,
    threads: Vec<JoinHandle<()>>,
}

impl ProcessPool {
    /// Starts the slot threads and the supervisor; workers start with their
    /// first task. Tasks come from `queue`; each result goes to `done`.
    /// wasm tasks' modules come from `modules`.
    pub fn start(
        config: PoolConfig,
        queue: Arc<Mutex<mpsc::Receiver<LeasedTask>>>,
        done: UnboundedSender<Finished>,
        modules: Arc<Modules>,
    ) -> ProcessPool {
        let shared = Arc::new(Mutex::new(Shared {
            slots: (0..config.workers).map(|_| Slot::default()).collect(),
            memory_limit: config.policy.memory_limit,
            ..Shared::default()
        }));
        let mut threads = Vec::new();
        for i in 0..config.workers {
            let (shared, queue, done, exe, modules) = (
                shared.clone(),
                queue.clone(),
                done.clone(),
                config.exe.clone(),
                modules.clone(),
            );
            threads.push(
                thread::Builder::new()
                    .name(format!("musketeer-slot-{i}"))
                    .spawn(move || slot_loop(i, &exe, &shared, &queue, &done, &modules))
                    .expect("cannot start a slot thread"),
            );
        }
        let (s, policy) = (shared.clone(), config.policy);
        thread::Builder::new()
            .name("musketeer-supervisor".into())
            .spawn(move || supervisor::run(s, policy))
            .expect("cannot start the supervisor thread");
        ProcessPool { shared, threads }
    }

    /// Ends every worker and waits for the slot threads (whose queue must
    /// already be closed), so that every worker has been reaped.
    pub fn shut_down(&mut self) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.closed = true;
            for slot in &mut shared.slots {
                slot.end("the agent is stopping".into());
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain data behind: keep going.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// An emulator to start worker processes with (`qemu-aarch64-static`, say):
/// an agent run under user-mode emulation without binfmt_misc cannot exec
/// its own foreign binary, so its workers must be started the same way.
pub const WORKER_LAUNCHER: &str = "MUSKETEER_WORKER_LAUNCHER";

fn spawn_worker(exe: &PathBuf) -> std::io::Result<WorkerProcess> {
    use std::os::unix::process::CommandExt;
    let mut command = match std::env::var_os(WORKER_LAUNCHER).filter(|l| !l.is_empty()) {
        Some(launcher) => {
            let mut c = Command::new(launcher);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = command
        .arg(worker::SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group: a Ctrl-C in the terminal goes to the
        // agent, which stops cleanly, and not straight to the workers.
        .process_group(0)
        .spawn()?;
    let stdin = BufWriter::new(child.stdin.take().expect("piped"));
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    Ok(WorkerProcess {
        child,
        stdin,
        stdout,
    })
}

/// Why a worker that did not answer is gone.
fn exit_reason(status: std::io::Result<ExitStatus>, cap: u64, limit: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) if s.code() == Some(EXIT_OVER_MEMORY) => format!(
            "exceeded the agent's memory limit of {}: it needed more than the {} left for it",
            mib(limit),
            mib(cap)
        ),
        Ok(s) if s.code() == Some(worker::EXIT_PANICKED) => {
            "the worker process running it panicked (the agent's log has the message)".into()
        }
        Ok(s) => match s.signal() {
            Some(sig) => format!("the worker process running it died of signal {sig}"),
            None => format!("the worker process running it exited with {s}"),
        },
        Err(e) => format!("the worker process running it was lost: {e}"),
    }
}

fn slot_loop(
    i: usize,
    exe: &PathBuf,
    shared: &Mutex<Shared>,
    queue: &Mutex<mpsc::Receiver<LeasedTask>>,
    done: &UnboundedSender<Finished>,
    modules: &Modules,
) {
    let mut worker: Option<WorkerProcess> = None;
    loop {
        // The guard is dropped at the end of the statement, before the task runs.
        let next = queue.lock().map(|q| q.recv());
        let Ok(Ok(task)) = next else { break };
        // A wasm task's module, fetched before its time starts to count.
        let module = match module_for(&task.input, modules) {
            Ok(m) => m,
            Err(why) => {
                let f = finished(&task, Instant::now(), TaskOutcome::Failed(why));
                if done.send(f).is_err() {
                    break;
                }
                continue;
            }
        };
        let started = Instant::now();
        let w = match worker.take() {
            Some(w) => w,
            None => match spawn_worker(exe) {
                Ok(w) => {
                    let mut s = lock(shared);
                    let idle_rss = s.slots[i].idle_rss;
                    s.slots[i] = Slot {
                        pid: Some(w.child.id()),
                        idle_rss,
                        ..Slot::default()
                    };
                    w
                }
                Err(e) => {
                    tracing::error!("cannot start a worker process ({}): {e}", exe.display());
                    let f = finished(
                        &task,
                        started,
                        TaskOutcome::Failed(format!("the agent could not start a worker: {e}")),
                    );
                    if done.send(f).is_err() {
                        break;
                    }
                    thread::sleep(SPAWN_RETRY);
                    continue;
                }
            },
        };
        let mut w = w;
        let (cap, limit) = {
            let mut s = lock(shared);
            let cap = s.cap_for(i);
            s.slots[i].task = Some(SlotTask {
                started,
                timeout: task.timeout_ms.map(Duration::from_millis),
                mem_estimate: task.cost.mem_bytes,
            });
            (cap, s.memory_limit)
        };
        let answer = worker::write_request(&mut w.stdin, cap, &task.input, module.as_deref())
            .and_then(|()| worker::read_reply(&mut w.stdout));
        // Measured now, after the task: what the supervisor last sampled
        // was the task's working set, not what the worker keeps.
        let rss_after = crate::procfs::process_rss(w.child.id()).unwrap_or(0);
        let (reason, keep) = {
            let mut s = lock(shared);
            let slot = &mut s.slots[i];
            slot.task = None;
            let reason = slot.kill_reason.take();
            let bloated = slot.idle_rss > 0 && rss_after > slot.idle_rss + RESPAWN_SLACK;
            slot.rss = rss_after;
            let keep = matches!(&answer, Ok(Some(r)) if !r.exiting) && reason.is_none() && !bloated;
            if let (false, Ok(Some(reply))) = (keep, &answer) {
                let total = Duration::from_nanos(reply.process_cpu_ns);
                let unseen = total.saturating_sub(slot.last_cpu);
                s.retired_cpu += unseen;
            }
            let slot = &mut s.slots[i];
            if !keep {
                // Forget the pid before reaping, so that it cannot be
                // signalled once the kernel may hand it out again.
                slot.pid = None;
            }
            (reason, keep)
        };
        let f = match answer {
            Ok(Some(reply)) if reason.is_none() => Finished {
                task: task.task,
                kernel: kernel_of(&task.input),
                wall: Duration::from_nanos(reply.wall_ns),
                cpu: Duration::from_nanos(reply.cpu_ns),
                pause: Duration::ZERO,
                outcome: reply.outcome,
            },
            _ => {
                let _ = w.child.kill();
                let status = w.child.wait();
                let why = reason.unwrap_or_else(|| exit_reason(status, cap, limit));
                finished(&task, started, TaskOutcome::Failed(why))
            }
        };
        if keep {
            worker = Some(w);
        } else {
            // Gone already (a no-op then), or bloated: retire it.
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        if done.send(f).is_err() {
            break;
        }
    }
    if let Some(mut w) = worker {
        lock(shared).slots[i].pid = None;
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

fn finished(task: &LeasedTask, started: Instant, outcome: TaskOutcome) -> Finished {
    let wall = started.elapsed();
    Finished {
        task: task.task.clone(),
        kernel: kernel_of(&task.input),
        wall,
        cpu: wall,
        pause: Duration::ZERO,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_people_write_them() {
        assert_eq!(mib(64 << 20), "64 MiB");
        assert_eq!(mib((80 << 20) + 1000), "80 MiB");
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_millis(300)), "300 ms");
    }

    #[test]
    fn a_task_gets_what_the_others_and_the_agent_leave() {
        let mut s = Shared {
            slots: vec![Slot::default(), Slot::default()],
            parent_rss: 10 << 20,
            memory_limit: 64 << 20,
            ..Shared::default()
        };
        s.slots[0].idle_rss = 3 << 20;
        s.slots[1].idle_rss = 3 << 20;
        s.slots[1].rss = 3 << 20;
        assert_eq!(s.cap_for(0), (64 - 10 - 3 - 3 - 2) << 20);
        // A running neighbour keeps what its estimate promised it.
        s.slots[1].task = Some(SlotTask {
            started: Instant::now(),
            timeout: None,
            mem_estimate: 20 << 20,
        });
        assert_eq!(s.cap_for(0), (64 - 10 - 23 - 3 - 2) << 20);
        // Or more, if it already holds more.
        s.slots[1].rss = 40 << 20;
        assert_eq!(s.cap_for(0), (64 - 10 - 40 - 3 - 2) << 20);
        s.parent_rss = 100 << 20;
        assert_eq!(s.cap_for(0), 0);
    }

    #[test]
    fn over_the_limit_the_largest_task_is_named() {
        let mut s = Shared {
            slots: vec![Slot::default(), Slot::default()],
            parent_rss: 10 << 20,
            memory_limit: 64 << 20,
            ..Shared::default()
        };
        // No pids: nothing is signalled, but the decision is visible.
        for (slot, rss) in s.slots.iter_mut().zip([20u64 << 20, 40 << 20]) {
            slot.rss = rss;
            slot.task = Some(SlotTask {
                started: Instant::now(),
                timeout: Some(Duration::from_secs(1)),
                mem_estimate: 0,
            });
        }
        s.enforce_memory(64 << 20);
        // Without a pid there is no process to end, so no reason either.
        assert!(s.slots.iter().all(|s| s.kill_reason.is_none()));
        s.slots[1].pid = Some(u32::MAX >> 2); // no such process
        s.enforce_memory(64 << 20);
        assert!(s.slots[0].kill_reason.is_none());
        let why = s.slots[1].kill_reason.clone().unwrap();
        assert!(why.contains("memory limit of 64 MiB"), "{why}");
        assert!(why.contains("reached 70 MiB"), "{why}");
    }
}
