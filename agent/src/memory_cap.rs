//! A global allocator that counts live heap bytes and, in a worker process
//! only, ends the process the moment a task asks for more than its share of
//! the agent's `--memory`.
//!
//! Why end the process instead of failing the allocation: Rust aborts on a
//! failed allocation anyway (`handle_alloc_error`), and an allocator must
//! not unwind, so there is no way to turn "no more memory" into an error
//! the kernel could return. A worker is a child process that holds one task
//! and nothing else, so ending it loses only that task; the agent sees the
//! exit code [`EXIT_OVER_MEMORY`], reports the task failed with the reason,
//! and starts a new worker. Checking at allocation time (rather than
//! sampling RSS) means the worker never even touches the pages: its RSS
//! cannot overshoot between two samples.
//!
//! The binary installs it with `#[global_allocator]`; in the agent's own
//! process the cap stays off and the allocator is `System` plus one relaxed
//! load per call.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// The exit code of a worker that hit its memory cap.
pub const EXIT_OVER_MEMORY: i32 = 86;

/// Whether counting is on (only in worker processes).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Live heap bytes while counting. Signed: memory allocated before counting
/// started and freed after it drives this below zero, which must not wrap
/// into a huge count that breaks the cap.
static LIVE: AtomicI64 = AtomicI64::new(0);
/// The most live bytes since the last [`reset_peak`].
static PEAK: AtomicU64 = AtomicU64::new(0);
/// Live bytes may not exceed this.
static CAP: AtomicU64 = AtomicU64::new(u64::MAX);

/// `System`, counting live bytes once [`start_counting`] is called.
#[derive(Clone, Copy, Debug, Default)]
pub struct CappedAlloc;

/// Starts counting live bytes from now (what was allocated before is not
/// counted, which is why a worker calls this first thing).
pub fn start_counting() {
    COUNTING.store(true, Ordering::SeqCst);
}

/// Sets the cap on live bytes; `u64::MAX` is none.
pub fn set_cap(bytes: u64) {
    CAP.store(bytes, Ordering::SeqCst);
}

/// Live heap bytes counted so far.
pub fn live() -> u64 {
    LIVE.load(Ordering::Relaxed).max(0) as u64
}

/// The most live bytes since the last reset.
pub fn peak() -> u64 {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak from the current live bytes.
pub fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

/// Counts `size` more bytes, or ends the process if that breaks the cap.
#[inline]
fn grow(size: usize) {
    let size = size as i64;
    let now = (LIVE.fetch_add(size, Ordering::Relaxed) + size).max(0) as u64;
    if now > CAP.load(Ordering::Relaxed) {
        over_memory();
    }
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[cold]
fn over_memory() -> ! {
    // SAFETY: `_exit` takes a plain integer, never returns and, unlike
    // `exit`, runs no atexit handlers or destructors, so it neither
    // allocates (we are inside the allocator) nor touches state that the
    // interrupted allocation left half-updated.
    unsafe { libc::_exit(EXIT_OVER_MEMORY) }
}

#[inline]
fn shrink(size: usize) {
    LIVE.fetch_sub(size as i64, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; the counting around it only touches atomics and
// never allocates, and the only other effect (`_exit` in `grow`) happens
// before the memory is requested, so no caller ever sees a broken promise.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            grow(layout.size());
        }
        // SAFETY: same layout, forwarded (see the impl's comment).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            grow(layout.size());
        }
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            shrink(layout.size());
        }
        // SAFETY: `ptr` came from this allocator with `layout`, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            if new_size > layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        // SAFETY: `ptr` came from this allocator with `layout`, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
