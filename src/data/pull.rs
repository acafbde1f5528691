//! Pull: a dataset version into a directory, every byte checked.
//!
//! With a cache, each file's chunks are first made present in the cache (fetched once
//! per machine, whichever job asks first, many at once), then the file is written from
//! the cache, each chunk checked against its hash as it is taken and the whole file
//! against its sha256. A corrupt or vanished entry is fetched again. Without a cache,
//! files of one chunk (most files of a dataset of many small files) are fetched many at
//! once and written as they come; larger files go through restore's own pipeline.

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::cache::{Cache, Take};
use super::{DataError, DataRef, DatasetManifest, DatasetName};
use crate::capture::join_inside;
use crate::manifest::{ChunkRef, FileEntry};
use crate::restore::{self, RestoreError};
use crate::store::{KnownChunks, Store};
use crate::window;

/// Chunks fetched at once by default: a dataset of small files is bound by round trips.
pub const CONCURRENCY: usize = 32;
/// Bytes of chunks fetched and not yet in the cache.
const WINDOW_BYTES: u64 = 64 << 20;
/// Files written from the cache at once (each holds one chunk in memory at a time).
const WRITERS: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct PullSettings {
    pub concurrency: usize,
    pub cache: Option<Arc<Cache>>,
}

/// What a pull did: `fetched_chunks` is the number of chunk reads from the store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullStats {
    pub dataset: String,
    pub version: u64,
    pub path: String,
    pub files: usize,
    pub bytes: u64,
    /// Distinct chunks of the version.
    pub chunks: usize,
    pub fetched_chunks: usize,
    pub fetched_bytes: u64,
    /// Chunks found in the cache (including ones another job fetched while this one waited).
    pub cache_hits: usize,
    /// Cache entries that did not hold their chunk's bytes: removed and fetched again.
    pub cache_corrupt: usize,
    pub cache_evicted: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    pub seconds: f64,
}

struct Ctx<'a> {
    store: &'a Store,
    cache: Option<Arc<Cache>>,
    name: &'a DatasetName,
    version: u64,
    fetch: tokio::sync::Semaphore,
    window: tokio::sync::Semaphore,
    writers: tokio::sync::Semaphore,
    stats: Mutex<PullStats>,
}

