//! Restore: bring a checkpoint back from the store into a directory, trusting nothing.
//! Every chunk is size- and hash-checked as it arrives, every file is hashed as it is
//! written, and files are only ever created fresh (`O_EXCL | O_NOFOLLOW`) inside a
//! directory baton made itself, so a hostile manifest cannot write outside it.

use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use crate::capture::join_inside;
use crate::chunking;
use crate::error::{Classify, ErrorKind, Failure};
use crate::identity::RunId;
use crate::manifest::{FileEntry, Manifest};
use crate::store::{KnownChunks, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("checkpoint {seq} of run {run}: {source}")]
    Manifest {
        run: String,
        seq: u64,
        #[source]
        source: anyhow::Error,
    },
    #[error("checkpoint {seq}, file {path}: {detail}")]
    File { seq: u64, path: String, detail: String },
    /// The store failed to answer (as opposed to answering with damaged data): not a
    /// reason to fall back to an older checkpoint.
    #[error("checkpoint {seq}: {source}")]
    Unavailable {
        seq: u64,
        #[source]
        source: StoreError,
    },
}

impl Classify for RestoreError {
    /// `Integrity` when the checkpoint itself is damaged (fall back to an older one);
    /// anything else says only that the store could not be asked.
    fn kind(&self) -> ErrorKind {
        match self {
            RestoreError::Unavailable { source, .. } => source.kind(),
            RestoreError::Manifest { source, .. } => source.downcast_ref::<StoreError>().map_or(ErrorKind::Integrity, |e| e.kind()),
            RestoreError::File { .. } => ErrorKind::Integrity,
        }
    }
}

pub async fn load_manifest(store: &Store, run: &RunId, seq: u64) -> Result<Manifest, RestoreError> {
    let wrap = |source: anyhow::Error| RestoreError::Manifest { run: run.to_string(), seq, source };
    let bytes = store.get_manifest_bytes(run, seq).await.map_err(|e| wrap(e.into()))?;
    Manifest::from_store(&bytes, run.as_str(), seq).map_err(|e| wrap(e.into()))
}

/// One chunk, bounded by its size before it is read, decoded and checked against its
/// hash. When the object under the chunk's name is damaged, the damage is marked in the
/// store, so that no upload of any baton reuses it (`store::damage`), and the copies a
/// write-once store may hold beside it are tried in turn.
async fn fetch_chunk(store: &Store, seq: u64, path: &str, hash: String, size: u64) -> Result<Vec<u8>, RestoreError> {
    let unavailable = |source| RestoreError::Unavailable { seq, source };
    let first = match fetch_copy(store, &hash, 0, size).await {
        Ok(data) => return Ok(data),
        Err(Fetch::Unavailable(e)) => return Err(unavailable(e)),
        Err(Fetch::Damaged { detail, missing }) => {
            // A chunk that is gone needs no marker: an upload finds it absent and writes it.
            if !missing {
                store.report_damaged(&hash, 0, &detail).await;
            }
            detail
        }
    };
    let copies = match store.chunk_copies(&hash).await {
        Ok(copies) => copies,
        Err(e) if e.kind() == ErrorKind::Integrity => Vec::new(),
        Err(e) => return Err(unavailable(e)),
    };
    for copy in copies {
        match fetch_copy(store, &hash, copy, size).await {
            Ok(data) => {
                tracing::debug!("chunk {hash}: read copy {copy}, the object under its name being damaged ({first})");
                return Ok(data);
            }
            Err(Fetch::Unavailable(e)) => return Err(unavailable(e)),
            Err(Fetch::Damaged { detail, missing: false }) => store.report_damaged(&hash, copy, &detail).await,
            Err(Fetch::Damaged { missing: true, .. }) => {}
        }
    }
    Err(RestoreError::File { seq, path: path.to_string(), detail: first })
}

enum Fetch {
    Damaged { detail: String, missing: bool },
    Unavailable(StoreError),
}

async fn fetch_copy(store: &Store, hash: &str, copy: u32, size: u64) -> Result<Vec<u8>, Fetch> {
    let stored = match store.get_chunk_copy(hash, copy, chunking::max_stored_size(size)).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::Integrity => {
            return Err(Fetch::Damaged { missing: matches!(e, StoreError::NotFound { .. }), detail: e.to_string() })
        }
        Err(e) => return Err(Fetch::Unavailable(e)),
    };
    let hash = hash.to_string();
    match tokio::task::spawn_blocking(move || chunking::decode(&hash, stored, size)).await {
        Ok(Ok(data)) => Ok(data),
        Ok(Err(e)) => Err(Fetch::Damaged { detail: e.to_string(), missing: false }),
        Err(e) => Err(Fetch::Damaged { detail: format!("decoding failed: {e}"), missing: false }),
    }
}

