//! A worker process: `musketeer __worker`, started by the agent once per
//! core, runs one task at a time on its main thread.
//!
//! Tasks run in child processes rather than threads because a thread
//! cannot be stopped: a task past its `timeout_s` or its share of
//! `--memory` has to be *ended*, not asked to stop, and a process can be
//! killed (`SIGKILL`), paused and resumed (`SIGSTOP`/`SIGCONT`, the duty
//! cycle and stepping aside), and measured (`/proc/<pid>`) as a whole,
//! whatever the kernel is doing. Kernels stay pure: nothing in `tasks/`
//! knows about any of it.
//!
//! The agent talks to a worker over its standard input and output:
//!
//! - request: `cap: u64 LE`, `len: u32 LE`, `module_len: u32 LE`, then
//!   `len` bytes of an encoded [`musketeer_tasks::TaskInput`] and
//!   `module_len` bytes of the WebAssembly module a wasm task runs (none for
//!   the built-in kernels). The cap (live heap bytes, see
//!   [`crate::memory_cap`]) comes first so that it already holds while the
//!   input itself is read. A wasm task's linear memory is held below what
//!   the cap leaves once input and module are in, so that the module traps
//!   with a clear reason before the cap ends the worker.
//! - reply: `len: u32 LE`, then a postcard [`WorkerReply`].
//!
//! A worker that exits instead of replying was killed by the agent (it
//! knows why) or hit its cap ([`crate::memory_cap::EXIT_OVER_MEMORY`]).

use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use musketeer_tasks::protocol::TaskOutcome;
use serde::{Deserialize, Serialize};

use crate::executor::{kernel_of, panic_failure, run_input};
use crate::memory_cap;

/// The hidden subcommand the agent starts its workers with.
pub const SUBCOMMAND: &str = "__worker";

/// A larger frame is a broken pipe, not a task (task inputs are bounded by
/// the coordinator's 64 MiB JSON limit and its chunk size).
const MAX_FRAME: u32 = 1 << 30;

/// What a worker says about one task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerReply {
    /// The output, or why there is none.
    pub outcome: TaskOutcome,
    /// CPU time the task took.
    pub cpu_ns: u64,
    /// Wall time the task took (suspensions included).
    pub wall_ns: u64,
    /// The most live heap bytes while it ran, its input included.
    pub peak_bytes: u64,
    /// CPU time the whole worker process has used so far, so that the
    /// agent can account for a worker it retires between two samples.
    pub process_cpu_ns: u64,
    /// The worker ends after this reply (its kernel panicked where panics
    /// abort): the next task needs a new worker.
    pub exiting: bool,
}

/// The task a worker is running, if any, for its panic hook to answer for.
#[derive(Default)]
pub struct Running(Mutex<Option<Started>>);

/// A task that has begun.
struct Started {
    kernel: &'static str,
    at: Instant,
    cpu_at: Option<cpu_time::ProcessTime>,
}

/// The worker's own, which its panic hook reads.
static RUNNING: Running = Running(Mutex::new(None));

impl Running {
    fn begin(&self, kernel: &'static str) {
        let started = Started {
            kernel,
            at: Instant::now(),
            cpu_at: cpu_time::ProcessTime::try_now().ok(),
        };
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(started);
    }

    /// The reply for the task that began, now that it ended with `outcome`.
    fn end(&self, outcome: TaskOutcome) -> WorkerReply {
        let started = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        reply(started.as_ref(), outcome, false)
    }

    /// The reply a panic hook gives for the running task, if there is one:
    /// it failed with the panic's message, and the worker ends.
    fn answer_panic(&self, payload: &(dyn std::any::Any + Send)) -> Option<WorkerReply> {
        // `try_lock`: whatever panicked, the hook must not hang.
        let started = self.0.try_lock().ok()?.take()?;
        let why = panic_failure(started.kernel, payload);
        Some(reply(Some(&started), TaskOutcome::Failed(why), true))
    }
}

/// The reply for a task that `started`, measured now.
fn reply(started: Option<&Started>, outcome: TaskOutcome, exiting: bool) -> WorkerReply {
    let cpu = started
        .and_then(|s| s.cpu_at)
        .and_then(|t| t.try_elapsed().ok())
        .unwrap_or(Duration::ZERO);
    WorkerReply {
        outcome,
        cpu_ns: cpu.as_nanos() as u64,
        wall_ns: started.map_or(0, |s| s.at.elapsed().as_nanos() as u64),
        peak_bytes: memory_cap::peak(),
        process_cpu_ns: cpu_time::ProcessTime::try_now()
            .map(|t| t.as_duration().as_nanos() as u64)
            .unwrap_or(0),
        exiting,
    }
}

/// Room a wasm task needs besides its linear memory: the compiled module
/// (a few times its size), the interpreter's value stack at its limit, and
/// the interpreter's own state.
fn wasm_overhead(module_len: usize) -> u64 {
    4 * module_len as u64
        + musketeer_tasks::wasm::limits::DEFAULT_MAX_STACK_BYTES as u64
        + (4 << 20)
}

