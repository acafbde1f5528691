//! The node-local cache: chunks by hash, shared by the jobs on one machine.
//!
//! It holds chunks, not materialised files. Content addressing makes it simple and
//! safe to share: an entry's name is the sha256 of its bytes, so any reader can check
//! what it takes, whoever wrote it; two versions of a dataset that share most files, or
//! a dataset and a checkpoint that share bytes, share entries; and the job's own copy of
//! the files is private, so a trainer that writes into its data directory cannot damage
//! what other jobs read (as it could through hard links into a file cache).
//!
//! ```text
//! <cache>/chunks/<first 2 hex>/<sha256>   the chunk's raw bytes
//! <cache>/tmp/                            entries being written (renamed into place)
//! <cache>/locks/<first 3 hex>.lock        flock(2): one fetch of a chunk at a time
//! <cache>/locks/evict.lock                flock(2): one eviction at a time
//! ```
//!
//! Several processes fill it at once: an entry is written to `tmp/` and renamed into
//! place (readers never see a partial entry), and a chunk missing from the cache is
//! fetched under its stripe's lock, after looking again, so the second job waits for the
//! first one's download instead of making its own. Locks are flock(2): the kernel drops
//! them when a process dies, so a killed job never leaves the cache locked. Recency is
//! the entry's mtime, set at every use, and eviction removes the least recently used
//! whole entries until the cache is under 90% of its bound.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::DataError;

/// Without `--cache-max`: half the cache's filesystem, at most this.
pub const DEFAULT_MAX: u64 = 50 << 30;
/// A temporary entry older than this belongs to a writer that died.
const STALE_TMP_SECONDS: u64 = 3600;

#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    max: u64,
    /// Bytes in the cache as this process last counted them, plus what it added since.
    used: AtomicU64,
}

/// What reading an entry found.
pub enum Take {
    Hit(Vec<u8>),
    Missing,
    /// The entry did not hold the chunk's bytes; it was removed.
    Corrupt(String),
}

/// `10G`, `500M`, `1.5T`, `4096` (bytes; K, M, G, T are powers of 1024, an optional
/// trailing `B` or `iB` is accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?}: a size is a number with an optional unit, e.g. 20G, 500M, 1.5T"))?;
    if !v.is_finite() || v < 1.0 {
        return Err(format!("{s:?}: the cache needs at least 1 byte"));
    }
    Ok((v * (1u64 << shift) as f64) as u64)
}

