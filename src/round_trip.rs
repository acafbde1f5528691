//! Upload and restore in this process against the memory backend: no binary, no child
//! process, no server. What is checked is what the store is for: the bytes come back,
//! content already stored is not stored again, and damage in the store (a chunk
//! overwritten or gone, a manifest too large to trust) makes restore fall back to the
//! previous checkpoint instead of handing back bad files.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::attempt::Attempt;
use crate::capture::{self, Hold};
use crate::htcondor::JobIds;
use crate::identity::RunId;
use crate::manifest::{Manifest, Reason};
use crate::restore;
use crate::store::KnownChunks;
use crate::store::{chunk_key, manifest_key, Backend, MemoryBackend, Store, StoreError, MAX_MANIFEST_BYTES};
use crate::upload::{self, CommitInfo, Settings};

fn run() -> RunId {
    RunId::parse("ap1.example.org#7.0#1700000000").unwrap()
}

fn attempt() -> Attempt {
    Attempt {
        run: run(),
        number: 1,
        host: "test-host".into(),
        device: "cpu".into(),
        device_info: None,
        htcondor: JobIds::default(),
        writer: "round-trip-test".into(),
        part: None,
    }
}

/// Bytes that do not compress, so chunks are stored raw and many distinct.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A checkpoint directory: a weights file of several chunks, a compressible optimizer
/// state in a subdirectory, an empty file and an executable one.
fn checkpoint(root: &Path, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let files: BTreeMap<String, Vec<u8>> = [
        ("model.pt", noise(seed, 3 << 20)),
        ("optim/state.pt", vec![seed as u8; 600 << 10]),
        ("empty", vec![]),
        ("resume.sh", format!("#!/bin/sh\necho {seed}\n").into_bytes()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (rel, data) in &files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("resume.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    files
}

/// Every file under `root`, by relative path.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_str().unwrap().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Capture `src` and upload it as checkpoint `seq`.
async fn commit(store: &Store, tmp: &Path, src: &Path, seq: u64, known: &KnownChunks) -> Manifest {
    let snap = capture::snapshot(src, &tmp.join(format!("stage-{seq}")), Hold::Copy).unwrap();
    let info = CommitInfo { seq, reason: Reason::Commit, epoch: Some(seq), step: None, meta: BTreeMap::new(), created: 1.7e9 };
    let m = upload::upload(store, &attempt(), &info, &snap, &Settings::default(), known).await.unwrap();
    snap.discard();
    m
}

fn memory_store() -> (Arc<MemoryBackend>, Store) {
    let backend = Arc::new(MemoryBackend::new());
    (backend.clone(), Store::from_backend(backend, "memory"))
}

#[tokio::test]
async fn an_uploaded_checkpoint_restores_byte_for_byte_with_its_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::memory();
    let work = tmp.path().join("work");
    let fresh = restore::restore_latest(&store, &run(), &work, 4, &KnownChunks::default()).await.unwrap();
    assert!(fresh.found.is_none() && fresh.skipped.is_empty(), "an empty store restores nothing");

    let src = tmp.path().join("ckpt");
    let files = checkpoint(&src, 1);
    let m = commit(&store, tmp.path(), &src, 1, &KnownChunks::default()).await;
    assert_eq!(m.sizes.logical_bytes, files.values().map(|d| d.len() as u64).sum::<u64>());
    assert!(m.files.iter().find(|f| f.path == "model.pt").unwrap().chunks.len() > 1, "the weights span several chunks");
    // The optimizer state compresses: stored is less than new.
    assert!(m.sizes.stored_bytes < m.sizes.new_bytes, "{:?}", m.sizes);

    let restored = restore::restore_latest(&store, &run(), &work, 4, &KnownChunks::default()).await.unwrap();
    let (back, dir) = restored.found.unwrap();
    assert_eq!((back.seq, restored.skipped.len()), (1, 0));
    assert_eq!(back, m, "the manifest read back is the one written");
    assert_eq!(read_tree(&dir), files);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("resume.sh")).unwrap().permissions().mode() & 0o777, 0o750);

    // `download` of the loaded manifest into a directory of one's own gives the same.
    let target = tmp.path().join("again");
    std::fs::create_dir(&target).unwrap();
    let loaded = restore::load_manifest(&store, &run(), 1).await.unwrap();
    restore::download(&store, &loaded, &target, 2, &KnownChunks::default()).await.unwrap();
    assert_eq!(read_tree(&target), files);
}

