//! Upload: turn a captured snapshot into chunks in the store, then write the manifest.
//!
//! One reader per file cuts chunks and hashes the whole file as it goes; up to
//! `concurrency` chunks of a file are hashed, checked, compressed and sent at once, in a
//! window that keeps their order, and a few files go at once. Memory is bounded by
//! [`WINDOW_BYTES`] of chunks read and not yet sent (more for a distant store, up to
//! [`WINDOW_MAX`]), never by the file or chunk sizes.

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Instant;

use crate::attempt::Attempt;
use crate::capture::Snapshot;
use crate::chunking;
use crate::chunking::Plausible;
use crate::error::{Classify, ErrorKind};
use crate::hash_ahead::{self, FileHash};
use crate::manifest::{ChunkRef, FileEntry, Manifest, Reason, Sizes, FORMAT};
use crate::priority;
use crate::restore;
use crate::store::{Damaged, KnownChunks, PutOutcome, Store, StoreError};
use crate::window::{self, UNIT};

#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub zstd_level: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { concurrency: 8, zstd_level: 1 }
    }
}

/// What the trainer said when it committed.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub seq: u64,
    pub reason: Reason,
    pub epoch: Option<u64>,
    pub step: Option<u64>,
    pub meta: BTreeMap<String, String>,
    pub created: f64,
}

struct ChunkOut {
    hash: String,
    size: u64,
    new: bool,
    stored: u64,
}

/// What asking the store teaches an upload.
///
/// Whether to ask for a chunk before sending it: asking (a HEAD) saves sending bytes the
/// store already has (another run's, an earlier attempt's), but costs a round trip per
/// chunk, which on a distant store is most of a chunk's time in the window while a
/// checkpoint of new bytes finds nothing. So an upload asks first until a few chunks in a
/// row were not there, then sends first, with a create-only write that finds an existing
/// chunk anyway (and reads that one back to check it, as a suspect answer to asking
/// would); a chunk found either way makes it ask first again.
///
/// And the round trip: the quickest answer to asking is about one round trip to the
/// store (the first ones may also open a connection, so it takes the quickest of at
/// least two), and the window of bytes in flight grows to cover it (see [`WINDOW_BYTES`]).
struct Probe {
    /// Chunks of this file in a row that the store did not have. Per file: a checkpoint
    /// whose weights the store has and whose optimizer state is new would otherwise
    /// switch back and forth with every chunk, sending first the chunks the store has.
    misses: std::sync::atomic::AtomicU32,
    /// What the round trip teaches, shared by the files of an upload.
    trip: std::sync::Arc<RoundTrip>,
}

struct RoundTrip {
    /// The window of bytes read and not yet stored, in [`UNIT`]s.
    window: std::sync::Arc<tokio::sync::Semaphore>,
    /// Units added to the window for the round trip so far.
    grown: std::sync::atomic::AtomicU32,
    /// Answers to asking so far, and the quickest, in microseconds.
    answers: std::sync::atomic::AtomicU32,
    quickest_us: std::sync::atomic::AtomicU64,
}

/// Chunks in a row not in the store before an upload stops asking first.
const MISSES_BEFORE_SENDING_FIRST: u32 = 4;

