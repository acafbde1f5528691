//! A backend held in this process's memory, for tests: upload, restore and the
//! conformance suite run against it without a disk, a server or a child process. It keeps
//! the contract the real backends keep (create-only, the size limit on reads, `NotFound`,
//! directory-like listing), so a test that passes here is not relying on a shortcut.

use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{Backend, ObjectInfo, PutOutcome, Result, StoreError};

#[derive(Default)]
pub struct MemoryBackend {
    /// Key -> (bytes, modified as seconds since the epoch).
    objects: Mutex<BTreeMap<String, (Bytes, i64)>>,
    /// Refuse overwrites, as a Pelican origin does.
    write_once: bool,
    /// Requests seen, for tests of how many round trips an operation costs.
    heads: AtomicUsize,
    puts_refused: AtomicUsize,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose objects are write-once, like a Pelican origin's.
    pub fn write_once() -> Self {
        MemoryBackend { write_once: true, ..Self::default() }
    }

    /// HEAD requests answered so far.
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::Relaxed)
    }

    /// Create-only writes that found the key taken, so far.
    pub fn puts_refused(&self) -> usize {
        self.puts_refused.load(Ordering::Relaxed)
    }

    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, (Bytes, i64)>> {
        // A test that panicked while holding the lock cannot have left the map half
        // changed (every change is one insert or remove), so the data is still good.
        self.objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Display for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory")
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> Result<PutOutcome> {
        let mut objects = self.objects();
        if create_only && objects.contains_key(key) {
            self.puts_refused.fetch_add(1, Ordering::Relaxed);
            return Ok(PutOutcome::AlreadyExists);
        }
        if self.write_once && objects.contains_key(key) {
            return Err(StoreError::Backend { op: "put", key: key.to_string(), detail: "objects are write-once here".into() });
        }
        objects.insert(key.to_string(), (data, now()));
        Ok(PutOutcome::Created)
    }

    async fn get(&self, key: &str, limit: u64) -> Result<Bytes> {
        match self.objects().get(key) {
            None => Err(StoreError::NotFound { key: key.to_string() }),
            Some((data, _)) if data.len() as u64 > limit => {
                Err(StoreError::TooLarge { key: key.to_string(), size: data.len() as u64, limit })
            }
            Some((data, _)) => Ok(data.clone()),
        }
    }

    fn overwrites(&self) -> bool {
        !self.write_once
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.heads.fetch_add(1, Ordering::Relaxed);
        Ok(self.objects().get(key).map(|(data, _)| data.len() as u64))
    }

    /// The prefix names a directory, as it does on the other backends (a directory on
    /// disk, a `/`-delimited S3 listing, a WebDAV collection): `a/` and `a` both list
    /// `a/x` but never `ab/x`; the empty prefix lists everything.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = prefix.trim_end_matches('/');
        let under = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        Ok(self
            .objects()
            .range(under.clone()..)
            .take_while(|(key, _)| key.starts_with(&under))
            .map(|(key, (data, modified))| ObjectInfo { key: key.clone(), size: data.len() as u64, modified: *modified })
            .collect())
    }

    /// Deleting an absent key succeeds, as on every other backend.
    async fn delete(&self, key: &str) -> Result<()> {
        self.objects().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Capabilities};
    use std::sync::Arc;

    #[tokio::test]
    async fn meets_the_backend_contract() {
        conformance::all(Arc::new(MemoryBackend::new()), Capabilities::FULL).await.unwrap();
        conformance::all(Arc::new(MemoryBackend::write_once()), Capabilities::WRITE_ONCE).await.unwrap();
    }

    #[tokio::test]
    async fn a_prefix_is_a_directory_with_or_without_its_slash() {
        let m = MemoryBackend::new();
        for key in ["runs/r/a", "runs/r/b/c", "runs/r2/a", "runs/r.json"] {
            m.put(key, Bytes::from_static(b"x"), true).await.unwrap();
        }
        for prefix in ["runs/r/", "runs/r"] {
            let keys: Vec<String> = m.list(prefix).await.unwrap().into_iter().map(|o| o.key).collect();
            assert_eq!(keys, ["runs/r/a", "runs/r/b/c"], "{prefix}");
        }
        assert_eq!(m.list("").await.unwrap().len(), 4);
    }
}