/// A store whose reads finish in a scrambled order (each waits 0-30 ms, by its key), as
/// a real server's do: restore must still put every file's chunks in their place.
struct Scrambled(MemoryBackend);

impl std::fmt::Display for Scrambled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "scrambled")
    }
}

#[async_trait::async_trait]
impl Backend for Scrambled {
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> crate::store::Result<crate::store::PutOutcome> {
        self.0.put(key, data, create_only).await
    }
    async fn get(&self, key: &str, limit: u64) -> crate::store::Result<Bytes> {
        let wait = key.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 30;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        self.0.get(key, limit).await
    }
    async fn head(&self, key: &str) -> crate::store::Result<Option<u64>> {
        self.0.head(key).await
    }
    async fn list(&self, prefix: &str) -> crate::store::Result<Vec<crate::store::ObjectInfo>> {
        self.0.list(prefix).await
    }
    async fn delete(&self, key: &str) -> crate::store::Result<()> {
        self.0.delete(key).await
    }
}

#[tokio::test]
async fn chunks_that_arrive_out_of_order_are_written_in_place_across_many_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::from_backend(Arc::new(Scrambled(MemoryBackend::new())), "scrambled");
    let src = tmp.path().join("ckpt");
    let mut files = checkpoint(&src, 3);
    // More files than are written at once, several of several chunks, empty ones between.
    for i in 0..7u64 {
        let data = if i % 3 == 1 { vec![] } else { noise(10 + i, (1 << 20) + (i as usize * 700_001)) };
        std::fs::write(src.join(format!("shard-{i}.bin")), &data).unwrap();
        files.insert(format!("shard-{i}.bin"), data);
    }
    let m = commit(&store, tmp.path(), &src, 1, &KnownChunks::default()).await;
    assert!(m.files.iter().filter(|f| f.chunks.len() > 2).count() >= 3, "several files of several chunks");
    for concurrency in [1, 3, 16] {
        let target = tmp.path().join(format!("back-{concurrency}"));
        std::fs::create_dir(&target).unwrap();
        restore::download(&store, &m, &target, concurrency, &KnownChunks::default()).await.unwrap();
        assert_eq!(read_tree(&target), files, "concurrency {concurrency}");
    }
}

#[tokio::test]
async fn content_already_in_the_store_is_not_stored_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let src = tmp.path().join("ckpt");
    checkpoint(&src, 2);
    let first = commit(&store, tmp.path(), &src, 1, &KnownChunks::default()).await;
    let objects = backend.list("chunks/").await.unwrap().len();

    // A new process (nothing known) finds every chunk by asking the store.
    let second = commit(&store, tmp.path(), &src, 2, &KnownChunks::default()).await;
    assert_eq!((second.sizes.new_bytes, second.sizes.stored_bytes), (0, 0), "{:?}", second.sizes);
    assert_eq!(second.sizes.logical_bytes, first.sizes.logical_bytes);
    assert_eq!(backend.list("chunks/").await.unwrap().len(), objects, "no chunk object added");

    // Changing one small file stores that file's bytes and nothing else.
    std::fs::write(src.join("resume.sh"), b"#!/bin/sh\necho changed\n").unwrap();
    let third = commit(&store, tmp.path(), &src, 3, &KnownChunks::default()).await;
    assert_eq!(third.sizes.new_bytes, b"#!/bin/sh\necho changed\n".len() as u64, "{:?}", third.sizes);
    assert_eq!(store.list_manifests(&run()).await.unwrap(), [1, 2, 3]);
}