/// Writes one request (`module`: a wasm task's module).
pub fn write_request(
    out: &mut impl Write,
    cap: u64,
    input: &[u8],
    module: Option<&[u8]>,
) -> io::Result<()> {
    let frame_len = |b: &[u8], what: &str| {
        u32::try_from(b.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, format!("{what} too large")))
    };
    let len = frame_len(input, "task input")?;
    let module = module.unwrap_or_default();
    let module_len = frame_len(module, "module")?;
    out.write_all(&cap.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&module_len.to_le_bytes())?;
    out.write_all(input)?;
    out.write_all(module)?;
    out.flush()
}

/// Reads one reply; `Ok(None)` when the worker is gone.
pub fn read_reply(input: &mut impl Read) -> io::Result<Option<WorkerReply>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let bytes = read_frame(input, u32::from_le_bytes(len))?;
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
}

fn read_frame(input: &mut impl Read, len: u32) -> io::Result<Vec<u8>> {
    if len > MAX_FRAME {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Serves requests from `input` until it closes, one task at a time,
/// keeping `running` up to date.
pub fn serve(mut input: impl Read, output: impl Write, running: &Running) -> io::Result<()> {
    let mut output = BufWriter::new(output);
    loop {
        let mut header = [0u8; 16];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let cap = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let module_len = u32::from_le_bytes(header[12..].try_into().expect("4 bytes"));
        memory_cap::set_cap(cap);
        memory_cap::reset_peak();
        let reply = {
            let task = read_frame(&mut input, len)?;
            let module = read_frame(&mut input, module_len)?;
            let module = (module_len > 0).then_some(&module[..]);
            let memory = cap
                .saturating_sub(memory_cap::live())
                .saturating_sub(wasm_overhead(module_len as usize));
            running.begin(kernel_of(&task).unwrap_or("unknown"));
            let (_, outcome) = run_input(&task, module, memory);
            running.end(outcome)
        };
        write_reply(&mut output, &reply)?;
    }
}

/// Writes one reply frame.
fn write_reply(output: &mut impl Write, reply: &WorkerReply) -> io::Result<()> {
    let bytes =
        postcard::to_stdvec(reply).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
    output.write_all(&(bytes.len() as u32).to_le_bytes())?;
    output.write_all(&bytes)?;
    output.flush()
}

/// The exit code of a worker whose kernel panicked where panics abort
/// (having answered for its task first, when one ran).
pub const EXIT_PANICKED: i32 = 87;

/// Where panics abort (the shipped agents: the `release-small` profile), a
/// panicking kernel cannot be caught, so the worker answers for its task
/// before it ends: the task fails with the panic's message, as where panics
/// unwind, and the agent starts a fresh worker for the next one.
#[allow(unsafe_code)] // `_exit`, proved sound where it is called
fn answer_for_panics() {
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static ANSWERING: AtomicBool = AtomicBool::new(false);
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The answer allocates: a kernel near its cap must still be
        // reported as panicked, not as over memory.
        memory_cap::set_cap(u64::MAX);
        if ANSWERING.swap(true, Ordering::SeqCst) {
            // Another of the task's threads panicked first and is
            // answering; its exit ends this thread too.
            loop {
                std::thread::park();
            }
        }
        report(info);
        if let Some(reply) = RUNNING.answer_panic(info.payload()) {
            // Not through `Stdout`, whose lock `serve` holds on the main
            // thread: the panic may be on another (word count's threads).
            // `serve` has flushed its last reply before this task began.
            if let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() {
                let _ = write_reply(&mut std::fs::File::from(fd), &reply);
            }
        }
        // SAFETY: `_exit` takes a plain integer and never returns. Unlike
        // `exit` it runs no atexit handlers, which could wait on the stdout
        // lock that `serve` holds; unlike the abort that would follow, it
        // leaves no core dump on an owner's disk.
        unsafe { libc::_exit(EXIT_PANICKED) }
    }));
}

