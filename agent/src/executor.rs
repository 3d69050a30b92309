//! Runs tasks and measures them, in one of two ways ([`Isolation`]):
//!
//! - **Processes** (the `musketeer` binary): one worker process per core
//!   ([`crate::process_pool`]), which the agent can kill past a task's
//!   timeout or memory share and pause for the CPU limits
//!   ([`crate::supervisor`]). This is how the owner's limits are enforced.
//! - **Threads** (an agent embedded in another program, such as the
//!   coordinator's `demo`, which has no `musketeer` binary to start): plain
//!   std threads and a duty cycle between tasks. A thread cannot be
//!   stopped, so a task past its timeout is reported failed and abandoned
//!   while it finishes, and `--memory` only shapes what is dispatched.
//!
//! Either way kernels are CPU-bound and never yield, so they never run on
//! the async runtime's threads, which must stay free to talk to the
//! coordinator (heartbeats, uploads, the next lease).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use musketeer_tasks::protocol::{LeasedTask, TaskOutcome, TaskRef};
use musketeer_tasks::TaskInput;
use tokio::sync::mpsc::UnboundedSender;

use crate::modules::{ModuleCache, Modules, DEFAULT_CACHE_BYTES};
use crate::process_pool::{PoolConfig, ProcessPool};

/// Stack of a worker thread: kernels on big numbers recurse (product trees),
/// and the default 2 MiB of a spawned thread is less than a main thread's 8.
const WORKER_STACK: usize = 8 << 20;

/// Limits how much of the time each worker thread computes.
///
/// For now a duty cycle: after each task a worker sleeps in proportion to
/// the time it ran, so that over time it is busy `percent` of the wall
/// clock. Tasks are a few tens of milliseconds each, so the pauses are short
/// enough not to show as bursts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DutyCycle {
    percent: u8,
}

impl DutyCycle {
    /// Busy at most `percent` (1..=100; `None` or out of range is 100) of the time.
    pub fn new(percent: Option<u8>) -> DutyCycle {
        DutyCycle {
            percent: percent.filter(|p| (1..=100).contains(p)).unwrap_or(100),
        }
    }

    /// How long to rest after computing for `busy`.
    pub fn pause_after(&self, busy: Duration) -> Duration {
        let p = u32::from(self.percent);
        busy * (100 - p) / p
    }
}

/// A task that ran, with what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Which task and lease.
    pub task: TaskRef,
    /// The kernel, if the input could be decoded.
    pub kernel: Option<&'static str>,
    /// Wall time the kernel ran.
    pub wall: Duration,
    /// CPU time the worker thread spent on it.
    pub cpu: Duration,
    /// The rest the duty cycle adds after it.
    pub pause: Duration,
    /// The output, or why there is none.
    pub outcome: TaskOutcome,
}

/// Where tasks run.
#[derive(Clone, Debug)]
pub enum Isolation {
    /// On threads of this process, resting between tasks for the duty cycle.
    Threads(DutyCycle),
    /// In worker processes held to the limits by the supervisor.
    Processes(PoolConfig),
}

/// Runs [`LeasedTask`]s on worker threads or processes and sends each
/// [`Finished`] task to the async side.
pub struct Executor {
    /// Dropping it tells the workers to stop once their current task is done.
    work: Option<mpsc::Sender<LeasedTask>>,
    threads: usize,
    /// The worker processes, when tasks run in them.
    pool: Option<ProcessPool>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("threads", &self.threads)
            .field("processes", &self.pool.is_some())
            .finish()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.work.take();
        if let Some(pool) = &mut self.pool {
            pool.shut_down();
        }
    }
}

impl Executor {
    /// Starts `workers` workers, isolated as `isolation` says, that report
    /// to `done` and take wasm tasks' modules from `modules`.
    pub fn with_isolation(
        workers: usize,
        isolation: Isolation,
        done: UnboundedSender<Finished>,
        modules: Arc<Modules>,
    ) -> Executor {
        match isolation {
            Isolation::Threads(duty) => Executor::start_with(workers, duty, done, modules),
            Isolation::Processes(config) => {
                let (work, queue) = mpsc::channel::<LeasedTask>();
                let queue = Arc::new(Mutex::new(queue));
                let config = PoolConfig { workers, ..config };
                let pool = ProcessPool::start(config, queue, done, modules);
                Executor {
                    work: Some(work),
                    threads: workers,
                    pool: Some(pool),
                }
            }
        }
    }

    /// Whether the executor itself stops tasks past their timeout (worker
    /// processes); otherwise the work loop gives up on them.
    pub fn enforces_timeouts(&self) -> bool {
        self.pool.is_some()
    }

    /// Starts `threads` worker threads that report to `done`, with no way
    /// to fetch modules (wasm tasks fail unless their module is cached).
    pub fn start(threads: usize, duty: DutyCycle, done: UnboundedSender<Finished>) -> Executor {
        let modules = Modules::new(ModuleCache::in_memory(DEFAULT_CACHE_BYTES), None);
        Executor::start_with(threads, duty, done, Arc::new(modules))
    }