impl Probe {
    fn new(window: std::sync::Arc<tokio::sync::Semaphore>) -> Probe {
        let trip = RoundTrip {
            window,
            grown: Default::default(),
            answers: Default::default(),
            quickest_us: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        Probe { misses: Default::default(), trip: std::sync::Arc::new(trip) }
    }

    /// A probe for another file of the same upload: its own count of misses, the same
    /// window and round trip.
    fn for_another_file(&self) -> Probe {
        Probe { misses: Default::default(), trip: self.trip.clone() }
    }

    fn ask_first(&self) -> bool {
        self.misses.load(std::sync::atomic::Ordering::Relaxed) < MISSES_BEFORE_SENDING_FIRST
    }

    fn found(&self) {
        self.misses.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn missed(&self) {
        self.misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// One answer to asking took `took`: widen the window to what the round trip needs.
    fn round_trip(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let trip = &self.trip;
        let took = took.as_micros().min(u64::MAX as u128) as u64;
        let quickest = trip.quickest_us.fetch_min(took, Relaxed).min(took);
        if trip.answers.fetch_add(1, Relaxed) == 0 {
            return;
        }
        let rtt = std::time::Duration::from_micros(quickest);
        let want = (window_for_round_trip(rtt).saturating_sub(WINDOW_BYTES) / UNIT) as u32;
        let grown = trip.grown.fetch_max(want, Relaxed);
        if want > grown {
            trip.window.add_permits((want - grown) as usize);
        }
    }
}

/// The byte window an upload needs to keep `rtt` from setting its pace: [`WINDOW_BYTES`]
/// (what the local disk or a near server needs), plus what [`RATE_TO_COVER`] sends in
/// one round trip, up to [`WINDOW_MAX`].
fn window_for_round_trip(rtt: std::time::Duration) -> u64 {
    window::covering(WINDOW_BYTES, rtt, RATE_TO_COVER, WINDOW_MAX)
}

/// What the store holds under a chunk's name, asked before sending it.
enum There {
    Nothing,
    Intact,
    Damaged,
}

/// Ask the store for chunk `hash` (`data` its bytes): an object of a size no encoding of
/// them takes is damaged, one of a possible but unusual size is read back and checked.
async fn ask(store: &Store, probe: &Probe, hash: &str, data: &Bytes) -> anyhow::Result<There> {
    let size = data.len() as u64;
    let asked = Instant::now();
    let answer = store.has_chunk(hash).await;
    probe.round_trip(asked.elapsed());
    match answer {
        Ok(None) => Ok(There::Nothing),
        Ok(Some(stored)) => match chunking::plausible_stored_size(stored, data) {
            Plausible::Yes => Ok(There::Intact),
            Plausible::Suspect => match restore::check_chunk(store, hash, size).await? {
                None => Ok(There::Intact),
                Some(_) => Ok(There::Damaged), // marked by the check
            },
            Plausible::No => {
                let why = format!("{stored} bytes stored, which no encoding of its {size} bytes takes");
                store.report_damaged(hash, 0, &why).await;
                tracing::warn!("chunk {hash} in the store is damaged ({why})");
                Ok(There::Damaged)
            }
        },
        // Something that is not an object holds the name (a directory store's
        // directory, an unreadable file): the same as damaged bytes.
        Err(e) if e.kind() == ErrorKind::Integrity => {
            store.report_damaged(hash, 0, &e.to_string()).await;
            Ok(There::Damaged)
        }
        Err(e) => Err(e.into()),
    }
}

/// Store one chunk. `hash` is its sha256 when the chunker already knows it (a chunk
/// unchanged since this process last stored the file: `chunking::Chunker`).
async fn put_one(
    store: &Store,
    known: &KnownChunks,
    marked: &Damaged,
    probe: &Probe,
    data: Bytes,
    hash: Option<String>,
    level: i32,
) -> anyhow::Result<ChunkOut> {
    let (data, hash) = match hash {
        Some(hash) => (data, hash),
        None => {
            priority::run(move || {
                let hash = chunking::sha256_hex(&data);
                (data, hash)
            })
            .await?
        }
    };
    let size = data.len() as u64;
    // A chunk some baton found damaged is written again, never reused: reusing it would
    // spread the damage into this checkpoint and every later one with the same bytes.
    let mut damaged = known.is_damaged(&hash) || (marked.touches(&hash) && !known.was_repaired(&hash));
    if !damaged && known.contains(&hash) {
        return Ok(ChunkOut { hash, size, new: false, stored: 0 });
    }
    let asked = !damaged && probe.ask_first();
    if asked {
        match ask(store, probe, &hash, &data).await? {
            There::Nothing => probe.missed(),
            There::Intact => {
                probe.found();
                known.insert(hash.clone());
                return Ok(ChunkOut { hash, size, new: false, stored: 0 });
            }
            There::Damaged => {
                probe.found();
                damaged = true;
            }
        }
    }
    let encoded = priority::run(move || chunking::encode(data, level)).await??;
    let stored = encoded.len() as u64;
    if !damaged {
        match store.put_chunk(&hash, encoded.clone()).await? {
            PutOutcome::Created => {
                if !asked {
                    probe.missed();
                }
                known.insert(hash.clone());
                return Ok(ChunkOut { hash, size, new: true, stored });
            }
            // Asked first: another writer stored it since (the same bytes under the same name).
            PutOutcome::AlreadyExists if asked => {
                known.insert(hash.clone());
                return Ok(ChunkOut { hash, size, new: false, stored: 0 });
            }
            // Sent first, and the store had it: read it back before this checkpoint names it.
            PutOutcome::AlreadyExists => {
                probe.found();
                // Damaged (and marked by the check) unless it reads back intact.
                if restore::check_chunk(store, &hash, size).await?.is_none() {
                    known.insert(hash.clone());
                    return Ok(ChunkOut { hash, size, new: false, stored: 0 });
                }
            }
        }
    }
    let mut marked = marked.clone();
    marked.insert(&hash, 0);
    let copy = store.write_good_copy(&hash, encoded, &marked).await?;
    tracing::warn!(
        "chunk {hash} is damaged in the store; wrote a good copy{}",
        if copy > 0 { format!(" beside it (copy {copy})") } else { String::new() }
    );
    known.insert_repaired(hash.clone());
    Ok(ChunkOut { hash, size, new: true, stored })
}

/// Bytes of chunks read and not yet stored, over all the files of an upload, on a local
/// disk or a near server: enough to keep both cores busy, and what bounds the upload's
/// memory there. A distant store gets more (`Probe::round_trip`), up to [`WINDOW_MAX`].
/// 16 MiB saved memory but made a directory-store upload 1.15x slower; a chunk's place
/// is instead taken before it is read (`read_file`), so the readers' waiting chunks are
/// inside the window (docs/performance.md).
pub const WINDOW_BYTES: u64 = 32 << 20;
/// The most the window grows to for a store far away.
pub const WINDOW_MAX: u64 = 128 << 20;
/// The rate a widened window keeps up across the round trip: about what one client
/// here sends to a near server (docs/performance.md, "Latency"). 50 ms of round trip
/// adds 32 MiB.
const RATE_TO_COVER: u64 = 640 << 20;
/// Files uploaded at once: each has its own reader (cut and file hash), so a
/// checkpoint of weights and optimizer state keeps both cores busy, and the window
/// does not drain at each file's end.
const FILES_AT_ONCE: usize = 3;

/// Files at least this large have their sha256 taken beside the reader's cutting, one
/// chunk at a time, rather than in the reader's own steps: on the eviction flush of a
/// checkpoint that changed in places the file hash is most of the work, and the other
/// core would otherwise idle.
const HASH_APART: u64 = hash_ahead::FOLLOW_FROM;
/// Chunks queued for a file's hashing (each also holds its share of the window).
const HASH_QUEUE: usize = 4;

/// A chunk's share of the byte window, held until both its upload and the file hash are
/// done with it.
type Share = std::sync::Arc<tokio::sync::OwnedSemaphorePermit>;

enum Piece {
    Chunk { data: Bytes, fingerprint: u128, hash: Option<String>, _share: Share },
    End { sha256: String, size: u64 },
}

/// A file being read: its chunker, and its sha256 when the reader takes it itself.
struct Reading {
    chunker: chunking::Chunker<std::fs::File>,
    inline: Option<(Sha256, u64)>,
}

impl Reading {
    fn open(path: &std::path::Path, hint: Option<std::sync::Arc<chunking::Layout>>) -> std::io::Result<Reading> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let inline = (len < HASH_APART).then(|| (Sha256::new(), 0));
        Ok(Reading { chunker: chunking::Chunker::new(file, len, hint), inline })
    }

    fn next(&mut self) -> std::io::Result<Option<chunking::Cutting>> {
        let next = self.chunker.next().transpose()?;
        if let (Some(c), Some((hasher, size))) = (&next, &mut self.inline) {
            hasher.update(&c.data);
            *size += c.data.len() as u64;
        }
        Ok(next)
    }
}

/// A large file's sha256, taken in order over its chunks beside the reader, a few
/// chunks per hand-off to the CPU pool of the moment (`priority`); from what was read
/// ahead of it during an eviction where that is still its bytes (`hash_ahead`).
struct HashApart {
    tx: tokio::sync::mpsc::Sender<(Bytes, Share)>,
    done: tokio::task::JoinHandle<anyhow::Result<FileHash>>,
}

impl HashApart {
    fn spawn(ahead: Option<std::sync::Arc<hash_ahead::Ahead>>) -> HashApart {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Bytes, Share)>(HASH_QUEUE);
        let done = tokio::spawn(async move {
            let mut state = FileHash::new(ahead);
            while let Some(first) = rx.recv().await {
                let mut queued = vec![first];
                while let Ok(more) = rx.try_recv() {
                    queued.push(more);
                }
                state = priority::run(move || {
                    let mut state = state;
                    for (data, _share) in queued {
                        state.update(data);
                    }
                    state
                })
                .await?;
            }
            Ok(state)
        });
        HashApart { tx, done }
    }

    async fn finish(self) -> anyhow::Result<FileHash> {
        drop(self.tx);
        self.done.await?
    }
}

/// Read one file, sending its chunks and finally its digest. The file's sha256 is taken
/// over the chunks as they are cut, in order: every byte once. Each chunk is cut on the
/// CPU pool of the moment (`priority`), so a file begun in the background while the
/// command trained is finished at normal priority once it is evicted.
fn spawn_reader(
    path: std::path::PathBuf,
    hint: Option<std::sync::Arc<chunking::Layout>>,
    ahead: Option<std::sync::Arc<hash_ahead::Ahead>>,
    window: usize,
    bytes: std::sync::Arc<tokio::sync::Semaphore>,
) -> tokio::sync::mpsc::Receiver<anyhow::Result<Piece>> {
    let (tx, rx) = tokio::sync::mpsc::channel(window);
    tokio::spawn(async move {
        if let Err(e) = read_file(&path, hint, ahead, &bytes, &tx).await {
            let _ = tx.send(Err(e.context(format!("reading {}", path.display())))).await;
        }
    });
    rx
}

async fn read_file(
    path: &std::path::Path,
    hint: Option<std::sync::Arc<chunking::Layout>>,
    ahead: Option<std::sync::Arc<hash_ahead::Ahead>>,
    bytes: &std::sync::Arc<tokio::sync::Semaphore>,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<Piece>>,
) -> anyhow::Result<()> {
    let opening = path.to_path_buf();
    let mut reading = priority::run(move || Reading::open(&opening, hint)).await??;
    let apart = reading.inline.is_none().then(|| HashApart::spawn(ahead));
    let units = |size: u64| window::units(size, WINDOW_BYTES);
    loop {
        // The next chunk's place in the window is taken before it is read, for the most
        // it can hold, and given back down to its size once it is cut: a reader waiting
        // for room holds no chunk outside the window (three of up to 8 MiB each, before).
        let Ok(mut permit) = bytes.clone().acquire_many_owned(units(reading.chunker.next_at_most())).await else {
            return Ok(());
        };
        let (r, next) = priority::run(move || {
            let next = reading.next();
            (reading, next)
        })
        .await?;
        reading = r;
        let Some(chunk) = next? else { break };
        let data = Bytes::from(chunk.data);
        let need = units(data.len() as u64) as usize;
        if permit.num_permits() > need {
            drop(permit.split(permit.num_permits() - need));
        } else if permit.num_permits() < need {
            // The file grew since it was opened.
            let Ok(more) = bytes.clone().acquire_many_owned((need - permit.num_permits()) as u32).await else {
                return Ok(());
            };
            permit.merge(more);
        }
        let share = std::sync::Arc::new(permit);
        if let Some(h) = &apart {
            h.tx.send((data.clone(), share.clone())).await.map_err(|_| anyhow::anyhow!("the file's hashing stopped"))?;
        }
        let piece = Piece::Chunk { data, fingerprint: chunk.fingerprint, hash: chunk.hash, _share: share };
        if tx.send(Ok(piece)).await.is_err() {
            return Ok(()); // the upload was cancelled
        }
        // The common case of a small file: one chunk, and no hand-off to learn there is no second.
        if reading.chunker.at_end() {
            break;
        }
    }
    let read_at = std::time::Instant::now();
    let (sha256, size) = match (reading.inline, apart) {
        (Some((hasher, size)), _) => (hex::encode(hasher.finalize()), size),
        (None, Some(apart)) => {
            let (sha256, size, reused) = apart.finish().await?.finish();
            tracing::debug!(
                "{}: read; its sha256 done {:.3} s later, {} of it taken while it was written",
                path.display(),
                read_at.elapsed().as_secs_f64(),
                crate::format::bytes(reused)
            );
            (sha256, size)
        }
        (None, None) => anyhow::bail!("internal: {} was hashed neither inline nor apart", path.display()),
    };
    let _ = tx.send(Ok(Piece::End { sha256, size })).await;
    Ok(())
}

/// One file's chunks, as its reader sends them, stored in order.
async fn upload_file(
    store: &Store,
    known: &KnownChunks,
    marked: &Damaged,
    probe: &Probe,
    settings: &Settings,
    f: &crate::capture::SnapFile,
    rx: tokio::sync::mpsc::Receiver<anyhow::Result<Piece>>,
) -> anyhow::Result<(FileEntry, (u64, u64))> {
    let mut pieces = tokio_stream_from(rx)
        .map(|piece| async move {
            match piece? {
                // The share of the window is held until the chunk is stored.
                Piece::Chunk { data, fingerprint, hash, _share } => {
                    put_one(store, known, marked, probe, data, hash, settings.zstd_level).await.map(|out| Ok((out, fingerprint)))
                }
                Piece::End { sha256, size } => Ok(Err((sha256, size))),
            }
        })
        .buffered(settings.concurrency.max(1));
    let mut chunks = Vec::new();
    let mut laid = Vec::new();
    let mut digest = None;
    let mut new = (0u64, 0u64);
    while let Some(item) = pieces.next().await {
        match item.map_err(|e| e.context(format!("uploading {}", f.rel)))? {
            Ok((c, fingerprint)) => {
                if c.new {
                    new.0 += c.size;
                    new.1 += c.stored;
                }
                laid.push(chunking::LaidChunk { len: c.size, hash: c.hash.clone(), fingerprint });
                chunks.push(ChunkRef { hash: c.hash, size: c.size });
            }
            Err(end) => digest = Some(end),
        }
    }
    let (sha256, size) = digest.ok_or_else(|| anyhow::anyhow!("{}: reading stopped before the end", f.rel))?;
    known.remember_layout(&f.rel, chunking::Layout { cut: chunking::cut_for(size), size, chunks: laid });
    Ok((FileEntry { path: f.rel.clone(), size, mode: f.mode, sha256, chunks }, new))
}

/// Upload a snapshot and commit it as checkpoint `info.seq`. Dropping the future
/// cancels the upload; the manifest is the last write, so a cancelled upload leaves
/// only unreferenced chunks behind (which `prune` collects).
pub async fn upload(
    store: &Store,
    attempt: &Attempt,
    info: &CommitInfo,
    snap: &Snapshot,
    settings: &Settings,
    known: &KnownChunks,
) -> anyhow::Result<Manifest> {
    let (files, mut sizes) = store_files(store, snap, settings, known, FILES_AT_ONCE).await?;
    sizes.capture_seconds = snap.seconds;
    // A snapshot of hard links is only good if nothing wrote the files while they were read.
    snap.still_intact().map_err(|e| anyhow::anyhow!("{e}; checkpoint {} is not committed", info.seq))?;
    publish(store, attempt, info, files, sizes).await
}

/// Chunk and store every file of `snap`, `files_at_once` files at once (a dataset of
/// many small files needs more than a checkpoint), publishing nothing: the entries for a
/// manifest, and what they added to the store.
pub async fn store_files(
    store: &Store,
    snap: &Snapshot,
    settings: &Settings,
    known: &KnownChunks,
    files_at_once: usize,
) -> anyhow::Result<(Vec<FileEntry>, Sizes)> {
    let start = Instant::now();
    let mut sizes = Sizes::default();
    let mut files = Vec::with_capacity(snap.files.len());
    let window = settings.concurrency.max(1);
    // The damage markers (see `store::damage`), read once per upload.
    let marked = &store.damaged_chunks().await?;
    let bytes = std::sync::Arc::new(tokio::sync::Semaphore::new(window::permits(WINDOW_BYTES)));
    let probe = Probe::new(bytes.clone());
    let probes: &Vec<Probe> = &snap.files.iter().map(|_| probe.for_another_file()).collect();
    // By index: a closure over `&SnapFile` makes the future not `Send` for every lifetime.
    let mut uploads = futures::stream::iter(0..snap.files.len())
        .map(|i| {
            let f = &snap.files[i];
            let rx = spawn_reader(snap.dir.join(&f.rel), known.layout(&f.rel), f.ahead.clone(), window, bytes.clone());
            upload_file(store, known, marked, &probes[i], settings, f, rx).boxed()
        })
        .buffered(files_at_once.max(1));
    while let Some(done) = uploads.next().await {
        let (entry, (new_bytes, stored_bytes)) = done?;
        sizes.logical_bytes += entry.size;
        sizes.new_bytes += new_bytes;
        sizes.stored_bytes += stored_bytes;
        files.push(entry);
    }
    sizes.upload_seconds = start.elapsed().as_secs_f64();
    Ok((files, sizes))
}

/// Commit `info.seq` as the same files as `of`, a checkpoint this attempt made durable
/// whose live files have not changed since (see `capture::FileStamp`): nothing is read
/// or uploaded but the manifest.
pub async fn repeat(store: &Store, attempt: &Attempt, info: &CommitInfo, of: &Manifest) -> anyhow::Result<Manifest> {
    let sizes = Sizes { logical_bytes: of.sizes.logical_bytes, ..Default::default() };
    publish(store, attempt, info, of.files.clone(), sizes).await
}

/// Write the manifest: the last write of a checkpoint, after all its chunks are durable.
async fn publish(store: &Store, attempt: &Attempt, info: &CommitInfo, files: Vec<FileEntry>, sizes: Sizes) -> anyhow::Result<Manifest> {
    let manifest = Manifest {
        format: FORMAT,
        run_id: attempt.run.to_string(),
        seq: info.seq,
        created: info.created,
        reason: info.reason,
        attempt: attempt.number,
        epoch: info.epoch,
        step: info.step,
        meta: info.meta.clone(),
        host: attempt.host.clone(),
        device: attempt.device.clone(),
        device_info: attempt.device_info.clone(),
        htcondor: attempt.htcondor.clone(),
        writer: attempt.writer.clone(),
        files,
        sizes,
        part: attempt.part,
    };
    manifest.validate()?;
    let node = attempt.part.map(|p| p.node);
    match store.put_checkpoint(&attempt.run, info.seq, node, manifest.to_bytes().into()).await {
        Ok(()) => Ok(manifest),
        Err(e) => match (attempt.part, e.kind()) {
            (Some(mine), ErrorKind::Conflict) => Err(part_taken(store, attempt, info.seq, mine, e).await),
            _ => Err(e.into()),
        },
    }
}

/// This node's part of `seq` is already written. By another attempt of this node in
/// this rendezvous generation: a true conflict (two live writers of one node), which
/// stops the attempt. By an attempt of another generation: that is the run's other
/// generation still finishing (a node of the old one commits once more after its peer
/// was evicted and the new one chose its first seq, or the other way round). Parts of
/// two generations never make a complete checkpoint, so this one stays incomplete and
/// the next completes; the attempt goes on.
async fn part_taken(store: &Store, attempt: &Attempt, seq: u64, mine: crate::manifest::Part, e: StoreError) -> anyhow::Error {
    let there = store.get_checkpoint_bytes(&attempt.run, seq, Some(mine.node)).await.ok();
    let theirs = there.and_then(|b| Manifest::from_store_at(&b, &attempt.run.to_string(), seq, Some(mine.node)).ok()).and_then(|m| m.part);
    match theirs {
        Some(p) if p.generation != mine.generation => anyhow::anyhow!(
            "node {}'s part of checkpoint {seq} was already written in rendezvous generation {} (this attempt is in generation {}): \
             an attempt of the other generation committed it while the generations changed over; checkpoint {seq} stays incomplete and the next one completes",
            mine.node,
            p.generation,
            mine.generation
        ),
        _ => e.into(),
    }
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_window_covers_the_round_trip_up_to_its_bound() {
        assert!(window_for_round_trip(Duration::from_micros(20)) < WINDOW_BYTES + UNIT, "a local disk: the base window");
        assert_eq!(window_for_round_trip(Duration::from_millis(50)), WINDOW_BYTES + (32 << 20));
        assert_eq!(window_for_round_trip(Duration::from_secs(2)), WINDOW_MAX);
    }

    #[test]
    fn the_quickest_of_two_answers_sets_the_window_and_it_never_shrinks() {
        let window = std::sync::Arc::new(tokio::sync::Semaphore::new((WINDOW_BYTES / UNIT) as usize));
        let probe = Probe::new(window.clone());
        let base = window.available_permits();
        // The first answer may have opened a connection: alone, it changes nothing.
        probe.round_trip(Duration::from_millis(150));
        assert_eq!(window.available_permits(), base);
        probe.round_trip(Duration::from_millis(50));
        assert_eq!(window.available_permits(), base + (32 << 20) / UNIT as usize);
        probe.round_trip(Duration::from_millis(20));
        assert_eq!(window.available_permits(), base + (32 << 20) / UNIT as usize, "grown once, never shrunk");
    }
}
