//! Running out of room: a full disk under the data directory, or a Redis at
//! its `maxmemory`. Each store adapter tells a full database from a broken
//! one ([`StoreError::Full`]); this module answers whether any store error
//! means "full" ([`StoreError::is_out_of_space`]), and owns the free-disk
//! reserve uploads must
//! leave (`serve --min-free-disk`), and the degraded state `/healthz`
//! reports. A full store refuses writes with `507 Insufficient Storage`;
//! reads go on, and writes work again as soon as space returns, without a
//! restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// The default reserve: room for SQLite's journal, a checkpoint and the
/// logs of a busy day, so that a full disk is refused before SQLite sees it.
pub const DEFAULT_MIN_FREE: u64 = 256 << 20;

/// The default reserve is at most this fraction (1/N) of the filesystem, so
/// that a coordinator on a small disk (a Raspberry Pi's card, a test's
/// tmpfs) is not read-only from its first start.
const DEFAULT_MAX_FRACTION: u64 = 10;

/// How often the free space is measured for the log and `/healthz`:
/// requests that write measure it themselves.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a store write refused for lack of room keeps `/healthz`
/// degraded, unless a write succeeds first: the store cannot be asked
/// whether it has room, and reads succeed either way.
const STORE_FULL_HOLD: Duration = Duration::from_secs(30);

/// Free and total bytes of the filesystem holding a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes an unprivileged process may still write.
    pub free: u64,
    /// The filesystem's size.
    pub total: u64,
}

/// Measures the filesystem that holds `path`.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(Usage {
        free: st.f_bavail.saturating_mul(st.f_frsize),
        total: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT];
    e.raw_os_error()
        .is_some_and(|code| full.iter().any(|f| f.raw_os_error() == code))
        || e.kind() == io::ErrorKind::StorageFull
}

impl StoreError {
    /// Whether the store failed for lack of room (the disk under SQLite or
    /// the blob files is full, or Redis reached `maxmemory`), not for a
    /// bug: such a write can succeed later, once space is freed.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::Full { .. } => true,
            StoreError::Io(e) => is_no_space(e),
            _ => false,
        }
    }
}

/// For housekeeping that may wait (at start-up, on a full disk): a write
/// refused for lack of room is logged and skipped, any other error stands.
pub fn unless_full<T: Default>(what: &str, r: Result<T, StoreError>) -> Result<T, StoreError> {
    match r {
        Err(e) if e.is_out_of_space() => {
            tracing::warn!(
                "{what} skipped, the store is out of space (read-only until space returns): {e}"
            );
            Ok(T::default())
        }
        r => r,
    }
}

/// Renders a byte count for people: `12.5 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A write refused because it would leave less than the reserve free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom {
    /// Free bytes now.
    pub free: u64,
    /// Bytes the write needs (0 when unknown: only the reserve counts).
    pub needed: u64,
    /// The reserve.
    pub min_free: u64,
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not enough disk space: {} free", human(self.free))?;
        if self.needed > 0 {
            write!(f, ", this upload needs {}", human(self.needed))?;
        }
        write!(
            f,
            " and {} must stay free (serve --min-free-disk); purge finished jobs \
             (DELETE /v1/jobs/ID), free disk space on the coordinator or lower \
             --min-free-disk, then submit again",
            human(self.min_free)
        )
    }
}

/// Why `/healthz` says degraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// The data directory's disk has less than the reserve free.
    DiskLow {
        /// Free bytes.
        free: u64,
        /// The reserve.
        min_free: u64,
    },
    /// A write failed for lack of room (disk or Redis memory) in the last
    /// half minute, and none has succeeded since.
    StoreFull,
}

impl Degraded {
    /// For the operator: what is wrong and what to do.
    pub fn message(&self) -> String {
        match self {
            Degraded::DiskLow { free, min_free } => format!(
                "disk space low: {} free, below the reserve of {} (--min-free-disk): new jobs \
                 and uploads are refused until space returns; purge finished jobs or free disk space",
                human(*free),
                human(*min_free)
            ),
            Degraded::StoreFull => "the store is out of space (a full disk, or Redis at its \
                 maxmemory): writes are refused until space returns; purge finished jobs, free \
                 disk space or raise Redis maxmemory"
                .to_string(),
        }
    }
}

/// The coordinator's view of its room: see the module documentation.
#[derive(Debug)]
pub struct Space {
    /// The data directory, whose filesystem holds the database and blobs.
    dir: PathBuf,
    /// Bytes every upload must leave free.
    min_free: u64,
    /// Whether the store lives on this disk (the embedded one) or elsewhere
    /// (Redis): only then does an upload's size count against the reserve,
    /// and does space coming back mean the store has room again.
    store_on_disk: bool,
    /// Free bytes at the last measure.
    free: AtomicU64,
    /// The last measure was below the reserve (for the log's transitions).
    low: AtomicBool,
    /// When a store write last failed for lack of room (ms after `epoch`,
    /// plus one; 0: not since the last write that succeeded).
    store_full_at: AtomicU64,
    /// The origin of `store_full_at`.
    epoch: Instant,
    /// Requests answered `507`, for `/metrics`.
    pub refused: AtomicU64,
}

