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
use crate::window;

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
    let limit = chunking::max_stored_size(size);
    let stored = match store.get_chunk_copy(hash, copy, limit).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::Integrity => {
            return Err(Fetch::Damaged { missing: matches!(e, StoreError::NotFound { .. }), detail: e.to_string() })
        }
        Err(e) => return Err(Fetch::Unavailable(e)),
    };
    let served = match decode(hash, stored, size).await {
        Ok(data) => return Ok(data),
        Err(detail) => detail,
    };
    // A cache may hold a damaged copy of a good object (its transfer checksum is of its
    // own bytes, so only the hash tells): look at the origin before calling the store's
    // object damaged and marking it so.
    match store.get_chunk_copy_from_origin(hash, copy, limit).await {
        Ok(None) => Err(Fetch::Damaged { detail: served, missing: false }),
        Ok(Some(stored)) => match decode(hash, stored, size).await {
            Ok(data) => {
                tracing::warn!("chunk {hash}: the copy a cache served was damaged ({served}); read it from the origin instead");
                Ok(data)
            }
            Err(detail) => Err(Fetch::Damaged { detail, missing: false }),
        },
        Err(e) if e.kind() == ErrorKind::Integrity => {
            Err(Fetch::Damaged { missing: matches!(e, StoreError::NotFound { .. }), detail: e.to_string() })
        }
        // The origin cannot be asked: the damage may be the cache's alone, so it is not
        // marked in the store.
        Err(e) => Err(Fetch::Unavailable(e)),
    }
}

/// Decode and check one stored chunk; why not, when its bytes are not the chunk's.
async fn decode(hash: &str, stored: bytes::Bytes, size: u64) -> Result<Vec<u8>, String> {
    let hash = hash.to_string();
    match tokio::task::spawn_blocking(move || chunking::decode(&hash, stored, size)).await {
        Ok(Ok(data)) => Ok(data),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("decoding failed: {e}")),
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

/// Chunks fetched at once by default: enough to cover a few tens of milliseconds of
/// round trip at several hundred MiB/s (docs/benchmarks-tools.md).
pub const CONCURRENCY: usize = 16;
/// Bytes of chunks fetched but not yet written, over all the files of a read: what
/// bounds a restore's memory, whatever the chunk sizes and the concurrency. With large
/// files' chunks at 4 MiB on average, 32 MiB held only six or seven of them, and a
/// restore from a local S3 server waited on the server's time per request: 48 MiB was
/// 1.4x as fast (docs/performance.md) at a peak RSS of ~95 MiB; 64 and 128 MiB were
/// no faster and took ~120 and ~175 MiB.
pub const WINDOW_BYTES: u64 = 48 << 20;
/// The most the window grows to for a store far away.
pub const WINDOW_MAX: u64 = 128 << 20;
/// The rate a widened window keeps up across the store's round trip, about what one
/// restore here reads from a near server: 50 ms adds 32 MiB.
const RATE_TO_COVER: u64 = 640 << 20;
/// Files written at once. Each is hashed whole, in order, on its own thread, so a
/// checkpoint of weights and optimizer state keeps several hashers busy.
const FILES_AT_ONCE: usize = 4;

/// The byte window a read from a store `rtt` away needs: [`WINDOW_BYTES`], plus what
/// [`RATE_TO_COVER`] brings in one round trip, up to [`WINDOW_MAX`]. At 50 ms of added
/// round trip a restore from a local S3 server reached 0.83 of its speed without it in
/// 48 MiB, 0.94 in 64 (docs/performance.md).
fn window_for_round_trip(rtt: Option<std::time::Duration>) -> u64 {
    window::covering(WINDOW_BYTES, rtt.unwrap_or_default(), RATE_TO_COVER, WINDOW_MAX)
}

/// About one round trip to the store, to size a read's window: the quicker of two
/// HEADs of its first chunk, asked before anything else is in flight (the first may
/// also open a connection). Only for reads larger than the base window, where it can
/// matter; `None` when the store does not answer (the read itself then says why).
async fn round_trip(store: &Store, files: &[FileEntry]) -> Option<std::time::Duration> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let first = files.iter().find_map(|f| f.chunks.first())?;
    if total <= WINDOW_BYTES {
        return None;
    }
    let mut quickest: Option<std::time::Duration> = None;
    for _ in 0..2 {
        let start = std::time::Instant::now();
        store.has_chunk(&first.hash).await.ok()?;
        let took = start.elapsed();
        quickest = Some(quickest.map_or(took, |q| q.min(took)));
    }
    quickest
}

/// A checked chunk on its way to its file's writer, holding its share of the window
/// until it is written.
struct Piece {
    index: usize,
    data: Vec<u8>,
    _window: tokio::sync::OwnedSemaphorePermit,
}

/// What a file's writer hands back: bytes written, their sha256, the output, and each
/// chunk's fingerprint (`chunking::Layout`, so that the next upload of the file here
/// recognises its unchanged chunks).
type Written<W> = (u64, String, W, Vec<u128>);