    /// Starts `threads` worker threads that report to `done` and take wasm
    /// tasks' modules from `modules`.
    pub fn start_with(
        threads: usize,
        duty: DutyCycle,
        done: UnboundedSender<Finished>,
        modules: Arc<Modules>,
    ) -> Executor {
        let (work, queue) = mpsc::channel::<LeasedTask>();
        // One shared receiver: std's is single-consumer, and a task is tens
        // of milliseconds, so the lock is never contended in practice.
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let done = done.clone();
            let modules = modules.clone();
            thread::Builder::new()
                .name(format!("musketeer-worker-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || worker(&queue, &done, duty, &modules))
                .expect("cannot start a worker thread");
        }
        Executor {
            work: Some(work),
            threads,
            pool: None,
        }
    }

    /// Queues `task` for the next free worker.
    pub fn submit(&self, task: LeasedTask) {
        // The workers live as long as the sender, so this cannot fail.
        if let Some(work) = &self.work {
            let _ = work.send(task);
        }
    }

    /// How many worker threads run tasks.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn worker(
    queue: &Mutex<mpsc::Receiver<LeasedTask>>,
    done: &UnboundedSender<Finished>,
    duty: DutyCycle,
    modules: &Modules,
) {
    loop {
        // The guard is dropped at the end of the statement, before the task runs.
        let next = queue.lock().map(|q| q.recv());
        let Ok(Ok(task)) = next else { return };
        let cpu_start = cpu_time::ThreadTime::try_now().ok();
        let start = Instant::now();
        // Threads have no heap cap: a wasm task gets its own memory limit.
        let (kernel, outcome) = match module_for(&task.input, modules) {
            Ok(module) => run_input(&task.input, module.as_deref(), u64::MAX),
            Err(why) => (kernel_of(&task.input), TaskOutcome::Failed(why)),
        };
        let wall = start.elapsed();
        let cpu = cpu_start.and_then(|t| t.try_elapsed().ok()).unwrap_or(wall);
        let pause = duty.pause_after(wall);
        let finished = Finished {
            task: task.task,
            kernel,
            wall,
            cpu,
            pause,
            outcome,
        };
        if done.send(finished).is_err() {
            return; // The work loop is gone.
        }
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
}

/// The module bytes an encoded task needs: `None` for a built-in kernel,
/// or why they cannot be had (the task's failure reason).
pub fn module_for(input: &[u8], modules: &Modules) -> Result<Option<Vec<u8>>, String> {
    match TaskInput::module_of_encoded(input) {
        Some(id) => modules.get(id).map(Some),
        None => Ok(None),
    }
}

/// Decodes and runs one task input (a wasm task with its `module`'s bytes
/// and at most `memory_bytes` of linear memory): the kernel's name (if it
/// decoded) and the encoded output, or why there is none. A panicking
/// kernel is a failed task, not a dead worker.
pub fn run_input(
    input: &[u8],
    module: Option<&[u8]>,
    memory_bytes: u64,
) -> (Option<&'static str>, TaskOutcome) {
    let task = match TaskInput::decode(input) {
        Ok(t) => t,
        Err(e) => return (None, TaskOutcome::Failed(e.to_string())),
    };
    let kernel = Some(task.kernel());
    // Where panics abort (the shipped agents), this catches nothing: the
    // worker's panic hook answers for the task instead, with the same words
    // (`crate::worker`).
    let outcome = match catch_unwind(AssertUnwindSafe(|| {
        inject_panic(task.kernel());
        task.run_with_module(module, memory_bytes)
    })) {
        Ok(Ok(output)) => TaskOutcome::Done(output.encode()),
        Ok(Err(e)) => TaskOutcome::Failed(e.to_string()),
        Err(panic) => TaskOutcome::Failed(panic_failure(task.kernel(), &*panic)),
    };
    (kernel, outcome)
}

/// Why a task failed whose `kernel` panicked with `payload`.
pub fn panic_failure(kernel: &str, payload: &(dyn Any + Send)) -> String {
    let why = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown");
    format!("the {kernel} kernel panicked: {why}")
}

/// The environment variable that makes a kernel panic, to test what a
/// panicking kernel does to an agent as shipped (whose panics abort): no
/// kernel is known to panic, so a test needs one that does. Like
/// `--corrupt-results`, a test aid only.
pub const PANIC_IN_KERNEL_ENV: &str = "MUSKETEER_PANIC_IN_KERNEL";

/// Panics if [`PANIC_IN_KERNEL_ENV`] names `kernel`.
fn inject_panic(kernel: &str) {
    static PANICKING: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    let panicking = PANICKING.get_or_init(|| std::env::var_os(PANIC_IN_KERNEL_ENV));
    if panicking.as_deref().is_some_and(|k| k == kernel) {
        panic!("{PANIC_IN_KERNEL_ENV}={kernel} asked for it");
    }
}

/// The kernel of an encoded task input, read from its first byte without
/// decoding the rest (which may be megabytes of text or matrix), by the
/// kernel registry's tags.
pub fn kernel_of(input: &[u8]) -> Option<&'static str> {
    musketeer_tasks::Kernel::of_encoded(input).map(musketeer_tasks::Kernel::name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use musketeer_tasks::fibonacci::FibonacciTask;
    use musketeer_tasks::TaskOutput;

    pub(crate) fn fib_task(index: u32, ns: Vec<u64>) -> LeasedTask {
        let input = TaskInput::Fibonacci(FibonacciTask::List(ns));
        LeasedTask {
            task: TaskRef {
                job: "j".into(),
                index,
                lease: u64::from(index) + 100,
            },
            cost: input.cost(),
            timeout_ms: None,
            input: input.encode(),
        }
    }

    #[test]
    fn duty_cycle_rests_in_proportion() {
        let ms = Duration::from_millis;
        assert_eq!(DutyCycle::new(None).pause_after(ms(40)), ms(0));
        assert_eq!(DutyCycle::new(Some(100)).pause_after(ms(40)), ms(0));
        assert_eq!(DutyCycle::new(Some(50)).pause_after(ms(40)), ms(40));
        assert_eq!(DutyCycle::new(Some(25)).pause_after(ms(40)), ms(120));
        assert_eq!(DutyCycle::new(Some(1)).pause_after(ms(1)), ms(99));
        assert_eq!(DutyCycle::new(Some(0)), DutyCycle::new(None));
    }

    #[test]
    fn inputs_run_or_fail_with_a_reason() {
        let (kernel, outcome) = run_input(&fib_task(0, vec![10, 20]).input, None, u64::MAX);
        assert_eq!(kernel, Some("fibonacci"));
        let TaskOutcome::Done(bytes) = outcome else {
            panic!("{outcome:?}")
        };
        let TaskOutput::Fibonacci(out) = TaskOutput::decode(&bytes).unwrap() else {
            panic!("not a fibonacci output")
        };
        assert_eq!(out.digits, "556765");

        let (kernel, outcome) = run_input(&[0xff, 0xff, 0xff], None, u64::MAX);
        assert_eq!(kernel, None);
        assert!(matches!(outcome, TaskOutcome::Failed(m) if m.contains("invalid task input")));
    }

    #[test]
    fn wasm_tasks_get_their_module_or_fail_saying_why() {
        use crate::worker::tests::{endless_module, wasm_input};
        let primes = crate::bench::PRIMES_WASM;
        let mut cache = ModuleCache::in_memory(1 << 20);
        cache
            .store(&musketeer_tasks::wasm::ModuleId::of(primes), primes)
            .unwrap();
        let modules = Arc::new(Modules::new(cache, None));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = Executor::start_with(1, DutyCycle::new(None), tx, modules);
        let leased = |index: u32, input: Vec<u8>| LeasedTask {
            task: TaskRef {
                job: "w".into(),
                index,
                lease: u64::from(index),
            },
            cost: musketeer_tasks::Cost::default(),
            timeout_ms: None,
            input,
        };
        pool.submit(leased(0, wasm_input(primes, &["2"], 1 << 30)));
        pool.submit(leased(1, wasm_input(&endless_module(), &["0"], 1000)));
        pool.submit(leased(2, wasm_input(primes, &["3"], 1 << 30)));
        let mut by_index = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let f = rx.blocking_recv().unwrap();
            assert_eq!(f.kernel, Some("wasm"));
            by_index.insert(f.task.index, f.outcome);
        }
        let output = |o: &TaskOutcome| match o {
            TaskOutcome::Done(b) => match TaskOutput::decode(b).unwrap() {
                TaskOutput::Wasm(w) => w.outputs,
                other => panic!("{other:?}"),
            },
            TaskOutcome::Failed(why) => panic!("{why}"),
        };
        assert_eq!(output(&by_index[&0]), ["127"]);
        assert!(
            matches!(&by_index[&1], TaskOutcome::Failed(m) if m.contains("is not cached and this agent cannot fetch it")),
            "{:?}",
            by_index[&1]
        );
        assert_eq!(output(&by_index[&2]), ["120"]);
    }

    #[test]
    fn the_pool_runs_every_task_and_measures_it() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = Executor::start(2, DutyCycle::new(None), tx);
        assert_eq!(pool.threads(), 2);
        for i in 0..10 {
            pool.submit(fib_task(i, vec![u64::from(i)]));
        }
        let mut seen = Vec::new();
        for _ in 0..10 {
            let f = rx.blocking_recv().expect("a worker reports");
            assert!(matches!(f.outcome, TaskOutcome::Done(_)));
            assert_eq!(f.kernel, Some("fibonacci"));
            seen.push(f.task.index);
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        drop(pool);
        // Once the pool is dropped the workers stop and the channel closes.
        assert!(rx.blocking_recv().is_none());
    }
}