/// Chunk `hash` of `size` bytes, read and checked (from a good copy if the store holds one).
pub async fn read_chunk(store: &Store, hash: &str, size: u64) -> Result<Vec<u8>, RestoreError> {
    fetch_chunk(store, 0, hash, hash.to_string(), size).await
}

/// Read chunk `hash` of `size` bytes back and check it, as a restore would: `None` when
/// it is intact (in some copy), else why not. `Err` only when the store cannot be asked.
pub async fn check_chunk(store: &Store, hash: &str, size: u64) -> Result<Option<String>, StoreError> {
    match fetch_chunk(store, 0, "", hash.to_string(), size).await {
        Ok(_) => Ok(None),
        Err(RestoreError::Unavailable { source, .. }) => Err(source),
        Err(RestoreError::File { detail, .. }) => Ok(Some(detail)),
        Err(other) => Ok(Some(other.to_string())),
    }
}

/// The read pipeline every reader shares (restore writes the bytes to a file, verify
/// discards them): fetch and decode up to `concurrency` chunks at once, in order, while
/// one blocking thread hashes the file and hands its bytes to `out`. The file's size
/// and sha256 must match the manifest.
async fn read_file<W: Write + Send + 'static>(
    store: &Store,
    seq: u64,
    f: &FileEntry,
    out: W,
    concurrency: usize,
    known: &KnownChunks,
) -> Result<W, RestoreError> {
    let err = |detail: String| RestoreError::File { seq, path: f.path.clone(), detail };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(concurrency.max(1));
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String, W)> {
        let mut out = out;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(data) = rx.blocking_recv() {
            hasher.update(&data);
            out.write_all(&data)?;
            written += data.len() as u64;
        }
        Ok((written, hex::encode(hasher.finalize()), out))
    });
    let mut fetches = futures::stream::iter(f.chunks.iter().cloned())
        .map(|c| fetch_chunk(store, seq, &f.path, c.hash, c.size))
        .buffered(concurrency.max(1));
    let mut i = 0;
    let mut fetched = Ok(());
    while let Some(chunk) = fetches.next().await {
        let data = match chunk {
            Ok(d) => d,
            Err(e) => {
                if e.kind() == ErrorKind::Integrity {
                    known.mark_damaged(&f.chunks[i].hash);
                }
                fetched = Err(e);
                break;
            }
        };
        known.insert(f.chunks[i].hash.clone());
        i += 1;
        if tx.send(data).await.is_err() {
            break; // the writer failed; its error is reported below
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| err(e.to_string()))?.map_err(|e| err(e.to_string()));
    fetched?;
    let (written, digest, out) = written?;
    if written != f.size || digest != f.sha256 {
        return Err(err(format!("restored file has {written} bytes and sha256 {digest}; manifest says {} bytes and {}", f.size, f.sha256)));
    }
    Ok(out)
}