/// Write one file's chunks in order as they arrive (in any order), hashing the whole file.
fn spawn_writer<W: Write + Send + 'static>(
    mut out: W,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Piece>,
) -> tokio::task::JoinHandle<std::io::Result<Written<W>>> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut fingerprints = Vec::new();
        let mut written = 0u64;
        let mut next = 0usize;
        let mut early = std::collections::BTreeMap::new();
        while let Some(piece) = rx.blocking_recv() {
            early.insert(piece.index, piece);
            while let Some(piece) = early.remove(&next) {
                hasher.update(&piece.data);
                fingerprints.push(chunking::fingerprint(&piece.data));
                out.write_all(&piece.data)?;
                written += piece.data.len() as u64;
                next += 1;
            }
        }
        Ok((written, hex::encode(hasher.finalize()), out, fingerprints))
    })
}

/// Which chunk to fetch next: round robin over up to [`FILES_AT_ONCE`] files, in file
/// order. Every chunk is issued after the chunks before it in its file, so a writer
/// waiting for an earlier chunk waits only for one already in flight: the window
/// cannot fill with chunks that wait on one that never gets a place.
struct Schedule<'a> {
    files: &'a [FileEntry],
    next_file: usize,
    active: Vec<(usize, usize)>,
    turn: usize,
}

impl<'a> Schedule<'a> {
    fn new(files: &'a [FileEntry]) -> Self {
        let mut s = Schedule { files, next_file: 0, active: Vec::new(), turn: 0 };
        s.fill();
        s
    }

    fn fill(&mut self) {
        while self.active.len() < FILES_AT_ONCE && self.next_file < self.files.len() {
            if !self.files[self.next_file].chunks.is_empty() {
                self.active.push((self.next_file, 0));
            }
            self.next_file += 1;
        }
    }

    fn peek(&self) -> Option<(usize, usize)> {
        self.active.get(self.turn % self.active.len().max(1)).copied()
    }

    fn advance(&mut self) {
        let at = self.turn % self.active.len();
        self.active[at].1 += 1;
        if self.active[at].1 == self.files[self.active[at].0].chunks.len() {
            self.active.remove(at);
            self.fill();
        } else {
            self.turn = at + 1;
        }
    }
}

struct Writer<W> {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Piece>>,
    /// Chunks handed over so far: the sender is closed after the file's last one, which
    /// need not be its last chunk.
    delivered: usize,
    handle: tokio::task::JoinHandle<std::io::Result<Written<W>>>,
}

