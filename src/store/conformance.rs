//! The contract every storage backend keeps, written once and run against each of them:
//! memory and directory from unit tests, S3 (moto) and Pelican (the federation double)
//! from integration tests, which is why this is library code and not a test module.
//! Modelled on object_store's `integration.rs`. Each check returns an error naming what
//! disagreed instead of panicking, so that `all` can report every disagreement of a
//! backend at once.
//!
//! Where backends legitimately differ, the suite takes a `Capabilities` value and checks
//! the other side of the promise (a write-once backend must refuse an overwrite and keep
//! the first object), rather than skipping the check.
//!
//! Every check writes under its own keys (`conformance/<check>/…`, runs named
//! `conformance-<check>…`, chunks of its own content), so checks may share one store, but
//! the store should be fresh for each run of the suite.

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use std::sync::Arc;

use super::{Backend, PutOutcome, Store, StoreError};
use crate::identity::RunId;

/// What a backend does where backends differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A put that is not create-only replaces the object there (directory, S3, memory).
    /// When false (Pelican: origins refuse overwrites), such a put must fail and leave the
    /// first object as it was.
    pub overwrite: bool,
    /// `delete` removes objects. When false (a Pelican token without storage.modify),
    /// `delete` must fail, not pretend, and the object must still be there.
    pub delete: bool,
}

impl Capabilities {
    /// Directory, S3, memory.
    pub const FULL: Capabilities = Capabilities { overwrite: true, delete: true };
    /// Pelican with a token that may delete.
    pub const WRITE_ONCE: Capabilities = Capabilities { overwrite: false, delete: true };
}

/// Run every check against `backend` (a fresh, empty store); an error lists every check
/// that failed and why.
pub async fn all(backend: Arc<dyn Backend>, caps: Capabilities) -> anyhow::Result<()> {
    let b = &backend;
    let mut failures = Vec::new();
    let mut count = 0;
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            count += 1;
            if let Err(e) = $check(b, caps).await {
                failures.push(format!("{}: {e:#}", stringify!($check)));
            }
        )*};
    }
    run!(
        round_trip,
        create_only_keeps_the_first,
        overwrite,
        size_limit,
        missing,
        list_by_prefix,
        delete,
        run_id_characters,
        chunks,
        manifests,
        attempts,
        runs,
    );
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{backend} fails {} of {count} conformance checks:\n  {}", failures.len(), failures.join("\n  "))
    }
}