/// Two checkpoints with no chunk in common; the newer one is then damaged by `damage`.
/// Restore must skip it, say why, and bring back the older one whole.
async fn falls_back_when(damage: impl AsyncFnOnce(&MemoryBackend, &Manifest), why: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let (old_src, new_src) = (tmp.path().join("old"), tmp.path().join("new"));
    let old_files = checkpoint(&old_src, 3);
    checkpoint(&new_src, 4);
    let known = KnownChunks::default();
    commit(&store, tmp.path(), &old_src, 1, &known).await;
    let newer = commit(&store, tmp.path(), &new_src, 2, &known).await;
    damage(&backend, &newer).await;

    let restored = restore::restore_latest(&store, &run(), &tmp.path().join("work"), 4, &KnownChunks::default()).await.unwrap();
    let (m, dir) = restored.found.expect("the older checkpoint is restored");
    assert_eq!(m.seq, 1);
    assert_eq!(read_tree(&dir), old_files);
    assert_eq!(restored.skipped.len(), 1, "{:?}", restored.skipped);
    assert_eq!(restored.skipped[0].0, 2);
    assert!(restored.skipped[0].1.contains(why), "skipped for {:?}, expected a reason containing {why:?}", restored.skipped[0].1);
    assert!(!tmp.path().join("work/restore-2").exists(), "the damaged checkpoint's partial files are removed");
}

fn weights_chunk(m: &Manifest) -> String {
    m.files.iter().find(|f| f.path == "model.pt").unwrap().chunks[1].hash.clone()
}

#[tokio::test]
async fn a_chunk_overwritten_in_the_store_makes_restore_fall_back() {
    falls_back_when(
        async |backend, newer| {
            let key = chunk_key(&weights_chunk(newer));
            let size = backend.head(&key).await.unwrap().unwrap();
            // Same size, other bytes: only the hash check can tell.
            backend.put(&key, Bytes::from(noise(99, size as usize)), false).await.unwrap();
        },
        "damaged in the store",
    )
    .await;
}

#[tokio::test]
async fn a_chunk_missing_from_the_store_makes_restore_fall_back() {
    falls_back_when(async |backend, newer| backend.delete(&chunk_key(&weights_chunk(newer))).await.unwrap(), "not found").await;
}

#[tokio::test]
async fn a_manifest_over_the_size_limit_is_refused_and_restore_falls_back() {
    falls_back_when(
        async |backend, _| {
            let huge = Bytes::from(vec![b' '; MAX_MANIFEST_BYTES as usize + 1]);
            backend.put(&manifest_key(&run(), 2), huge, false).await.unwrap();
        },
        "more than the",
    )
    .await;
    let (backend, store) = memory_store();
    backend.put(&manifest_key(&run(), 5), Bytes::from(vec![b' '; MAX_MANIFEST_BYTES as usize + 1]), true).await.unwrap();
    match store.get_manifest_bytes(&run(), 5).await {
        Err(StoreError::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (MAX_MANIFEST_BYTES + 1, MAX_MANIFEST_BYTES)),
        other => panic!("expected TooLarge, got {:?}", other.map(|b| b.len())),
    }
}

/// A long-running uploader and a prune: the prune deletes a chunk the uploader saw
/// earlier (referenced only by a pruned checkpoint, older than the grace period). Once
/// its knowledge is older than its trust window, the uploader must ask the store again
/// and upload the chunk, not commit a manifest naming a deleted object.
#[tokio::test]
async fn a_chunk_pruned_since_the_uploader_saw_it_is_uploaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::memory();
    let known = KnownChunks::trusting_for(std::time::Duration::from_millis(200));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    checkpoint(&a, 7);
    checkpoint(&b, 8);
    commit(&store, tmp.path(), &a, 1, &known).await;
    commit(&store, tmp.path(), &b, 2, &known).await;
    // Keep only checkpoint 2: a's chunks are unreferenced, and with no grace they go.
    let plan = crate::prune::plan(&store, None, 1, std::time::Duration::ZERO).await.unwrap();
    assert!(plan.chunks > 0, "a's chunks are unreferenced");
    plan.execute(&store).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The trainer goes back to a's bytes (say, a reset to the base weights).
    let m = commit(&store, tmp.path(), &a, 3, &known).await;
    assert!(m.sizes.new_bytes > 0, "nothing was uploaded again: {:?}", m.sizes);
    let work = tmp.path().join("work");
    let restored = restore::restore_latest(&store, &run(), &work, 4, &KnownChunks::default()).await.unwrap();
    let (back, dir) = restored.found.expect("checkpoint 3 restores");
    assert_eq!((back.seq, restored.skipped.len()), (3, 0), "{:?}", restored.skipped);
    assert_eq!(read_tree(&dir), read_tree(&a));
}