impl Space {
    /// The room under `dir`, keeping `min_free` bytes (or the default
    /// reserve) free; `store_on_disk` for the embedded store.
    pub fn new(dir: &Path, min_free: Option<u64>, store_on_disk: bool) -> io::Result<Space> {
        let now = usage(dir)?;
        let min_free =
            min_free.unwrap_or_else(|| DEFAULT_MIN_FREE.min(now.total / DEFAULT_MAX_FRACTION));
        Ok(Space {
            dir: dir.to_path_buf(),
            min_free,
            store_on_disk,
            free: AtomicU64::new(now.free),
            low: AtomicBool::new(false),
            store_full_at: AtomicU64::new(0),
            epoch: Instant::now(),
            refused: AtomicU64::new(0),
        })
    }

    /// The reserve, in bytes.
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Measures the free space now, logging when it falls below the reserve
    /// or comes back. An unmeasurable disk counts as roomy: refusing every
    /// job because `statvfs` failed would be worse.
    pub fn measure(&self) -> u64 {
        let free = match usage(&self.dir) {
            Ok(u) => u.free,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot measure the free disk space: {e}");
                u64::MAX
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.min_free;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    free,
                    min_free = self.min_free,
                    "{}; reads go on",
                    Degraded::DiskLow {
                        free,
                        min_free: self.min_free
                    }
                    .message()
                );
            } else {
                tracing::info!(
                    free,
                    "disk space is back ({} free): accepting jobs again",
                    human(free)
                );
                // The embedded store is on this disk: what filled it was
                // this disk, which has room again.
                if self.store_on_disk {
                    self.store_full_at.store(0, Ordering::Relaxed);
                }
            }
        }
        free
    }

    /// Whether a write of `bytes` more (0: unknown) leaves the reserve free.
    /// A reserve of 0 turns the check off: only the store's own "full" refuses.
    pub fn room_for(&self, bytes: u64) -> Result<(), NoRoom> {
        if self.min_free == 0 {
            return Ok(());
        }
        let needed = if self.store_on_disk { bytes } else { 0 };
        let free = self.measure();
        if free < self.min_free.saturating_add(needed) {
            return Err(NoRoom {
                free,
                needed,
                min_free: self.min_free,
            });
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn store_full(&self) -> bool {
        let at = self.store_full_at.load(Ordering::Relaxed);
        at != 0 && self.now_ms() - at < STORE_FULL_HOLD.as_millis() as u64
    }

    /// A store write failed for lack of room.
    pub fn store_refused(&self) {
        if !self.store_full() {
            tracing::warn!("{}; reads go on", Degraded::StoreFull.message());
        }
        self.store_full_at.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A store write succeeded: whatever was full has room again.
    pub fn store_wrote(&self) {
        if self.store_full() {
            tracing::info!("the store takes writes again: accepting jobs");
        }
        self.store_full_at.store(0, Ordering::Relaxed);
    }

    /// What is wrong, if anything, measured now.
    pub fn degraded(&self) -> Option<Degraded> {
        let free = self.measure();
        if free < self.min_free {
            return Some(Degraded::DiskLow {
                free,
                min_free: self.min_free,
            });
        }
        self.store_full().then_some(Degraded::StoreFull)
    }

    /// Free bytes at the last measure.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Measures the disk every [`CHECK_EVERY`], so that the log says when
    /// space runs out and when it returns even while nobody submits.
    pub fn spawn_monitor(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                me.measure();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_reserve_is_capped_by_the_disk_size() {
        let dir = tempfile::tempdir().unwrap();
        let total = usage(dir.path()).unwrap().total;
        let space = Space::new(dir.path(), None, true).unwrap();
        assert_eq!(
            space.min_free(),
            DEFAULT_MIN_FREE.min(total / DEFAULT_MAX_FRACTION)
        );
        let space = Space::new(dir.path(), Some(7), true).unwrap();
        assert_eq!(space.min_free(), 7);
    }

    #[test]
    fn an_upload_larger_than_the_disk_is_refused_with_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path(), Some(1 << 20), true).unwrap();
        assert_eq!(space.room_for(0), Ok(()));
        let refusal = space.room_for(u64::MAX / 2).unwrap_err();
        assert_eq!(refusal.min_free, 1 << 20);
        let message = refusal.to_string();
        assert!(
            message.contains("free") && message.contains("1.0 MiB must stay free"),
            "{message}"
        );
        // On a shared store the upload goes to Redis, not to this disk.
        let space = Space::new(dir.path(), Some(1 << 20), false).unwrap();
        assert_eq!(space.room_for(u64::MAX / 2), Ok(()));
    }

    #[test]
    fn a_store_refusal_degrades_until_a_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path(), Some(0), true).unwrap();
        assert_eq!(space.degraded(), None);
        space.store_refused();
        assert_eq!(space.degraded(), Some(Degraded::StoreFull));
        space.store_wrote();
        assert_eq!(space.degraded(), None);
    }

    #[test]
    fn full_disks_and_full_redis_are_out_of_space_and_other_failures_are_not() {
        let enospc = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert!(StoreError::Io(enospc).is_out_of_space());
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(!StoreError::Io(denied).is_out_of_space());
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(StoreError::from(full).is_out_of_space());
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(!StoreError::from(busy).is_out_of_space());
        assert!(!StoreError::Corrupt("x".into()).is_out_of_space());
        let oom = ::redis::make_extension_error("OOM".into(), Some("maxmemory".into()));
        assert!(StoreError::from(oom).is_out_of_space());
        let other = ::redis::make_extension_error("ERR_NO_JOB".into(), None);
        assert!(!StoreError::from(other).is_out_of_space());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