fn blocking_err(e: tokio::task::JoinError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Ctx<'_> {
    fn count(&self, f: impl FnOnce(&mut PullStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn file_err(&self, path: &str, detail: String) -> DataError {
        DataError::File { name: self.name.to_string(), version: self.version, path: path.to_string(), detail }
    }

    fn cache_err(&self, cache: &Cache, e: std::io::Error) -> DataError {
        DataError::Cache { dir: cache.root().display().to_string(), detail: e.to_string() }
    }

    /// One chunk from the store, checked (restore's read: good copies, damage markers).
    async fn fetch_from_store(&self, path: &str, c: &ChunkRef) -> Result<Vec<u8>, DataError> {
        let data = restore::read_chunk(self.store, &c.hash, c.size).await.map_err(|e| match e {
            RestoreError::Unavailable { source, .. } => DataError::Store { name: self.name.to_string(), source },
            RestoreError::File { detail, .. } => self.file_err(path, detail),
            other => self.file_err(path, other.to_string()),
        })?;
        self.count(|s| {
            s.fetched_chunks += 1;
            s.fetched_bytes += c.size;
        });
        Ok(data)
    }

    /// Make chunk `c` present in the cache: fetched under its stripe's lock after looking
    /// again, so of the jobs that want it at once, one downloads and the others wait.
    async fn ensure(&self, cache: &Arc<Cache>, path: &str, c: &ChunkRef) -> Result<(), DataError> {
        let present = |hash: String, size: u64| {
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || cache.present(&hash, size))
        };
        if present(c.hash.clone(), c.size).await.unwrap_or(false) {
            self.count(|s| s.cache_hits += 1);
            return Ok(());
        }
        let _slot = self.fetch.acquire().await;
        let units = window::units(c.size, WINDOW_BYTES);
        let _room = self.window.acquire_many(units).await;
        let hash = c.hash.clone();
        let cache_ref = cache.clone();
        let lock = tokio::task::spawn_blocking(move || cache_ref.lock(&hash)).await.map_err(blocking_err).and_then(|r| r);
        let _lock = lock.map_err(|e| self.cache_err(cache, e))?;
        if present(c.hash.clone(), c.size).await.unwrap_or(false) {
            self.count(|s| s.cache_hits += 1);
            return Ok(());
        }
        let data = self.fetch_from_store(path, c).await?;
        let hash = c.hash.clone();
        let cache_ref = cache.clone();
        let evicted = tokio::task::spawn_blocking(move || {
            cache_ref.insert(&hash, &data)?;
            cache_ref.evict_if_over()
        })
        .await
        .map_err(blocking_err)
        .and_then(|r| r)
        .map_err(|e| self.cache_err(cache, e))?;
        self.count(|s| s.cache_evicted += evicted.0);
        Ok(())
    }

    /// Chunk `c`'s bytes, checked: from the cache when there is one (fetching what is
    /// missing or corrupt there), else from the store.
    async fn chunk(&self, path: &str, c: &ChunkRef) -> Result<Vec<u8>, DataError> {
        let Some(cache) = &self.cache else {
            let _slot = self.fetch.acquire().await;
            return self.fetch_from_store(path, c).await;
        };
        // Another job may evict an entry between its fetch and its use: a few tries,
        // then straight from the store.
        for _ in 0..3 {
            let (hash, size) = (c.hash.clone(), c.size);
            let cache_ref = cache.clone();
            match tokio::task::spawn_blocking(move || cache_ref.take(&hash, size)).await.map_err(|e| self.file_err(path, e.to_string()))? {
                Take::Hit(data) => return Ok(data),
                Take::Missing => {}
                Take::Corrupt(why) => {
                    tracing::warn!("cached chunk {} in {} was corrupt ({why}): removed, fetching it again", c.hash, cache.root().display());
                    self.count(|s| s.cache_corrupt += 1);
                }
            }
            self.ensure(cache, path, c).await?;
        }
        let _slot = self.fetch.acquire().await;
        self.fetch_from_store(path, c).await
    }

    /// Write file `f` into `target`: its chunks made present in the cache first (many at
    /// once), then taken in order, the whole file hashed as it is written.
    async fn file(&self, target: &Path, f: &FileEntry) -> Result<(), DataError> {
        if let Some(cache) = &self.cache {
            let mut seen = std::collections::HashSet::new();
            futures::stream::iter(f.chunks.iter().filter(|c| seen.insert(c.hash.as_str())))
                .map(|c| self.ensure(cache, &f.path, c))
                .buffer_unordered(self.fetch.available_permits().max(1))
                .try_collect::<()>()
                .await?;
        }
        let _writer = match self.cache {
            Some(_) => Some(self.writers.acquire().await),
            None => None,
        };
        let (t, rel) = (target.to_path_buf(), f.path.clone());
        let mut out = tokio::task::spawn_blocking(move || create_file(&t, &rel))
            .await
            .map_err(blocking_err)
            .and_then(|r| r)
            .map_err(|e| self.file_err(&f.path, e.to_string()))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        for c in &f.chunks {
            let data = self.chunk(&f.path, c).await?;
            written += data.len() as u64;
            (out, hasher) = tokio::task::spawn_blocking(move || {
                hasher.update(&data);
                out.write_all(&data).map(|()| (out, hasher))
            })
            .await
            .map_err(blocking_err)
            .and_then(|r| r)
            .map_err(|e| self.file_err(&f.path, e.to_string()))?;
        }
        let digest = hex::encode(hasher.finalize());
        if written != f.size || digest != f.sha256 {
            return Err(self.file_err(
                &f.path,
                format!("pulled file has {written} bytes and sha256 {digest}; the manifest says {} bytes and {}", f.size, f.sha256),
            ));
        }
        out.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o777)).map_err(|e| self.file_err(&f.path, e.to_string()))?;
        Ok(())
    }
}

/// Create `rel` inside `target` (never outside it, never through a link), empty.
fn create_file(target: &Path, rel: &str) -> std::io::Result<std::fs::File> {
    let path = join_inside(target, rel).ok_or_else(|| std::io::Error::other("path leaves the directory"))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
        if !std::fs::canonicalize(parent)?.starts_with(std::fs::canonicalize(target)?) {
            return Err(std::io::Error::other("parent directory resolves outside the target"));
        }
    }
    std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).mode(0o600).open(&path)
}

/// A checkpoint manifest holding `files`, for restore's pipeline, which takes one.
fn as_checkpoint(m: &DatasetManifest, files: Vec<FileEntry>) -> crate::manifest::Manifest {
    crate::manifest::Manifest {
        format: crate::manifest::FORMAT,
        run_id: m.name.clone(),
        seq: m.version,
        created: m.created,
        reason: crate::manifest::Reason::Final,
        attempt: 0,
        epoch: None,
        step: None,
        meta: Default::default(),
        host: m.host.clone(),
        device: String::new(),
        device_info: None,
        htcondor: Default::default(),
        writer: m.writer.clone(),
        files,
        sizes: Default::default(),
        part: None,
    }
}

