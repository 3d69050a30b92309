//! WebAssembly modules for wasm tasks: fetched once by digest from the
//! coordinator (`GET /v1/agent/modules/{id}`), verified (their SHA-256 is
//! their id), and cached in `<state dir>/modules/` under a size cap, the
//! least recently used going first (by file modification time, which each
//! use refreshes).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use musketeer_tasks::wasm::ModuleId;

/// The cache's size cap unless `--module-cache` says.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// The cache's directory under the state directory.
pub const CACHE_DIR: &str = "modules";
/// How long one fetch may take before its task fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Gets a module's bytes from the coordinator.
pub type Fetch = Box<dyn Fn(ModuleId) -> Result<Vec<u8>, String> + Send + Sync>;

/// Where cached modules live.
#[derive(Debug)]
enum Place {
    /// Files in this directory, one per module.
    Dir(PathBuf),
    /// This process's memory (an agent embedded without a state directory).
    Memory(HashMap<ModuleId, (Vec<u8>, u64)>, u64),
}

/// Modules kept for later tasks, at most `max_bytes` of them.
#[derive(Debug)]
pub struct ModuleCache {
    place: Place,
    max_bytes: u64,
}

impl ModuleCache {
    /// A cache in `dir` (created when first needed) of at most `max_bytes`.
    pub fn in_dir(dir: impl Into<PathBuf>, max_bytes: u64) -> ModuleCache {
        ModuleCache {
            place: Place::Dir(dir.into()),
            max_bytes,
        }
    }

    /// A cache in memory of at most `max_bytes`.
    pub fn in_memory(max_bytes: u64) -> ModuleCache {
        ModuleCache {
            place: Place::Memory(HashMap::new(), 0),
            max_bytes,
        }
    }

    fn path(dir: &Path, id: &ModuleId) -> PathBuf {
        dir.join(format!("{}.wasm", id.hex()))
    }

    /// The module's bytes if cached and intact (a file whose bytes are not
    /// the module any more is removed), marking it used.
    pub fn load(&mut self, id: &ModuleId) -> Option<Vec<u8>> {
        match &mut self.place {
            Place::Dir(dir) => {
                let path = Self::path(dir, id);
                let bytes = fs::read(&path).ok()?;
                if !id.matches(&bytes) {
                    tracing::warn!("cached module {} is corrupt: removing it", path.display());
                    let _ = fs::remove_file(&path);
                    return None;
                }
                if let Ok(f) = fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(bytes)
            }
            Place::Memory(map, clock) => {
                *clock += 1;
                let now = *clock;
                map.get_mut(id).map(|(bytes, used)| {
                    *used = now;
                    bytes.clone()
                })
            }
        }
    }

    /// Keeps `bytes` (which must be module `id`), then evicts the least
    /// recently used others until the cache is within its cap.
    pub fn store(&mut self, id: &ModuleId, bytes: &[u8]) -> io::Result<()> {
        let max = self.max_bytes;
        match &mut self.place {
            Place::Dir(dir) => {
                fs::create_dir_all(&*dir)?;
                let path = Self::path(dir, id);
                let tmp = dir.join(format!("{}.tmp-{}", id.hex(), std::process::id()));
                fs::write(&tmp, bytes)?;
                fs::rename(&tmp, &path)?;
                evict_files(dir, &path, max)
            }
            Place::Memory(map, clock) => {
                *clock += 1;
                map.insert(*id, (bytes.to_vec(), *clock));
                let mut total: u64 = map.values().map(|(b, _)| b.len() as u64).sum();
                while total > max && map.len() > 1 {
                    let oldest = map
                        .iter()
                        .filter(|(k, _)| *k != id)
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(k, (b, _))| (*k, b.len() as u64));
                    let Some((k, len)) = oldest else { break };
                    map.remove(&k);
                    total -= len;
                }
                Ok(())
            }
        }
    }
}

/// Removes the oldest `*.wasm` files in `dir` but `keep` until the rest
/// fit in `max` bytes.
fn evict_files(dir: &Path, keep: &Path, max: u64) -> io::Result<()> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let meta = entry.metadata()?;
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        files.push((used, meta.len(), path));
    }
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max {
            break;
        }
        if path == keep {
            continue;
        }
        tracing::debug!("module cache over its cap: removing {}", path.display());
        fs::remove_file(&path)?;
        total -= len;
    }
    Ok(())
}

/// Modules for the executor: from the cache, else fetched and verified.
pub struct Modules {
    cache: Mutex<ModuleCache>,
    fetch: Option<Fetch>,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modules")
            .field("cache", &self.cache)
            .field("fetches", &self.fetch.is_some())
            .finish()
    }
}