/// Create `f` inside `target` (never outside it, never through a link) and fill it.
async fn write_file(
    store: &Store,
    seq: u64,
    target: &Path,
    f: &FileEntry,
    concurrency: usize,
    known: &KnownChunks,
) -> Result<(), RestoreError> {
    let err = |detail: String| RestoreError::File { seq, path: f.path.clone(), detail };
    let path = join_inside(target, &f.path).ok_or_else(|| err("path leaves the directory".into()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        let real = std::fs::canonicalize(parent).map_err(|e| err(e.to_string()))?;
        let root = std::fs::canonicalize(target).map_err(|e| err(e.to_string()))?;
        if !real.starts_with(&root) {
            return Err(err("parent directory resolves outside the target".into()));
        }
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
    let out = read_file(store, seq, f, out, concurrency, known).await?;
    out.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o777)).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Read every chunk of `f` back and check it, as a restore would, writing nothing.
pub async fn check_file(store: &Store, seq: u64, f: &FileEntry, concurrency: usize) -> Result<(), RestoreError> {
    read_file(store, seq, f, std::io::sink(), concurrency, &KnownChunks::default()).await.map(drop)
}

/// Write every file of `m` into `target`, an empty directory this process created.
pub async fn download(store: &Store, m: &Manifest, target: &Path, concurrency: usize, known: &KnownChunks) -> Result<(), RestoreError> {
    m.validate().map_err(|e| RestoreError::Manifest { run: m.run_id.clone(), seq: m.seq, source: e.into() })?;
    // Several files at once, each hashed whole in order on its own thread, sharing the
    // window of chunks in flight: a checkpoint of weights and optimizer state keeps two
    // hashers busy instead of one.
    let concurrency = concurrency.max(1);
    let files_at_once = m.files.len().clamp(1, 4).min(concurrency);
    let window = (concurrency / files_at_once).max(1);
    let mut writes =
        futures::stream::iter(&m.files).map(|f| write_file(store, m.seq, target, f, window, known)).buffer_unordered(files_at_once);
    while let Some(written) = writes.next().await {
        written?;
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct Restored {
    /// The checkpoint restored and the directory it is in, or none: a fresh start.
    pub found: Option<(Manifest, std::path::PathBuf)>,
    /// Newer checkpoints that were damaged and skipped, with why.
    pub skipped: Vec<(u64, String)>,
    pub seconds: f64,
}

/// Restore the newest checkpoint of `run` that is whole into `work/restore-<seq>`.
/// Damaged checkpoints are skipped with a loud warning, never half-used.
pub async fn restore_latest(store: &Store, run: &RunId, work: &Path, concurrency: usize, known: &KnownChunks) -> anyhow::Result<Restored> {
    let start = Instant::now();
    let seqs = store.list_manifests(run).await?;
    let mut skipped = Vec::new();
    for &seq in seqs.iter().rev() {
        let dir = work.join(format!("restore-{seq}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let result = async {
            let m = load_manifest(store, run, seq).await?;
            download(store, &m, &dir, concurrency, known).await?;
            Ok::<_, RestoreError>(m)
        }
        .await;
        match result {
            Ok(manifest) => {
                return Ok(Restored { found: Some((manifest, dir)), skipped, seconds: start.elapsed().as_secs_f64() });
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                // A store that cannot be reached is not a damaged checkpoint: stop
                // rather than silently fall back to older work.
                if e.kind() != ErrorKind::Integrity {
                    return Err(anyhow::Error::from(e));
                }
                let why = crate::error::chain(&e);
                tracing::warn!("SKIPPING DAMAGED CHECKPOINT {seq} of run {run}: {why}; falling back to the previous one");
                skipped.push((seq, why));
            }
        }
    }
    if !skipped.is_empty() {
        tracing::warn!("no intact checkpoint left for run {run}; {} damaged ones skipped, starting fresh", skipped.len());
    }
    Ok(Restored { found: None, skipped, seconds: start.elapsed().as_secs_f64() })
}

/// Put a restored directory in place of `target`. An empty directory there is replaced;
/// anything else is moved to `displaced` (never deleted) or, with no place to move it
/// to, refused.
pub fn put_in_place(restored: &Path, target: &Path, displaced: Option<&Path>) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(target) {
        let empty = meta.is_dir() && std::fs::read_dir(target).map(|mut d| d.next().is_none()).unwrap_or(false);
        match (empty, displaced) {
            (true, _) => std::fs::remove_dir(target)?,
            (false, Some(aside)) => {
                let _ = std::fs::remove_dir_all(aside);
                std::fs::rename(target, aside)?;
                tracing::warn!("{} was not empty; its old contents were moved to {}", target.display(), aside.display());
            }
            (false, None) => anyhow::bail!("{} exists and is not an empty directory", target.display()),
        }
    }
    std::fs::rename(restored, target).map_err(|e| anyhow::anyhow!("cannot move the restored checkpoint into {}: {e}", target.display()))
}

/// `baton restore`: checkpoint `seq` (else the newest intact one) of `run` into `target`,
/// a new or empty directory. The download goes next to it and is renamed into place, so
/// a failed restore leaves nothing behind.
pub async fn restore_into(store: &Store, run: &RunId, seq: Option<u64>, target: &Path, concurrency: usize) -> anyhow::Result<Manifest> {
    let parent = target.parent().ok_or_else(|| crate::error::usage("--to must name a directory"))?;
    std::fs::create_dir_all(parent)?;
    let work = parent.join(format!(".baton-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let known = KnownChunks::default();
    let found = async {
        match seq {
            Some(seq) => {
                let m = load_manifest(store, run, seq).await?;
                let dir = work.join("data");
                std::fs::create_dir_all(&dir)?;
                download(store, &m, &dir, concurrency, &known).await?;
                Ok::<_, anyhow::Error>(Some((m, dir)))
            }
            None => Ok(restore_latest(store, run, &work, concurrency, &known).await?.found),
        }
    }
    .await;
    let placed = match found {
        Ok(Some((m, dir))) => put_in_place(&dir, target, None).map(|()| m),
        Ok(None) => Err(Failure::new(ErrorKind::Integrity, format!("run {run} has no intact checkpoint in {}", store.url())).into()),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&work);
    placed
}