/// Which entries to evict, oldest use first, so that what stays is at most `target`
/// bytes. Entries are (size, last use); the indexes returned are into `entries`.
pub fn eviction_plan(entries: &[(u64, SystemTime)], target: u64) -> Vec<usize> {
    let mut total: u64 = entries.iter().map(|e| e.0).sum();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].1);
    let mut doomed = Vec::new();
    for i in order {
        if total <= target {
            break;
        }
        total -= entries[i].0;
        doomed.push(i);
    }
    doomed
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Cache {
    /// Open (making it if needed) the cache at `root`, bounded by `max` bytes (default:
    /// half its filesystem, at most [`DEFAULT_MAX`]). A directory this process cannot
    /// write is refused here, before any download.
    pub fn open(root: &Path, max: Option<u64>) -> Result<Cache, DataError> {
        let err = |detail: String| DataError::Cache { dir: root.display().to_string(), detail };
        for sub in ["chunks", "tmp", "locks"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| err(e.to_string()))?;
        }
        let probe = root.join("tmp").join(format!("probe.{}", std::process::id()));
        File::create(&probe).and_then(|mut f| f.write_all(b"x")).map_err(|e| err(format!("cannot write in it ({e})")))?;
        let _ = std::fs::remove_file(&probe);
        let max = match max {
            Some(m) => m,
            None => match nix::sys::statvfs::statvfs(root) {
                Ok(s) => s.blocks().saturating_mul(s.fragment_size()) / 2,
                Err(_) => DEFAULT_MAX,
            }
            .clamp(1, DEFAULT_MAX),
        };
        let cache = Cache { root: root.to_path_buf(), max, used: AtomicU64::new(0) };
        let used = cache.scan().map_err(|e| err(e.to_string()))?.iter().map(|e| e.1).sum();
        cache.used.store(used, Ordering::Relaxed);
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    fn entry(&self, hash: &str) -> PathBuf {
        self.root.join("chunks").join(&hash[..2]).join(hash)
    }

    /// Whether an entry of the right size is there; using it makes it the most recent.
    /// Its bytes are checked when they are read ([`Cache::take`]).
    pub fn present(&self, hash: &str, size: u64) -> bool {
        let Ok(f) = File::open(self.entry(hash)) else { return false };
        match f.metadata() {
            Ok(m) if m.len() == size => {
                let _ = f.set_modified(SystemTime::now());
                true
            }
            _ => false,
        }
    }

    /// Read an entry and check it is the chunk: `size` bytes whose sha256 is `hash`. An
    /// entry that is not is removed, so that the next reader fetches it again.
    pub fn take(&self, hash: &str, size: u64) -> Take {
        let path = self.entry(hash);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Take::Missing,
            Err(e) => return self.condemn(&path, format!("cannot read it: {e}")),
        };
        let mut data = Vec::with_capacity(size as usize);
        if let Err(e) = (&mut f).take(size + 1).read_to_end(&mut data) {
            return self.condemn(&path, format!("cannot read it: {e}"));
        }
        if data.len() as u64 != size {
            return self.condemn(&path, format!("{} bytes, the chunk has {size}", data.len()));
        }
        let got = hex::encode(Sha256::digest(&data));
        if got != hash {
            return self.condemn(&path, format!("its bytes hash to {got}"));
        }
        let _ = f.set_modified(SystemTime::now());
        Take::Hit(data)
    }

    fn condemn(&self, path: &Path, why: String) -> Take {
        let _ = std::fs::remove_file(path);
        Take::Corrupt(why)
    }

    /// Add a chunk the caller checked. Written aside and renamed, so a reader sees the
    /// whole entry or none.
    pub fn insert(&self, hash: &str, data: &[u8]) -> std::io::Result<()> {
        let dir = self.root.join("chunks").join(&hash[..2]);
        std::fs::create_dir_all(&dir)?;
        let tmp = self.root.join("tmp").join(format!("{hash}.{}.{:?}", std::process::id(), std::thread::current().id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            drop(f);
            std::fs::rename(&tmp, dir.join(hash))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Hold the lock of `hash`'s stripe (blocking until it is free). 4096 stripes: a
    /// lock file per chunk would be one more file per entry, and removing them races
    /// with the processes waiting on them.
    pub fn lock(&self, hash: &str) -> std::io::Result<nix::fcntl::Flock<File>> {
        let path = self.root.join("locks").join(format!("{}.lock", &hash[..3]));
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
    }

    /// Every entry: (path, size, last use).
    fn scan(&self) -> std::io::Result<Vec<(PathBuf, u64, SystemTime)>> {
        let mut out = Vec::new();
        for dir in std::fs::read_dir(self.root.join("chunks"))? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir.path()) else { continue };
            for e in entries.flatten() {
                if !e.file_name().to_str().is_some_and(is_hash) {
                    continue;
                }
                // Gone meanwhile (another job evicted it): not an entry any more.
                let Ok(m) = e.metadata() else { continue };
                out.push((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
        Ok(out)
    }

    /// Evict when this process's count says the cache is over its bound. Returns the
    /// entries and bytes removed.
    pub fn evict_if_over(&self) -> std::io::Result<(usize, u64)> {
        if self.used.load(Ordering::Relaxed) <= self.max {
            return Ok((0, 0));
        }
        self.evict()
    }

    /// Remove the least recently used entries until the cache holds at most 90% of its
    /// bound (so that evictions are rare, not one per insert), and temporary files of
    /// writers that died. One process evicts at a time; another that finds the lock
    /// taken leaves the work to it.
    pub fn evict(&self) -> std::io::Result<(usize, u64)> {
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.root.join("locks/evict.lock"))?;
        let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) else {
            return Ok((0, 0));
        };
        let entries = self.scan()?;
        let total: u64 = entries.iter().map(|e| e.1).sum();
        let ages: Vec<(u64, SystemTime)> = entries.iter().map(|e| (e.1, e.2)).collect();
        let (mut count, mut bytes) = (0, 0);
        for i in eviction_plan(&ages, self.max / 10 * 9) {
            // A reader that opened it already keeps reading; a later one fetches it again.
            if std::fs::remove_file(&entries[i].0).is_ok() {
                count += 1;
                bytes += entries[i].1;
            }
        }
        self.used.store(total - bytes, Ordering::Relaxed);
        if let Ok(tmp) = std::fs::read_dir(self.root.join("tmp")) {
            for e in tmp.flatten() {
                let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                if old.is_some_and(|age| age.as_secs() > STALE_TMP_SECONDS) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if count > 0 {
            tracing::info!(
                "cache {}: evicted {count} least recently used chunk(s), {} (bound {})",
                self.root.display(),
                crate::format::bytes(bytes),
                crate::format::bytes(self.max)
            );
        }
        Ok((count, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn eviction_takes_the_least_recently_used_first_and_stops_at_the_target() {
        // Sizes 10, 20, 30, 40 used at times 4, 1, 3, 2.
        let entries = [(10, at(4)), (20, at(1)), (30, at(3)), (40, at(2))];
        assert_eq!(eviction_plan(&entries, 100), Vec::<usize>::new(), "under the target: nothing goes");
        assert_eq!(eviction_plan(&entries, 80), vec![1], "the oldest (t=1) is enough");
        assert_eq!(eviction_plan(&entries, 50), vec![1, 3], "then the next oldest (t=2)");
        assert_eq!(eviction_plan(&entries, 0), vec![1, 3, 2, 0], "everything, oldest first");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5T").unwrap(), 3 << 39);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        for bad in ["", "G", "-1G", "0", "ten", "1X"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_corrupt_entry_is_removed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), Some(1 << 20)).unwrap();
        let data = b"hello chunk".to_vec();
        let hash = crate::chunking::sha256_hex(&data);
        cache.insert(&hash, &data).unwrap();
        assert!(cache.present(&hash, data.len() as u64));
        assert!(matches!(cache.take(&hash, data.len() as u64), Take::Hit(d) if d == data));
        // Same size, one byte flipped: only the hash can tell.
        std::fs::write(cache.entry(&hash), b"hello chunK").unwrap();
        assert!(matches!(cache.take(&hash, data.len() as u64), Take::Corrupt(_)));
        assert!(!cache.entry(&hash).exists(), "the corrupt entry stays for the next reader");
        assert!(matches!(cache.take(&hash, data.len() as u64), Take::Missing));
    }

    #[test]
    fn eviction_keeps_the_cache_under_its_bound_by_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), Some(1000)).unwrap();
        let mut hashes = Vec::new();
        for i in 0..5u8 {
            let data = vec![i; 300];
            let hash = crate::chunking::sha256_hex(&data);
            cache.insert(&hash, &data).unwrap();
            let f = File::open(cache.entry(&hash)).unwrap();
            f.set_modified(at(1000 + i as u64)).unwrap();
            hashes.push(hash);
        }
        // The oldest entry is used now: it becomes the newest.
        assert!(cache.present(&hashes[0], 300));
        let (count, bytes) = cache.evict_if_over().unwrap();
        assert_eq!((count, bytes), (2, 600), "1500 bytes down to at most 900");
        let left: Vec<bool> = hashes.iter().map(|h| cache.entry(h).exists()).collect();
        assert_eq!(left, vec![true, false, false, true, true], "the two least recently used went");
    }
}