/// The body of `musketeer __worker`: serve the agent on stdin/stdout.
pub fn main() -> io::Result<()> {
    memory_cap::start_counting();
    // An orphaned worker (the agent was SIGKILLed) must not go on computing
    // for nobody, nor sit stopped forever if it was paused.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if cfg!(panic = "abort") {
        answer_for_panics();
    }
    serve(io::stdin().lock(), io::stdout().lock(), &RUNNING)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::executor::tests::fib_task;
    use musketeer_tasks::{TaskInput, TaskOutput};

    #[test]
    fn a_worker_answers_each_request_in_order() {
        let mut requests = Vec::new();
        write_request(&mut requests, u64::MAX, &fib_task(0, vec![10]).input, None).unwrap();
        write_request(&mut requests, u64::MAX, &[0xff, 0xff], None).unwrap();
        let mut replies = Vec::new();
        serve(&requests[..], &mut replies, &Running::default()).unwrap();

        let mut replies = &replies[..];
        let first = read_reply(&mut replies).unwrap().unwrap();
        let TaskOutcome::Done(bytes) = first.outcome else {
            panic!("{:?}", first.outcome)
        };
        let TaskOutput::Fibonacci(out) = TaskOutput::decode(&bytes).unwrap() else {
            panic!("not fibonacci")
        };
        assert_eq!(out.digits, "55");
        let second = read_reply(&mut replies).unwrap().unwrap();
        assert!(
            matches!(second.outcome, TaskOutcome::Failed(m) if m.contains("invalid task input"))
        );
        assert!(read_reply(&mut replies).unwrap().is_none(), "then the end");
    }

    #[test]
    fn a_panic_is_answered_once_for_the_running_task_and_ends_the_worker() {
        let running = Running::default();
        assert_eq!(running.answer_panic(&"boom"), None, "no task, no answer");
        running.begin("fibonacci");
        let reply = running
            .answer_panic(&String::from("boom"))
            .expect("a task runs");
        assert_eq!(
            reply.outcome,
            TaskOutcome::Failed("the fibonacci kernel panicked: boom".into())
        );
        assert!(reply.exiting, "the agent must start a new worker");
        assert_eq!(running.answer_panic(&"again"), None, "answered once");
        // The hook writes the same frame as `serve`.
        let mut frame = Vec::new();
        write_reply(&mut frame, &reply).unwrap();
        assert_eq!(read_reply(&mut &frame[..]).unwrap(), Some(reply));
    }

    /// A wasm task of `items` with `fuel`, for `module`.
    pub(crate) fn wasm_input(module: &[u8], items: &[&str], fuel: u64) -> Vec<u8> {
        use musketeer_tasks::wasm::kernel::WasmItems;
        use musketeer_tasks::wasm::{ModuleId, WasmTask};
        TaskInput::Wasm(WasmTask {
            module: ModuleId::of(module),
            first_item: 0,
            items: WasmItems::List(items.iter().map(|s| s.to_string()).collect()),
            fuel,
            memory_bytes: 64 << 20,
            cost: musketeer_tasks::Cost::default(),
        })
        .encode()
    }

    /// A module whose map never returns.
    pub(crate) fn endless_module() -> Vec<u8> {
        wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (func (export "musketeer_alloc") (param i32) (result i32) (i32.const 0))
                 (func (export "musketeer_map") (param i32 i32) (result i64)
                   (loop $forever (br $forever)) (i64.const 0)))"#,
        )
        .unwrap()
    }

    #[test]
    fn wasm_tasks_run_with_their_module_and_a_failure_ends_only_that_task() {
        let primes = crate::bench::PRIMES_WASM;
        let endless = endless_module();
        let mut requests = Vec::new();
        let good = wasm_input(primes, &["0", "1"], 1 << 30);
        write_request(&mut requests, u64::MAX, &good, Some(primes)).unwrap();
        let looping = wasm_input(&endless, &["0"], 100_000);
        write_request(&mut requests, u64::MAX, &looping, Some(&endless)).unwrap();
        // Too little memory left by the agent for even the module's first page.
        write_request(&mut requests, 1 << 20, &good, Some(primes)).unwrap();
        // Without its module a wasm task cannot run.
        write_request(&mut requests, u64::MAX, &good, None).unwrap();
        write_request(&mut requests, u64::MAX, &good, Some(primes)).unwrap();
        let mut replies = Vec::new();
        serve(&requests[..], &mut replies, &Running::default()).unwrap();
        let mut replies = &replies[..];
        let mut next = || read_reply(&mut replies).unwrap().unwrap().outcome;
        let done = |o: TaskOutcome| match o {
            TaskOutcome::Done(bytes) => match TaskOutput::decode(&bytes).unwrap() {
                TaskOutput::Wasm(w) => w.outputs,
                other => panic!("not a wasm output: {other:?}"),
            },
            TaskOutcome::Failed(why) => panic!("failed: {why}"),
        };
        assert_eq!(done(next()), ["168", "135"]);
        let failed = |o: TaskOutcome| match o {
            TaskOutcome::Failed(why) => why,
            TaskOutcome::Done(_) => panic!("a hostile task succeeded"),
        };
        let why = failed(next());
        assert!(why.starts_with("out of fuel in item 0"), "{why}");
        let why = failed(next());
        assert!(
            why.contains("memory limit of 0 bytes reached in instantiation"),
            "{why}"
        );
        let why = failed(next());
        assert!(why.contains("needs the bytes of module"), "{why}");
        assert_eq!(done(next()), ["168", "135"], "the worker goes on");
    }

    #[test]
    fn a_cut_off_request_is_an_error_not_a_task() {
        let mut requests = Vec::new();
        write_request(&mut requests, u64::MAX, &fib_task(0, vec![10]).input, None).unwrap();
        requests.truncate(requests.len() - 1);
        assert!(serve(&requests[..], Vec::new(), &Running::default()).is_err());

        let mut huge = Vec::new();
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&0u32.to_le_bytes());
        assert!(serve(&huge[..], Vec::new(), &Running::default()).is_err());
    }
}