/// Damage spreads through dedup unless every baton hears of it. One process finds a
/// chunk damaged (here: a restore that falls back); another, which never read it and
/// knows nothing in memory, then uploads the same bytes. It must write them again, not
/// reference the damaged object, and the store must end intact.
async fn damage_seen_by_one_process_is_not_reused_by_another(store: &Store, backend: &MemoryBackend) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    checkpoint(&src, 5);
    let first = commit(store, tmp.path(), &src, 1, &KnownChunks::default()).await;
    let key = chunk_key(&weights_chunk(&first));
    let size = backend.head(&key).await.unwrap().unwrap();
    // Same size, other bytes: no listing or HEAD can tell, only reading it.
    backend.delete(&key).await.unwrap();
    backend.put(&key, Bytes::from(noise(99, size as usize)), true).await.unwrap();
    let restored = restore::restore_latest(store, &run(), &tmp.path().join("work"), 4, &KnownChunks::default()).await.unwrap();
    assert!(restored.found.is_none() && restored.skipped.len() == 1, "{:?}", restored.skipped);

    let second = commit(store, tmp.path(), &src, 2, &KnownChunks::default()).await;
    assert!(second.sizes.new_bytes >= size, "the damaged chunk was reused: {:?}", second.sizes);
    let work = tmp.path().join("work2");
    let restored = restore::restore_latest(store, &run(), &work, 4, &KnownChunks::default()).await.unwrap();
    let (back, dir) = restored.found.expect("the new checkpoint restores");
    assert_eq!((back.seq, restored.skipped.len()), (2, 0), "{:?}", restored.skipped);
    assert_eq!(read_tree(&dir), read_tree(&src));
}