impl Modules {
    /// Modules from `cache`, fetched with `fetch` when missing (`None`: from
    /// the cache alone).
    pub fn new(cache: ModuleCache, fetch: Option<Fetch>) -> Modules {
        Modules {
            cache: Mutex::new(cache),
            fetch,
        }
    }

    /// Module `id`'s bytes, verified; or why there are none, as the task's
    /// failure reason. One lookup at a time, so that workers starting tasks
    /// of the same new module fetch it once.
    pub fn get(&self, id: ModuleId) -> Result<Vec<u8>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = cache.load(&id) {
            return Ok(bytes);
        }
        let fetch = self
            .fetch
            .as_ref()
            .ok_or_else(|| format!("module {id} is not cached and this agent cannot fetch it"))?;
        let bytes = fetch(id).map_err(|e| format!("could not fetch module {id}: {e}"))?;
        if !id.matches(&bytes) {
            return Err(format!(
                "the coordinator sent {} bytes for module {id} whose SHA-256 is another ({}): refusing them",
                bytes.len(),
                ModuleId::of(&bytes)
            ));
        }
        if let Err(e) = cache.store(&id, &bytes) {
            tracing::warn!("could not cache module {id}: {e}");
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn modules_are_fetched_once_verified_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let fetched = Arc::new(AtomicUsize::new(0));
        let counter = fetched.clone();
        let fetch: Fetch = Box::new(move |id| {
            counter.fetch_add(1, Ordering::SeqCst);
            if id == ModuleId::of(b"one") {
                Ok(b"one".to_vec())
            } else if id == ModuleId::of(b"liar") {
                Ok(b"not the module".to_vec())
            } else {
                Err("404 not_found".into())
            }
        });
        let modules = Modules::new(
            ModuleCache::in_dir(dir.path().join(CACHE_DIR), 1 << 20),
            Some(fetch),
        );
        let one = ModuleId::of(b"one");
        assert_eq!(modules.get(one).unwrap(), b"one");
        assert_eq!(modules.get(one).unwrap(), b"one");
        assert_eq!(
            fetched.load(Ordering::SeqCst),
            1,
            "the second use is cached"
        );
        assert!(dir
            .path()
            .join(CACHE_DIR)
            .join(format!("{}.wasm", one.hex()))
            .exists());

        let e = modules.get(ModuleId::of(b"liar")).unwrap_err();
        assert!(e.contains("refusing them"), "{e}");
        let e = modules.get(ModuleId::of(b"gone")).unwrap_err();
        assert!(
            e.contains("could not fetch module sha256:") && e.contains("404"),
            "{e}"
        );

        // A corrupted file is noticed, removed and fetched again.
        fs::write(
            dir.path()
                .join(CACHE_DIR)
                .join(format!("{}.wasm", one.hex())),
            b"evil",
        )
        .unwrap();
        assert_eq!(modules.get(one).unwrap(), b"one");
        assert_eq!(fetched.load(Ordering::SeqCst), 4);

        let offline = Modules::new(ModuleCache::in_memory(1 << 20), None);
        assert!(offline.get(one).unwrap_err().contains("cannot fetch"));
    }

    #[test]
    fn the_least_recently_used_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ModuleCache::in_dir(dir.path(), 25);
        let (a, b, c) = (vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]);
        let (ia, ib, ic) = (ModuleId::of(&a), ModuleId::of(&b), ModuleId::of(&c));
        cache.store(&ia, &a).unwrap();
        // Modification times are coarse on some file systems: make the order plain.
        let old = SystemTime::now() - Duration::from_secs(100);
        fs::File::options()
            .append(true)
            .open(ModuleCache::path(dir.path(), &ia))
            .unwrap()
            .set_modified(old)
            .unwrap();
        cache.store(&ib, &b).unwrap();
        fs::File::options()
            .append(true)
            .open(ModuleCache::path(dir.path(), &ib))
            .unwrap()
            .set_modified(old - Duration::from_secs(100))
            .unwrap();
        // Using a makes b the least recently used.
        assert!(cache.load(&ia).is_some());
        cache.store(&ic, &c).unwrap();
        assert!(cache.load(&ib).is_none(), "b went");
        assert!(cache.load(&ia).is_some());
        assert!(cache.load(&ic).is_some());

        let mut memory = ModuleCache::in_memory(25);
        memory.store(&ia, &a).unwrap();
        memory.store(&ib, &b).unwrap();
        assert!(memory.load(&ia).is_some());
        memory.store(&ic, &c).unwrap();
        assert!(memory.load(&ib).is_none());
        assert!(memory.load(&ia).is_some() && memory.load(&ic).is_some());
        // One module larger than the cap is still kept: it is needed now.
        let mut tiny = ModuleCache::in_memory(5);
        tiny.store(&ia, &a).unwrap();
        assert!(tiny.load(&ia).is_some());
    }
}