/// The read pipeline every reader shares (restore writes the bytes to files, verify
/// discards them): up to `concurrency` chunks of any of the files fetched, decoded and
/// checked at once within [`WINDOW_BYTES`], each file written and hashed in order on
/// its own thread. Every file's size and sha256 must match the manifest. `open` makes a
/// file's output when its first chunk is about to be fetched.
async fn read_files<W, O>(
    store: &Store,
    seq: u64,
    files: &[FileEntry],
    mut open: O,
    concurrency: usize,
    known: &KnownChunks,
) -> Result<Vec<(W, Vec<u128>)>, RestoreError>
where
    W: Write + Send + 'static,
    O: FnMut(&FileEntry) -> Result<W, RestoreError>,
{
    let err = |f: &FileEntry, detail: String| RestoreError::File { seq, path: f.path.clone(), detail };
    let rtt = round_trip(store, files).await;
    let window_bytes = window_for_round_trip(rtt);
    tracing::debug!("reading with {} MiB of chunks in flight (round trip {rtt:?})", window_bytes >> 20);
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(window::permits(window_bytes)));
    let mut writers: Vec<Option<Writer<W>>> = files.iter().map(|_| None).collect();
    let mut order = Schedule::new(files);
    type Fetched = (usize, usize, Result<Vec<u8>, RestoreError>, tokio::sync::OwnedSemaphorePermit);
    let mut in_flight = futures::stream::FuturesUnordered::<futures::future::BoxFuture<'_, Fetched>>::new();
    let mut failure: Option<RestoreError> = None;
    loop {
        let next = match failure {
            None if in_flight.len() < concurrency.max(1) => order.peek(),
            _ => None,
        };
        if next.is_none() && in_flight.is_empty() {
            break;
        }
        let room = async {
            match next {
                Some((fi, ci)) => window.clone().acquire_many_owned(window::units(files[fi].chunks[ci].size, window_bytes)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((fi, ci, fetched, permit)) = in_flight.next(), if !in_flight.is_empty() => {
                let f: &FileEntry = &files[fi];
                let hash = &f.chunks[ci].hash;
                match fetched {
                    Ok(data) => {
                        known.insert(hash.clone());
                        let piece = Piece { index: ci, data, _window: permit };
                        if let Some(w) = writers[fi].as_mut() {
                            // A writer that stopped has failed; its error is reported below.
                            if w.tx.as_ref().is_none_or(|tx| tx.send(piece).is_err()) {
                                failure.get_or_insert_with(|| err(f, "writing stopped".into()));
                            }
                            w.delivered += 1;
                            if w.delivered == f.chunks.len() {
                                w.tx = None;
                            }
                        }
                    }
                    Err(e) => {
                        if e.kind() == ErrorKind::Integrity {
                            known.mark_damaged(hash);
                        }
                        failure.get_or_insert(e);
                    }
                }
            }
            permit = room => {
                let Some((fi, ci)) = next else { continue };
                let Ok(permit) = permit else { break }; // never closed
                let f = &files[fi];
                if writers[fi].is_none() {
                    match open(f) {
                        Ok(out) => {
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            writers[fi] = Some(Writer { tx: Some(tx), delivered: 0, handle: spawn_writer(out, rx) });
                        }
                        Err(e) => {
                            failure = Some(e);
                            continue;
                        }
                    }
                }
                order.advance();
                let c = f.chunks[ci].clone();
                in_flight.push(Box::pin(async move { (fi, ci, fetch_chunk(store, seq, &f.path, c.hash, c.size).await, permit) }));
            }
        }
    }
    let mut outs = Vec::with_capacity(files.len());
    let mut first_error = failure;
    for (f, w) in files.iter().zip(writers) {
        let result = match w {
            Some(Writer { tx, handle, .. }) => {
                drop(tx);
                match handle.await {
                    Ok(Ok(done)) => Ok(done),
                    Ok(Err(e)) => Err(err(f, e.to_string())),
                    Err(e) => Err(err(f, e.to_string())),
                }
            }
            // No chunks (an empty file), or never reached because of an earlier failure.
            None if first_error.is_none() => open(f).map(|out| (0, hex::encode(Sha256::digest(b"")), out, Vec::new())),
            None => continue,
        };
        match result {
            Ok((written, digest, out, fingerprints)) if written == f.size && digest == f.sha256 => outs.push((out, fingerprints)),
            Ok((written, digest, _, _)) => {
                first_error.get_or_insert_with(|| {
                    err(
                        f,
                        format!("restored file has {written} bytes and sha256 {digest}; manifest says {} bytes and {}", f.size, f.sha256),
                    )
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outs),
    }
}

/// Create `f` inside `target` (never outside it, never through a link), empty.
fn create_file(seq: u64, target: &Path, f: &FileEntry) -> Result<std::fs::File, RestoreError> {
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
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(format!("cannot create {}: {e}", path.display())))
}

/// Read every chunk of `f` back and check it, as a restore would, writing nothing.
pub async fn check_file(store: &Store, seq: u64, f: &FileEntry, concurrency: usize) -> Result<(), RestoreError> {
    read_files(store, seq, std::slice::from_ref(f), |_| Ok(std::io::sink()), concurrency, &KnownChunks::default()).await.map(drop)
}

/// Write every file of `m` into `target`, an empty directory this process created.
pub async fn download(store: &Store, m: &Manifest, target: &Path, concurrency: usize, known: &KnownChunks) -> Result<(), RestoreError> {
    m.validate().map_err(|e| RestoreError::Manifest { run: m.run_id.clone(), seq: m.seq, source: e.into() })?;
    let outs = read_files(store, m.seq, &m.files, |f| create_file(m.seq, target, f), concurrency, known).await?;
    for (f, (out, fingerprints)) in m.files.iter().zip(outs) {
        // The first checkpoint after a restart changes in places too. Only this format's
        // cuts are the cuts an upload here would make (`chunking::cut_for`).
        if m.format == crate::manifest::FORMAT && fingerprints.len() == f.chunks.len() {
            let chunks = f
                .chunks
                .iter()
                .zip(fingerprints)
                .map(|(c, fingerprint)| chunking::LaidChunk { len: c.size, hash: c.hash.clone(), fingerprint })
                .collect();
            known.remember_layout(&f.path, chunking::Layout { cut: chunking::cut_for(f.size), size: f.size, chunks });
        }
        out.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o777)).map_err(|e| RestoreError::File {
            seq: m.seq,
            path: f.path.clone(),
            detail: e.to_string(),
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_read_window_covers_the_round_trip_up_to_its_bound() {
        assert_eq!(window_for_round_trip(None), WINDOW_BYTES, "a small read, or a store that did not answer");
        assert!(window_for_round_trip(Some(Duration::from_micros(500))) < WINDOW_BYTES + window::UNIT * 8, "a near server: about the base");
        assert_eq!(window_for_round_trip(Some(Duration::from_millis(50))), WINDOW_BYTES + (32 << 20));
        assert_eq!(window_for_round_trip(Some(Duration::from_secs(2))), WINDOW_MAX);
        assert_eq!(
            window::units(WINDOW_MAX, WINDOW_BYTES) as u64,
            WINDOW_BYTES / window::UNIT,
            "one chunk never needs more than the window"
        );
    }
}