/// Write every file of `m` into `work`, an empty directory this process made.
async fn pull_files(store: &Store, m: &DatasetManifest, work: &Path, settings: &PullSettings) -> Result<PullStats, DataError> {
    let name = DatasetName::parse(&m.name).map_err(DataError::Usage)?;
    let concurrency = settings.concurrency.max(1);
    let ctx = Ctx {
        store,
        cache: settings.cache.clone(),
        name: &name,
        version: m.version,
        fetch: tokio::sync::Semaphore::new(concurrency),
        window: tokio::sync::Semaphore::new(window::permits(WINDOW_BYTES)),
        writers: tokio::sync::Semaphore::new(WRITERS),
        stats: Mutex::default(),
    };
    // Without a cache, a file of several chunks needs them in order, which restore's
    // pipeline schedules (and bounds in memory); the rest are fetched here, many at once.
    let (mine, theirs): (Vec<&FileEntry>, Vec<&FileEntry>) = m.files.iter().partition(|f| settings.cache.is_some() || f.chunks.len() <= 1);
    let here = futures::stream::iter(mine).map(|f| ctx.file(work, f)).buffer_unordered(concurrency).try_collect::<()>();
    let restore_side = async {
        if theirs.is_empty() {
            return Ok(());
        }
        let files: Vec<FileEntry> = theirs.iter().map(|f| (*f).clone()).collect();
        let count: (usize, u64) = (files.iter().map(|f| f.chunks.len()).sum(), files.iter().map(|f| f.size).sum());
        restore::download(store, &as_checkpoint(m, files), work, concurrency, &KnownChunks::default()).await.map_err(|e| match e {
            RestoreError::Unavailable { source, .. } => DataError::Store { name: m.name.clone(), source },
            RestoreError::File { path, detail, .. } => ctx.file_err(&path, detail),
            RestoreError::Manifest { source, .. } => {
                DataError::Damaged { name: m.name.clone(), version: m.version, detail: crate::error::chain(source.as_ref()) }
            }
        })?;
        ctx.count(|s| {
            s.fetched_chunks += count.0;
            s.fetched_bytes += count.1;
        });
        Ok(())
    };
    tokio::try_join!(here, restore_side)?;
    let stats = ctx.stats.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(stats)
}

/// Pull dataset `r` (its newest version unless one is named) into `target`. The files go
/// into a directory beside it first and are renamed into place, so a failed pull leaves
/// nothing behind; a `target` that is not empty is moved to `displaced` (never deleted)
/// or, with none, refused.
pub async fn pull(
    store: &Store,
    r: &DataRef,
    target: &Path,
    displaced: Option<&Path>,
    settings: &PullSettings,
) -> anyhow::Result<(DatasetManifest, PullStats)> {
    let start = Instant::now();
    let version = super::resolve(store, r).await?;
    let m = super::load(store, &r.name, version).await?;
    let parent =
        target.parent().ok_or_else(|| DataError::Usage(format!("{}: name a directory for the dataset, not the root", target.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| DataError::Usage(format!("cannot create {}: {e}", parent.display())))?;
    let work: PathBuf = parent.join(format!(".baton-data-{}-{}", r.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| DataError::Usage(format!("cannot write in {}: {e}", parent.display())))?;
    let pulled = pull_files(store, &m, &work, settings).await;
    let placed = match pulled {
        Ok(stats) => restore::put_in_place(&work, target, displaced).map(|()| stats),
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_dir_all(&work);
    let mut stats = placed?;
    stats.dataset = m.name.clone();
    stats.version = m.version;
    stats.path = target.display().to_string();
    stats.files = m.files.len();
    stats.bytes = m.sizes.logical_bytes;
    stats.chunks = m.chunks().len();
    stats.cache = settings.cache.as_ref().map(|c| c.root().display().to_string());
    stats.seconds = start.elapsed().as_secs_f64();
    Ok((m, stats))
}

impl std::fmt::Display for PullStats {
    /// One line saying what a pull did, for `data pull` and `run --data`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::format;
        write!(
            f,
            "dataset {} version {} into {}: {} file(s), {} in {}; {} chunk(s) fetched from the store ({})",
            self.dataset,
            self.version,
            self.path,
            self.files,
            format::bytes(self.bytes),
            format::seconds(self.seconds),
            self.fetched_chunks,
            format::bytes(self.fetched_bytes)
        )?;
        if let Some(c) = &self.cache {
            write!(f, ", {} from the cache {c}", self.cache_hits)?;
            if self.cache_corrupt > 0 {
                write!(f, " ({} corrupt entries removed and fetched again)", self.cache_corrupt)?;
            }
        }
        Ok(())
    }
}

/// Every dataset of `baton run --data`, at once, each into its path; what was in a path
/// is moved aside beside it (never deleted), as restore does with the checkpoint directory.
pub async fn pull_all(store: &Store, mounts: &[super::Mount], settings: &PullSettings) -> anyhow::Result<Vec<PullStats>> {
    let pulls = mounts.iter().map(|m| async move {
        let displaced = m.path.with_file_name(format!(
            ".baton-data-{}.displaced",
            m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| m.data.name.to_string())
        ));
        let (_, stats) = pull(store, &m.data, &m.path, Some(&displaced), settings).await?;
        tracing::info!("pulled {stats}");
        Ok::<_, anyhow::Error>(stats)
    });
    futures::future::try_join_all(pulls).await
}