#[tokio::test]
async fn damage_one_process_saw_is_written_again_by_the_next_upload() {
    let (backend, store) = memory_store();
    damage_seen_by_one_process_is_not_reused_by_another(&store, &backend).await;
    // Repaired in place: the first checkpoint reads back too, and no marker is left.
    let tmp = tempfile::tempdir().unwrap();
    let m = restore::load_manifest(&store, &run(), 1).await.unwrap();
    restore::download(&store, &m, tmp.path(), 4, &KnownChunks::default()).await.unwrap();
    assert!(store.damaged_chunks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_write_once_store_gets_a_good_copy_beside_the_damaged_chunk() {
    let backend = Arc::new(MemoryBackend::write_once());
    let store = Store::from_backend(backend.clone(), "memory (write-once)");
    damage_seen_by_one_process_is_not_reused_by_another(&store, &backend).await;
    // Checkpoint 1 names the same chunk: its readers find the good copy beside the damaged one.
    let tmp = tempfile::tempdir().unwrap();
    let m = restore::load_manifest(&store, &run(), 1).await.unwrap();
    restore::download(&store, &m, tmp.path(), 4, &KnownChunks::default()).await.unwrap();
    assert_eq!(store.chunk_copies(&weights_chunk(&m)).await.unwrap(), [1]);
}

/// A chunk cut short at rest, seen by nobody: the upload's existence check sees a size
/// no encoding of the bytes has, and writes the chunk again.
#[tokio::test]
async fn a_chunk_of_the_wrong_size_is_not_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let src = tmp.path().join("src");
    checkpoint(&src, 6);
    let first = commit(&store, tmp.path(), &src, 1, &KnownChunks::default()).await;
    for (n, cut) in [(2, 1usize), (3, 1 << 19)] {
        let key = chunk_key(&weights_chunk(&first));
        let whole = backend.get(&key, 1 << 30).await.unwrap();
        backend.put(&key, whole.slice(..whole.len() - cut), false).await.unwrap();
        let m = commit(&store, tmp.path(), &src, n, &KnownChunks::default()).await;
        assert!(m.sizes.new_bytes > 0, "a chunk {cut} bytes short was reused: {:?}", m.sizes);
        let dir = tmp.path().join(format!("back-{n}"));
        restore::download(&store, &m, &dir, 4, &KnownChunks::default()).await.unwrap();
    }
}

/// The layout of each file this process stored or restored is the hint of its next
/// upload (`chunking::Chunker`): a restore leaves the same layout an upload does, an
/// upload with it names the same chunks as one without, and the hint is really what
/// names them (a layout with false names is believed where the fingerprints match).
#[tokio::test]
async fn an_upload_recognises_the_chunks_this_process_last_stored_or_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::memory();
    let src = tmp.path().join("src");
    checkpoint(&src, 1);
    let uploaded = KnownChunks::default();
    let m1 = commit(&store, tmp.path(), &src, 1, &uploaded).await;
    let layout = uploaded.layout("model.pt").expect("an upload remembers the layout");
    assert_eq!(layout.chunks.len(), m1.files.iter().find(|f| f.path == "model.pt").unwrap().chunks.len());

    let restored = KnownChunks::default();
    let target = tmp.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    restore::download(&store, &m1, &target, 4, &restored).await.unwrap();
    assert_eq!(restored.layout("model.pt"), Some(layout.clone()), "a restore leaves the layout an upload does");

    // Changed in places, then uploaded with the hint and without: the same chunks.
    let path = src.join("model.pt");
    let mut bytes = std::fs::read(&path).unwrap();
    for at in [1000, 1 << 20, (2 << 20) + 77] {
        bytes[at] ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let with_hint = commit(&store, tmp.path(), &src, 2, &restored).await;
    let without = commit(&store, tmp.path(), &src, 3, &KnownChunks::default()).await;
    assert_eq!(with_hint.files, without.files);

    // A layout that lies about the names: the unchanged chunks take them.
    let liar = KnownChunks::default();
    let mut lie = (*layout).clone();
    lie.chunks.iter_mut().for_each(|c| c.hash = "0".repeat(64));
    liar.remember_layout("model.pt", lie);
    std::fs::write(&path, checkpoint(&tmp.path().join("again"), 1)["model.pt"].clone()).unwrap();
    let m = commit(&store, tmp.path(), &src, 4, &liar).await;
    let named = m.files.iter().find(|f| f.path == "model.pt").unwrap().chunks.iter().filter(|c| c.hash == "0".repeat(64)).count();
    assert_eq!(named, layout.chunks.len(), "the hint was not used");
}

/// Node 1's part of one checkpoint number, written by attempts of two rendezvous
/// generations (the old generation's node commits once more after the new generation
/// chose its first seq): not a conflict between live writers, so the later attempt goes
/// on, and the checkpoint stays incomplete. Two attempts of one generation do conflict.
#[tokio::test]
async fn a_part_already_written_by_another_generation_is_not_a_conflict() {
    use crate::error::{Classify, ErrorKind};
    use crate::manifest::Part;
    let (_, store) = memory_store();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("ckpt");
    checkpoint(&src, 3);
    let part = |generation| Some(Part { node: 1, nodes: 2, generation });
    let try_commit = async |number: u64, writer: &str, part: Option<Part>| {
        let snap = capture::snapshot(&src, &tmp.path().join(format!("stage-{number}")), Hold::Copy).unwrap();
        let a = Attempt { number, writer: writer.into(), part, ..attempt() };
        let info = CommitInfo { seq: 3, reason: Reason::Commit, epoch: Some(3), step: None, meta: BTreeMap::new(), created: 1.7e9 };
        let r = upload::upload(&store, &a, &info, &snap, &Settings::default(), &KnownChunks::default()).await;
        snap.discard();
        r
    };
    try_commit(4, "old generation", part(2)).await.unwrap();

    let e = try_commit(6, "new generation", part(3)).await.unwrap_err();
    let conflict = e.chain().any(|c| c.downcast_ref::<StoreError>().is_some_and(|s| s.kind() == ErrorKind::Conflict));
    assert!(!conflict, "a part of another generation stopped the attempt: {e:#}");
    assert!(format!("{e:#}").contains("generation 2 (this attempt is in generation 3)"), "{e:#}");

    let e = try_commit(5, "a zombie of the old generation", part(2)).await.unwrap_err();
    let conflict = e.chain().any(|c| c.downcast_ref::<StoreError>().is_some_and(|s| s.kind() == ErrorKind::Conflict));
    assert!(conflict, "two attempts of node 1 in one generation must conflict: {e:#}");

    let parts = crate::nodes::read_parts(&store, &run(), 3, &[1]).await.unwrap();
    let m = parts[&1].as_ref().unwrap();
    assert_eq!((m.attempt, m.part.unwrap().generation), (4, 2), "the old generation's part is left as it was");
}

/// Upload the files `files` (relative path, bytes) as checkpoint `seq`, one chunk at a
/// time (so the order in which the store is asked is the file's), with nothing known.
async fn upload_one_at_a_time(store: &Store, tmp: &Path, files: &[(&str, Vec<u8>)], seq: u64) -> Manifest {
    let src = tmp.join(format!("src-{seq}"));
    for (rel, data) in files {
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(rel), data).unwrap();
    }
    let snap = capture::snapshot(&src, &tmp.join(format!("stage-{seq}")), Hold::Copy).unwrap();
    let info = CommitInfo { seq, reason: Reason::Commit, epoch: Some(seq), step: None, meta: BTreeMap::new(), created: 1.7e9 };
    let settings = Settings { concurrency: 1, ..Settings::default() };
    let m = upload::upload(store, &attempt(), &info, &snap, &settings, &KnownChunks::default()).await.unwrap();
    snap.discard();
    m
}