/// `n` bytes that are not all alike, different for each `seed`, with every byte value in
/// them (a backend must not treat objects as text).
fn content(seed: u8, n: usize) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    (0..n)
        .map(|i| {
            if i < 256 {
                return (i as u8).wrapping_add(seed);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn same(got: &[u8], want: &[u8], what: &str) -> anyhow::Result<()> {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        bail!("{what}: got {} bytes, expected {} (first difference at byte {at})", got.len(), want.len());
    }
    Ok(())
}

fn store(b: &Arc<dyn Backend>) -> Store {
    Store::from_backend(b.clone(), b.to_string())
}

fn run(id: &str) -> anyhow::Result<RunId> {
    RunId::parse(id).map_err(anyhow::Error::msg)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What was put is what comes back, byte for byte; `head` gives its size.
pub async fn round_trip(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    for (key, data, create_only) in [
        ("conformance/round-trip/small", content(1, 300), true),
        // Over a megabyte, so that any buffering or chunking of transfers is crossed.
        ("conformance/round-trip/nested/deeper/large.bin", content(2, (1 << 20) + 3), true),
        ("conformance/round-trip/not-create-only", content(3, 1000), false),
    ] {
        let outcome = b.put(key, data.clone(), create_only).await.with_context(|| format!("put {key}"))?;
        ensure!(outcome == PutOutcome::Created, "put {key} (new key, create_only {create_only}) gave {outcome:?}, not Created");
        let back = b.get(key, data.len() as u64).await.with_context(|| format!("get {key}"))?;
        same(&back, &data, &format!("get {key}"))?;
        let size = b.head(key).await.with_context(|| format!("head {key}"))?;
        ensure!(size == Some(data.len() as u64), "head {key} gave {size:?}, expected Some({})", data.len());
    }
    Ok(())
}

/// A create-only put on a taken key says `AlreadyExists` and changes nothing, whatever
/// the new content's size.
pub async fn create_only_keeps_the_first(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    let key = "conformance/create-only/object";
    let first = content(10, 500);
    ensure!(b.put(key, first.clone(), true).await? == PutOutcome::Created, "first put of {key} was not Created");
    for (what, other) in [("longer", content(11, 900)), ("same size", content(12, 500)), ("shorter", content(13, 20))] {
        let outcome = b.put(key, other, true).await.with_context(|| format!("second create-only put ({what} content)"))?;
        ensure!(outcome == PutOutcome::AlreadyExists, "second create-only put ({what} content) gave {outcome:?}, not AlreadyExists");
        same(&b.get(key, 1 << 20).await?, &first, &format!("after a refused create-only put ({what} content)"))?;
    }
    Ok(())
}

/// A put that is not create-only replaces the object, or, on a write-once backend, fails
/// and leaves the first one.
pub async fn overwrite(b: &Arc<dyn Backend>, caps: Capabilities) -> anyhow::Result<()> {
    let key = "conformance/overwrite/object";
    let (first, second) = (content(20, 400), content(21, 700));
    ensure!(
        b.overwrites() == caps.overwrite,
        "the backend says overwrites() = {}, but it is tested as a backend that {} (damaged chunks would be repaired the wrong way)",
        b.overwrites(),
        if caps.overwrite { "overwrites" } else { "is write-once" }
    );
    ensure!(b.put(key, first.clone(), true).await? == PutOutcome::Created, "first put of {key} was not Created");
    let result = b.put(key, second.clone(), false).await;
    if caps.overwrite {
        let outcome = result.context("overwriting put")?;
        ensure!(outcome == PutOutcome::Created, "overwriting put gave {outcome:?}, not Created");
        same(&b.get(key, 1 << 20).await?, &second, "after an overwriting put")?;
    } else {
        ensure!(result.is_err(), "a write-once backend accepted an overwrite ({result:?})");
        same(&b.get(key, 1 << 20).await?, &first, "after a refused overwrite")?;
    }
    Ok(())
}

/// A read over the limit is refused with `TooLarge` (naming the key, the object's size and
/// the limit), never answered with the bytes; a read of exactly the limit succeeds.
pub async fn size_limit(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    let key = "conformance/size-limit/object";
    let data = content(30, 1000);
    b.put(key, data.clone(), true).await?;
    for limit in [999, 1, 0] {
        match b.get(key, limit).await {
            Err(StoreError::TooLarge { key: k, size, limit: l }) => {
                ensure!(k == key, "TooLarge names key {k:?}, not {key:?}");
                ensure!(l == limit, "TooLarge names limit {l}, not {limit}");
                ensure!(size == 1000, "TooLarge says the object is {size} bytes, not 1000");
            }
            Ok(bytes) => bail!("get with limit {limit} returned {} bytes of a 1000-byte object", bytes.len()),
            Err(e) => bail!("get with limit {limit}: expected TooLarge, got: {e}"),
        }
    }
    same(&b.get(key, 1000).await.context("get with a limit equal to the size")?, &data, "get with a limit equal to the size")
}

/// A key that was never written is `NotFound` for `get` (naming the key as given) and
/// absent for `head`, including under a directory that does not exist.
pub async fn missing(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    b.put("conformance/missing/present", content(40, 10), true).await?;
    for key in ["conformance/missing/absent", "conformance/missing/no/such/dir/absent", "conformance/never-written/absent"] {
        match b.get(key, 1 << 20).await {
            Err(StoreError::NotFound { key: k }) => ensure!(k == key, "NotFound names {k:?}, not {key:?}"),
            Ok(_) => bail!("get {key} returned bytes for a key never written"),
            Err(e) => bail!("get {key}: expected NotFound, got: {e}"),
        }
        let size = b.head(key).await.with_context(|| format!("head {key}"))?;
        ensure!(size.is_none(), "head {key} gave {size:?} for a key never written");
    }
    Ok(())
}

/// Listing a directory-like prefix gives exactly the objects under it, at any depth, as
/// keys relative to the store root, with their sizes and a modification time near now
/// (prune's grace period for young chunks depends on it). A prefix with nothing under it
/// is an empty listing, not an error; the empty prefix lists the whole store.
pub async fn list_by_prefix(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    let objects =
        [("conformance/list/a/1", 1usize), ("conformance/list/a/2/deep", 2), ("conformance/list/ab/3", 3), ("conformance/list/b", 4)];
    for (key, n) in objects {
        b.put(key, content(50, n), true).await?;
    }
    let listing = |prefix: &'static str| async move {
        let mut found: Vec<(String, u64, i64)> =
            b.list(prefix).await.with_context(|| format!("list {prefix:?}"))?.into_iter().map(|o| (o.key, o.size, o.modified)).collect();
        found.sort();
        anyhow::Ok(found)
    };
    for (prefix, want) in [
        ("conformance/list/a/", &objects[..2]),
        ("conformance/list/", &objects[..]),
        ("conformance/list/nothing/", &[][..]),
        ("conformance/never-written/", &[][..]),
    ] {
        let found = listing(prefix).await?;
        let keys: Vec<(&str, u64)> = found.iter().map(|(k, s, _)| (k.as_str(), *s)).collect();
        let want: Vec<(&str, u64)> = want.iter().map(|(k, n)| (*k, *n as u64)).collect();
        ensure!(keys == want, "list {prefix:?} gave {keys:?}, expected {want:?}");
        let now = now();
        if let Some((k, _, m)) = found.iter().find(|(_, _, m)| (m - now).abs() > 3600) {
            bail!("list {prefix:?}: {k} has modification time {m}, more than an hour from now ({now})");
        }
    }
    // The empty prefix is the whole store (other checks' objects too), keys still
    // relative to its root.
    let whole = listing("").await?;
    for (key, n) in objects {
        ensure!(whole.iter().any(|(k, s, _)| k == key && *s == n as u64), "list \"\" does not show {key} ({n} bytes)");
    }
    Ok(())
}

/// `delete` removes the object from `get`, `head` and `list`; deleting an absent key
/// succeeds (every backend does so today, and prune may delete twice). Where deletes are
/// not allowed, `delete` fails and the object stays.
pub async fn delete(b: &Arc<dyn Backend>, caps: Capabilities) -> anyhow::Result<()> {
    let (key, keep) = ("conformance/delete/gone", "conformance/delete/kept");
    let data = content(60, 100);
    b.put(key, data.clone(), true).await?;
    b.put(keep, data.clone(), true).await?;
    if !caps.delete {
        ensure!(b.delete(key).await.is_err(), "delete succeeded where deletes are not allowed");
        return same(&b.get(key, 1 << 20).await?, &data, "after a refused delete");
    }
    b.delete(key).await.context("delete a present key")?;
    match b.get(key, 1 << 20).await {
        Err(StoreError::NotFound { .. }) => {}
        Ok(_) => bail!("get after delete returned bytes"),
        Err(e) => bail!("get after delete: expected NotFound, got: {e}"),
    }
    ensure!(b.head(key).await?.is_none(), "head after delete found the object");
    let listed: Vec<String> = b.list("conformance/delete/").await?.into_iter().map(|o| o.key).collect();
    ensure!(listed == [keep], "list after delete gave {listed:?}, expected only {keep}");
    b.delete(key).await.context("delete the same key again")?;
    b.delete("conformance/delete/no/such/dir/absent").await.context("delete a key never written")?;
    same(&b.get(keep, 1 << 20).await?, &data, "the object next to the deleted one")
}

/// Run ids may hold letters, digits and `. _ - # + @ =` (`identity::RunId`), and HTCondor's
/// own ids hold `#`: keys with them round-trip through put, get, head and list unchanged.
pub async fn run_id_characters(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    for (i, id) in ["ap1.chtc.wisc.edu#1234.0#1700000000", "a_b=c+d@e", "Run-2.x"].into_iter().enumerate() {
        run(id)?;
        let key = format!("conformance/run-ids/{id}/checkpoints/0000000001.json");
        let data = content(70 + i as u8, 50);
        ensure!(b.put(&key, data.clone(), true).await? == PutOutcome::Created, "put {key} was not Created");
        same(&b.get(&key, 1 << 20).await.with_context(|| format!("get {key}"))?, &data, &format!("get {key}"))?;
        ensure!(b.head(&key).await? == Some(50), "head {key} did not give its size");
        let prefix = format!("conformance/run-ids/{id}/");
        let listed: Vec<String> = b.list(&prefix).await?.into_iter().map(|o| o.key).collect();
        ensure!(listed == [key.clone()], "list {prefix:?} gave {listed:?}, expected [{key:?}]");
    }
    Ok(())
}

/// Chunks: create-only (a second writer of the same hash is told it exists), found by
/// `has_chunk` with their stored size, listed under `chunks/`, deleted by hash.
pub async fn chunks(b: &Arc<dyn Backend>, caps: Capabilities) -> anyhow::Result<()> {
    let s = store(b);
    let data = content(80, 2000);
    let hash = crate::chunking::sha256_hex(b"conformance chunks");
    let other = crate::chunking::sha256_hex(b"conformance chunks, never written");
    ensure!(s.put_chunk(&hash, data.clone()).await? == PutOutcome::Created, "first put_chunk was not Created");
    let again = s.put_chunk(&hash, content(81, 2000)).await?;
    ensure!(again == PutOutcome::AlreadyExists, "second put_chunk of one hash gave {again:?}, not AlreadyExists");
    same(&s.get_chunk(&hash, 2000).await?, &data, "get_chunk")?;
    ensure!(s.has_chunk(&hash).await? == Some(2000), "has_chunk did not give the stored size");
    ensure!(s.has_chunk(&other).await?.is_none(), "has_chunk found a chunk never written");
    let listed: Vec<(String, u64)> = s.list_chunks().await?.into_iter().map(|o| (o.key, o.size)).collect();
    ensure!(
        listed.iter().any(|(k, size)| k.starts_with("chunks/") && k.ends_with(&hash) && *size == 2000),
        "list_chunks does not show the chunk: {listed:?}"
    );
    if caps.delete {
        s.delete_chunk(&hash).await?;
        ensure!(s.has_chunk(&hash).await?.is_none(), "has_chunk found a deleted chunk");
    }
    Ok(())
}

/// Manifests: written create-only and read back (`put_manifest`), a second writer of a
/// seq refused with `Conflict` without changing the first, listed in order with foreign
/// keys (other names, other runs, deeper directories) ignored.
pub async fn manifests(b: &Arc<dyn Backend>, caps: Capabilities) -> anyhow::Result<()> {
    let s = store(b);
    let r = run("conformance-manifests")?;
    let (one, two) = (content(90, 3000), content(91, 200));
    s.put_manifest(&r, 2, two.clone()).await.context("put_manifest seq 2")?;
    s.put_manifest(&r, 1, one.clone()).await.context("put_manifest seq 1")?;
    match s.put_manifest(&r, 1, content(92, 3000)).await {
        Err(StoreError::Conflict { .. }) => {}
        other => bail!("a second put_manifest of seq 1: expected Conflict, got {other:?}"),
    }
    same(&s.get_manifest_bytes(&r, 1).await?, &one, "manifest 1 after a refused second writer")?;
    // The same bytes again are this writer's own manifest (a retry after a lost answer).
    s.put_manifest(&r, 1, one.clone()).await.context("put_manifest of the same bytes again (a retried write) must succeed")?;
    same(&s.get_manifest_bytes(&r, 2).await?, &two, "manifest 2")?;
    match s.get_manifest_bytes(&r, 3).await {
        Err(StoreError::NotFound { .. }) => {}
        other => bail!("get_manifest_bytes of a seq never written: expected NotFound, got {other:?}"),
    }
    for foreign in [
        "runs/conformance-manifests/checkpoints/notes.txt",
        "runs/conformance-manifests/checkpoints/0000000007.json.partial",
        "runs/conformance-manifests/checkpoints/old/0000000009.json",
        "runs/conformance-manifests/checkpoints-old/0000000010.json",
        "runs/conformance-manifests-other/checkpoints/0000000011.json",
    ] {
        b.put(foreign, content(93, 10), true).await?;
    }
    let seqs = s.list_manifests(&r).await?;
    ensure!(seqs == [1, 2], "list_manifests gave {seqs:?}, expected [1, 2]");
    let none = s.list_manifests(&run("conformance-manifests-none")?).await?;
    ensure!(none.is_empty(), "list_manifests of a run with none gave {none:?}");
    if caps.delete {
        s.delete_manifest(&r, 2).await?;
        let seqs = s.list_manifests(&r).await?;
        ensure!(seqs == [1], "list_manifests after deleting 2 gave {seqs:?}, expected [1]");
    }
    Ok(())
}

/// Attempt records: a start reserves its number create-only, an end is its own object,
/// and the listing pairs them, ignoring foreign keys.
pub async fn attempts(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    let s = store(b);
    let r = run("conformance-attempts")?;
    let (start, end) = (content(100, 300), content(101, 200));
    ensure!(s.put_attempt_start(&r, 1, start.clone()).await? == PutOutcome::Created, "first start record 1 was not Created");
    let again = s.put_attempt_start(&r, 1, content(102, 300)).await?;
    ensure!(again == PutOutcome::AlreadyExists, "a second start record 1 gave {again:?}, not AlreadyExists");
    ensure!(s.put_attempt_end(&r, 1, end.clone()).await? == PutOutcome::Created, "end record 1 was not Created");
    ensure!(s.put_attempt_start(&r, 2, start.clone()).await? == PutOutcome::Created, "start record 2 was not Created");
    for foreign in ["runs/conformance-attempts/attempts/notes.txt", "runs/conformance-attempts/attempts/000003.json.tmp"] {
        b.put(foreign, content(103, 10), true).await?;
    }
    let listed = s.list_attempts(&r).await?;
    ensure!(listed == [(1, true), (2, false)], "list_attempts gave {listed:?}, expected [(1, true), (2, false)]");
    same(&s.get_attempt(&r, 1, false).await?, &start, "start record 1")?;
    same(&s.get_attempt(&r, 1, true).await?, &end, "end record 1")?;
    match s.get_attempt(&r, 2, true).await {
        Err(StoreError::NotFound { .. }) => Ok(()),
        other => bail!("the end record of an attempt that has none: expected NotFound, got {other:?}"),
    }
}

/// `list_runs` names every run with an object in the store, including ids with the
/// characters HTCondor puts in them, and skips names that are not run ids.
pub async fn runs(b: &Arc<dyn Backend>, _: Capabilities) -> anyhow::Result<()> {
    let s = store(b);
    let ids = ["conformance-runs-a", "conformance-runs.b#12.0#1700000000"];
    s.put_attempt_start(&run(ids[0])?, 1, content(110, 10)).await?;
    s.put_manifest(&run(ids[1])?, 1, content(111, 10)).await?;
    b.put("runs/-conformance-not-a-run/x", content(112, 10), true).await?;
    let found: Vec<String> = s.list_runs().await?.into_iter().map(|r| r.to_string()).collect();
    for id in ids {
        ensure!(found.iter().any(|f| f == id), "list_runs does not name {id}: {found:?}");
    }
    let seqs = s.list_manifests(&run(ids[1])?).await?;
    ensure!(seqs == [1], "list_manifests of {} gave {seqs:?}, expected [1]", ids[1]);
    Ok(())
}