/// On a distant store a HEAD per chunk is a round trip per chunk: an upload of new bytes
/// stops asking once a few chunks in a row were not there.
#[tokio::test]
async fn an_upload_of_new_bytes_stops_asking_the_store_before_each_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let m = upload_one_at_a_time(&store, tmp.path(), &[("w.bin", noise(41, 24 << 20))], 1).await;
    let chunks = m.files[0].chunks.len();
    assert!(chunks >= 12, "a file of many chunks: {chunks}");
    assert_eq!(m.sizes.new_bytes, 24 << 20);
    assert_eq!(backend.heads(), 4, "asked for the first 4 of {chunks} chunks only");
    assert_eq!(backend.puts_refused(), 0);
}

/// Sending first, an upload that reaches bytes the store has (another run's, here) finds
/// them with its create-only write, checks the stored one by reading it back, and goes
/// back to asking first: the rest of the shared bytes are not sent at all.
#[tokio::test]
async fn sending_first_finds_shared_chunks_and_asks_first_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let shared = noise(43, 12 << 20);
    let before = upload_one_at_a_time(&store, tmp.path(), &[("w.bin", shared.clone())], 1).await;
    let stored: std::collections::BTreeSet<_> = before.files[0].chunks.iter().map(|c| c.hash.clone()).collect();
    let objects = backend.list("chunks/").await.unwrap().len();

    let (heads, refused) = (backend.heads(), backend.puts_refused());
    let m = upload_one_at_a_time(&store, tmp.path(), &[("w.bin", [noise(44, 12 << 20), shared.clone()].concat())], 2).await;
    let reused: Vec<_> = m.files[0].chunks.iter().filter(|c| stored.contains(&c.hash)).collect();
    assert!(reused.len() >= 5, "the shared half cuts as before: {} of {} chunks", reused.len(), stored.len());
    assert_eq!(backend.puts_refused() - refused, 1, "one shared chunk sent, found by its write");
    assert!(backend.heads() - heads > 4, "asked first again after it");
    let reused_bytes: u64 = reused.iter().map(|c| c.size).sum();
    assert_eq!(m.sizes.new_bytes, m.sizes.logical_bytes - reused_bytes, "{:?}", m.sizes);
    assert_eq!(backend.list("chunks/").await.unwrap().len(), objects + m.files[0].chunks.len() - reused.len());
    let restored = restore::restore_latest(&store, &run(), &tmp.path().join("work"), 4, &KnownChunks::default()).await.unwrap();
    let (back, dir) = restored.found.expect("checkpoint 2 restores");
    assert_eq!(back.seq, 2);
    assert_eq!(std::fs::read(dir.join("w.bin")).unwrap(), [noise(44, 12 << 20), shared].concat());
}

/// The chunk a create-only write finds may be damaged (same size, other bytes: only
/// reading it tells). Sending first reads it back, and writes it again when it is bad.
#[tokio::test]
async fn a_damaged_chunk_found_by_sending_first_is_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let shared = noise(45, 12 << 20);
    let combined = [noise(46, 12 << 20), shared.clone()].concat();
    upload_one_at_a_time(&store, tmp.path(), &[("w.bin", shared.clone())], 1).await;
    // Which chunk of the combined file is the first the store has: learnt on a store of its own.
    let (_, dry) = memory_store();
    let cut = upload_one_at_a_time(&dry, tmp.path(), &[("w.bin", combined.clone())], 9).await;
    let mut first_shared = None;
    for c in &cut.files[0].chunks {
        if backend.head(&chunk_key(&c.hash)).await.unwrap().is_some() {
            first_shared = Some(c.clone());
            break;
        }
    }
    let first_shared = first_shared.expect("a shared chunk");
    let key = chunk_key(&first_shared.hash);
    backend.delete(&key).await.unwrap();
    backend.put(&key, Bytes::from(noise(99, first_shared.size as usize)), true).await.unwrap();

    let refused = backend.puts_refused();
    let m = upload_one_at_a_time(&store, tmp.path(), &[("w.bin", combined.clone())], 2).await;
    assert_eq!(backend.puts_refused() - refused, 1, "the damaged chunk was found by sending it");
    assert!(m.sizes.new_bytes >= (12 << 20) + first_shared.size, "{:?}", m.sizes);
    let restored = restore::restore_latest(&store, &run(), &tmp.path().join("work"), 4, &KnownChunks::default()).await.unwrap();
    let (back, dir) = restored.found.expect("checkpoint 2 restores");
    assert_eq!((back.seq, restored.skipped.len()), (2, 0), "{:?}", restored.skipped);
    assert_eq!(std::fs::read(dir.join("w.bin")).unwrap(), combined);
}

/// Files of one upload count their misses apart: a checkpoint whose weights the store has
/// and whose optimizer state is new does not send the weights' chunks first because the
/// optimizer state's were missing (each such write is refused, and costs a read back).
#[tokio::test]
async fn a_file_the_store_has_is_asked_for_while_a_new_file_beside_it_is_sent_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, store) = memory_store();
    let weights = noise(45, 16 << 20);
    upload_one_at_a_time(&store, tmp.path(), &[("weights.bin", weights.clone())], 1).await;
    let (heads, refused) = (backend.heads(), backend.puts_refused());
    let m = upload_one_at_a_time(&store, tmp.path(), &[("weights.bin", weights), ("optimizer.bin", noise(46, 24 << 20))], 2).await;
    assert_eq!(m.sizes.new_bytes, 24 << 20, "{:?}", m.sizes);
    assert_eq!(backend.puts_refused() - refused, 0, "no chunk of the stored weights was sent first");
    let weights_chunks = m.files.iter().find(|f| f.path == "weights.bin").unwrap().chunks.len();
    assert_eq!(backend.heads() - heads, weights_chunks + 4, "every weights chunk asked for, and the first 4 of the new file only");
}
