//! The storage boundary. Below it, backends speak keys and bytes (`Backend`); above it,
//! everything speaks kinds and ids (`Store`): chunks by hash, manifests by (run, seq),
//! attempt records by (run, n). Nothing above this module builds a key by hand.

#[doc(hidden)]
pub mod conformance;
mod damage;
mod known;
mod local;
mod memory;
mod pelican;
mod s3;
mod url;

pub use self::damage::{parse_copy_name, Damaged, MAX_COPIES};
pub use self::known::KnownChunks;
pub use self::memory::MemoryBackend;
pub use self::pelican::PelicanBackend;
pub use self::s3::{S3Backend, S3Settings};
pub use self::url::StoreUrl;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

use crate::data::DatasetName;
use crate::error::{Classify, ErrorKind};
use crate::identity::RunId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: not found in the store")]
    NotFound { key: String },
    #[error("{key}: object is {size} bytes, more than the {limit} bytes baton accepts for it")]
    TooLarge { key: String, size: u64, limit: u64 },
    /// Something is stored under the key, but it cannot be what baton wrote there (a
    /// directory store: a directory or an unreadable file at an object's name).
    #[error("{key}: {detail}")]
    Damaged { key: String, detail: String },
    #[error("{key}: already written by another writer; {detail}")]
    Conflict { key: String, detail: String },
    #[error("the store at {store} refused the credentials ({detail}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the key files) for this endpoint")]
    Auth { store: String, detail: String },
    #[error("cannot reach the store at {store} ({detail}); check the endpoint (AWS_ENDPOINT_URL) and that the server is up")]
    Unreachable { store: String, detail: String },
    /// A refusal whose detail says the whole story (Pelican: missing or expired token,
    /// a scope the token lacks).
    #[error("the store at {store} refused the request: {detail}")]
    Denied { store: String, detail: String },
    /// The servers did not answer usefully within the retry budget (Pelican).
    #[error("the store at {store} is not answering: {detail}")]
    Outage { store: String, detail: String },
    #[error("{op} {key}: {detail}")]
    Backend { op: &'static str, key: String, detail: String },
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            // Keys come from manifests: a missing or oversized object is damage.
            StoreError::NotFound { .. } | StoreError::TooLarge { .. } | StoreError::Damaged { .. } => ErrorKind::Integrity,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::Auth { .. } | StoreError::Denied { .. } => ErrorKind::Permanent,
            StoreError::Unreachable { .. } | StoreError::Outage { .. } | StoreError::Backend { .. } | StoreError::Io { .. } => {
                ErrorKind::Transient
            }
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// A create-only write found the key taken. For content-addressed chunks that is success.
    AlreadyExists,
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Seconds since the epoch; 0 when the store does not say (prune then keeps the object).
    pub modified: i64,
}

/// What a storage backend must do. Keys are `/`-separated, relative to the store root.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Display {
    /// Write `data` under `key`. With `create_only`, an existing object is left alone and
    /// `AlreadyExists` returned (best effort: some servers ignore the condition, which is
    /// why callers re-read manifests after writing them).
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> Result<PutOutcome>;
    /// Read a whole object, refusing anything larger than `limit` bytes.
    async fn get(&self, key: &str, limit: u64) -> Result<Bytes>;
    /// `get` from where the object is stored, past every cache between (a Pelican
    /// federation's caches): a second look when what `get` returned did not hash to what
    /// was stored, so that a cache's damaged copy is not taken for damage in the store.
    /// `None` when no cache stands between: what `get` read is what is stored.
    async fn get_from_origin(&self, _key: &str, _limit: u64) -> Result<Option<Bytes>> {
        Ok(None)
    }
    /// Size of an object, or `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// The names directly under `prefix` (ending in `/`), as a listing with a `/`
    /// delimiter gives them: each object's name, and the first component of each deeper
    /// key. A backend on a filesystem also names what takes a name without being an
    /// object (a directory, even an empty one; a FIFO): nothing can be written under such
    /// a name, so a reader must count it as taken (and damaged), never as free.
    async fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list(prefix)
            .await?
            .iter()
            .filter_map(|o| o.key.strip_prefix(prefix)?.split('/').next())
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }
    async fn delete(&self, key: &str) -> Result<()>;
    /// Whether a put that is not create-only replaces the object there. A write-once
    /// store (a Pelican origin) refuses, and damaged chunks get their good copy beside
    /// the damaged one instead (`damage.rs`).
    fn overwrites(&self) -> bool {
        true
    }
    /// Temporary files that writes which never finished left behind (a directory store's,
    /// when an upload is killed between writing an object and publishing it), which no
    /// listing shows and nothing else removes; `prune` deletes those older than its grace
    /// period with `delete`. A backend whose failed writes leave nothing has none.
    async fn list_leftovers(&self) -> Result<Vec<ObjectInfo>> {
        Ok(Vec::new())
    }
}

/// Upper bounds on what baton reads from an untrusted store.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The kinds of object baton keeps, and where each lives.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// Key builders are crate-visible only for tests that damage objects on purpose; nothing
/// above the store builds a key.
pub(crate) fn chunk_key(hash: &str) -> String {
    format!("chunks/{}/{}", &hash[..2], hash)
}

/// Manifest names are ten digits (`{:010}`), so seqs stop here: the next seq after any
/// listed one can neither overflow nor need an eleventh digit that listing would ignore.
pub const MAX_SEQ: u64 = 9_999_999_999;

pub(crate) fn manifest_key(run: &RunId, seq: u64) -> String {
    format!("runs/{}/checkpoints/{:010}.json", run, seq)
}

/// A dataset version's manifest: numbered like checkpoints, so the same name rules hold.
pub(crate) fn dataset_key(name: &DatasetName, version: u64) -> String {
    format!("datasets/{}/versions/{:010}.json", name, version)
}

/// The seq a manifest's name stands for, only in the exact form `manifest_key` writes:
/// "42.json" or "+000000042.json" would be listed as a seq whose manifest is then looked
/// for under another name, and "18446744073709551615.json" would make the next seq wrap.
fn seq_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Nodes of one run: part names have four digits.
pub const MAX_NODES: u32 = 4096;

/// Node `node`'s part of checkpoint `seq` of a run on several nodes: a manifest of that
/// node's files. The checkpoint is complete when every node's part is there (`nodes`).
pub(crate) fn part_key(run: &RunId, seq: u64, node: u32) -> String {
    format!("runs/{}/parts/{:010}/{:04}.json", run, seq, node)
}

/// (seq, node) for a key under `runs/<run>/parts/`, only in the form `part_key` writes.
fn part_of_name(rest: &str) -> Option<(u64, u32)> {
    let (dir, file) = rest.split_once('/')?;
    let seq = seq_of_name(&format!("{dir}.json"))?;
    let digits = file.strip_suffix(".json")?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let node: u32 = digits.parse().ok()?;
    (node < MAX_NODES).then_some((seq, node))
}

/// Rendezvous generations are bounded like attempt numbers.
pub const MAX_GENERATION: u64 = 999_999_999;

/// Where node 0 of a run on several nodes publishes its address for one generation
/// (one start of node 0), write-once.
fn rendezvous_key(run: &RunId, generation: u64) -> String {
    format!("runs/{}/rendezvous/{:09}.json", run, generation)
}

fn generation_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Attempt numbers are bounded like seqs, so reserving the next one cannot overflow.
pub const MAX_ATTEMPT: u64 = 999_999_999;

/// (n, end record?) for an attempt record's name, only in the form `attempt_key` writes.
fn attempt_of_name(name: &str) -> Option<(u64, bool)> {
    let (digits, end) = match name.strip_suffix(".end.json") {
        Some(d) => (d, true),
        None => (name.strip_suffix(".json")?, false),
    };
    if digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (format!("{n:06}") == digits).then_some((n, end))
}

/// Say once per process, not at every listing, that a name in the store is ignored.
fn warn_ignored(key: &str, why: &str) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if warned.insert(key.to_string()) {
        tracing::warn!("ignoring {key}: {why}");
    }
}

/// Attempt records: `<n>.json` is written when the attempt starts (it reserves `n`), and
/// `<n>.end.json` when it ends, because objects are write-once (Pelican refuses
/// overwrites). A start without an end is an attempt that died without a word.
fn attempt_key(run: &RunId, n: u64, end: bool) -> String {
    if end {
        format!("runs/{}/attempts/{:06}.end.json", run, n)
    } else {
        format!("runs/{}/attempts/{:06}.json", run, n)
    }
}

/// A manifest as the listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestListing {
    pub seq: u64,
    pub size: u64,
    /// Seconds since the epoch, as the store says (whole seconds; 0 when it does not say).
    pub modified: i64,
}

/// What one listing says about one run.
#[derive(Debug, Clone, Default)]
pub struct RunObjects {
    /// By seq, ascending.
    pub manifests: Vec<ManifestListing>,
    /// Attempt number to whether it has an end record.
    pub attempts: std::collections::BTreeMap<u64, bool>,
    /// Checkpoints of runs on several nodes: seq to the parts listed, by node ascending.
    pub parts: std::collections::BTreeMap<u64, Vec<PartListing>>,
}

/// One node's part of a checkpoint, as the listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartListing {
    pub node: u32,
    pub size: u64,
    /// Seconds since the epoch, as the store says (whole seconds; 0 when it does not say).
    pub modified: i64,
}

/// Settings that are not part of the URL.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pelican: the bearer token file (`--token-file`), searched first.
    pub token_file: Option<std::path::PathBuf>,
}

impl Store {
    /// Open the store a URL names. Nothing is contacted yet.
    pub fn open(url: &StoreUrl) -> anyhow::Result<Store> {
        Self::open_with(url, &Options::default())
    }

    pub fn open_with(url: &StoreUrl, options: &Options) -> anyhow::Result<Store> {
        let backend: Arc<dyn Backend> = match url {
            StoreUrl::Dir(path) => Arc::new(local::DirBackend::new(path.clone())),
            StoreUrl::S3 { bucket, prefix } => Arc::new(s3::S3Backend::new(bucket, prefix)?),
            StoreUrl::Pelican(u) => Arc::new(pelican::PelicanBackend::new(u, options.token_file.clone())?),
        };
        Ok(Store { backend, url: url.to_string() })
    }

    /// A store over a backend built by hand (`label` names it in messages): a backend
    /// configured in code rather than by the environment, or the memory backend.
    pub fn from_backend(backend: Arc<dyn Backend>, label: impl Into<String>) -> Store {
        Store { backend, url: label.into() }
    }

    /// An empty store in this process's memory, for tests.
    pub fn memory() -> Store {
        Self::from_backend(Arc::new(MemoryBackend::new()), "memory")
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn has_chunk(&self, hash: &str) -> Result<Option<u64>> {
        self.backend.head(&chunk_key(hash)).await
    }

    /// Create-only: a chunk that already exists under its hash is the same content
    /// (possibly encoded at another zstd level), so "already exists" is success.
    pub async fn put_chunk(&self, hash: &str, stored: Bytes) -> Result<PutOutcome> {
        self.backend.put(&chunk_key(hash), stored, true).await
    }

    /// Write a chunk over a damaged object of the same name. Backends whose objects are
    /// write-once (Pelican origins) refuse, and the upload fails loudly rather than name
    /// the damaged object in a manifest.
    pub async fn replace_chunk(&self, hash: &str, stored: Bytes) -> Result<PutOutcome> {
        self.backend.put(&chunk_key(hash), stored, false).await
    }

    pub async fn get_chunk(&self, hash: &str, limit: u64) -> Result<Bytes> {
        self.backend.get(&chunk_key(hash), limit).await
    }

    pub async fn list_chunks(&self) -> Result<Vec<ObjectInfo>> {
        self.backend.list("chunks/").await
    }

    pub async fn delete_chunk(&self, hash: &str) -> Result<()> {
        self.backend.delete(&chunk_key(hash)).await
    }

    /// Temporary files of writes that never finished (see `Backend::list_leftovers`).
    pub async fn list_leftovers(&self) -> Result<Vec<ObjectInfo>> {
        self.backend.list_leftovers().await
    }

    /// `key` as `list_leftovers` returned it.
    pub async fn delete_leftover(&self, key: &str) -> Result<()> {
        self.backend.delete(key).await
    }

    /// Write a manifest create-only, then read it back: a backend that ignores the
    /// condition must not let two writers both believe they own `seq`.
    pub async fn put_manifest(&self, run: &RunId, seq: u64, body: Bytes) -> Result<()> {
        self.put_checkpoint(run, seq, None, body).await
    }

    /// `put_manifest`, or with `Some(node)` node `node`'s part of checkpoint `seq` (runs
    /// on several nodes), with the same create-only write and read-back.
    pub async fn put_checkpoint(&self, run: &RunId, seq: u64, node: Option<u32>, body: Bytes) -> Result<()> {
        let key = match node {
            Some(n) => part_key(run, seq, n),
            None => manifest_key(run, seq),
        };
        if seq > MAX_SEQ {
            return Err(StoreError::Damaged {
                key,
                detail: format!(
                    "checkpoint numbers stop at {MAX_SEQ}, so run {run} cannot commit another checkpoint; a stray manifest named {MAX_SEQ}.json is probably in the store: remove it"
                ),
            });
        }
        self.put_write_once(
            key,
            body,
            &format!(
                "checkpoint number {seq} is taken by something that is not a manifest; this checkpoint is not committed, and the run's next attempt numbers its checkpoints past it"
            ),
            "another attempt of this run wrote this checkpoint number (is an old attempt still running?)",
            "this attempt",
        )
        .await
    }

    /// The one writer of a numbered manifest (a checkpoint's, a dataset version's):
    /// create-only, then read back, because some servers ignore the condition. The
    /// loser of two writers finds out here and fails loudly.
    async fn put_write_once(&self, key: String, body: Bytes, not_manifest: &str, conflict: &str, writer: &str) -> Result<()> {
        match self.backend.put(&key, body.clone(), true).await? {
            PutOutcome::AlreadyExists => {
                // Another writer's manifest, or something that never was one (a directory
                // at the name): only the first is a conflict. The second is damage.
                return match self.backend.get(&key, MAX_MANIFEST_BYTES).await {
                    // Our own write, whose answer was lost (a reset after the server
                    // stored it) and whose retry found it: the `writer` field makes every
                    // writer's manifest differ, so the same bytes are this writer's.
                    Ok(there) if there == body => Ok(()),
                    Err(e) if e.kind() == ErrorKind::Integrity => Err(StoreError::Damaged { key, detail: format!("{not_manifest} ({e})") }),
                    Err(e) => Err(e),
                    Ok(_) => Err(StoreError::Conflict { key, detail: conflict.into() }),
                };
            }
            PutOutcome::Created => {}
        }
        let back = self.backend.get(&key, MAX_MANIFEST_BYTES).await?;
        if back != body {
            return Err(StoreError::Conflict {
                key,
                detail: format!(
                    "the manifest read back differs from what {writer} wrote (the server ignored the create-only condition and another writer won)"
                ),
            });
        }
        Ok(())
    }

    /// Write version `version` of a dataset create-only, with the same one-winner rule as
    /// checkpoint manifests: of two pushes that picked the same number, one fails loudly.
    pub async fn put_dataset_manifest(&self, name: &DatasetName, version: u64, body: Bytes) -> Result<()> {
        let key = dataset_key(name, version);
        if version > MAX_SEQ {
            return Err(StoreError::Damaged {
                key,
                detail: format!(
                    "dataset version numbers stop at {MAX_SEQ}; a stray manifest named {MAX_SEQ}.json is probably in the store: remove it"
                ),
            });
        }
        self.put_write_once(
            key,
            body,
            &format!("dataset {name} version {version} is taken by something that is not a manifest; remove it and push again"),
            &format!("another push of dataset {name} took version {version} at the same time; push again to store this one as the next version (its chunks are in the store already)"),
            "this push",
        )
        .await
    }

    pub async fn get_dataset_manifest_bytes(&self, name: &DatasetName, version: u64) -> Result<Bytes> {
        self.backend.get(&dataset_key(name, version), MAX_MANIFEST_BYTES).await
    }

    /// Versions of a dataset, ascending (names baton does not write are ignored, with a
    /// warning, as for checkpoints).
    pub async fn list_dataset_versions(&self, name: &DatasetName) -> Result<Vec<u64>> {
        let prefix = format!("datasets/{name}/versions/");
        let mut versions = Vec::new();
        for n in self.backend.list_names(&prefix).await? {
            match seq_of_name(&n) {
                Some(v) => versions.push(v),
                None if n.ends_with(".json") => {
                    warn_ignored(&format!("{prefix}{n}"), "not a dataset version name baton writes (ten digits); remove it")
                }
                None => {}
            }
        }
        versions.sort_unstable();
        versions.dedup();
        Ok(versions)
    }

    /// Every dataset's versions from one listing of `datasets/`, without reading them.
    pub async fn list_datasets(&self) -> Result<std::collections::BTreeMap<DatasetName, Vec<ManifestListing>>> {
        let mut sets: std::collections::BTreeMap<DatasetName, Vec<ManifestListing>> = Default::default();
        for o in self.backend.list("datasets/").await? {
            let Some(rest) = o.key.strip_prefix("datasets/") else { continue };
            let mut parts = rest.splitn(3, '/');
            let (Some(name), Some("versions"), Some(file)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let (Ok(name), Some(version)) = (DatasetName::parse(name), seq_of_name(file)) else { continue };
            sets.entry(name).or_default().push(ManifestListing { seq: version, size: o.size, modified: o.modified });
        }
        for v in sets.values_mut() {
            v.sort_by_key(|m| m.seq);
        }
        Ok(sets)
    }

    pub async fn get_manifest_bytes(&self, run: &RunId, seq: u64) -> Result<Bytes> {
        self.backend.get(&manifest_key(run, seq), MAX_MANIFEST_BYTES).await
    }

    /// The manifest of `seq`, or with `Some(node)` that node's part of it.
    pub async fn get_checkpoint_bytes(&self, run: &RunId, seq: u64, node: Option<u32>) -> Result<Bytes> {
        match node {
            Some(n) => self.backend.get(&part_key(run, seq, n), MAX_MANIFEST_BYTES).await,
            None => self.get_manifest_bytes(run, seq).await,
        }
    }

    /// The parts of checkpoints of a run on several nodes: seq to the nodes whose part is
    /// listed, ascending. Empty for a run that never ran on several nodes.
    pub async fn list_parts(&self, run: &RunId) -> Result<std::collections::BTreeMap<u64, Vec<u32>>> {
        let prefix = format!("runs/{}/parts/", run);
        let mut parts: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
        for o in self.backend.list(&prefix).await? {
            let Some(rest) = o.key.strip_prefix(&prefix) else { continue };
            match part_of_name(rest) {
                Some((seq, node)) => parts.entry(seq).or_default().push(node),
                None if rest.ends_with(".json") => warn_ignored(&o.key, "not a checkpoint part name baton writes; remove it"),
                None => {}
            }
        }
        for nodes in parts.values_mut() {
            nodes.sort_unstable();
            nodes.dedup();
        }
        Ok(parts)
    }

    /// Publish a rendezvous record create-only and read it back: `Created` only when the
    /// record there is this one (a server that ignores the condition may let another
    /// writer's record stand under the name).
    pub async fn put_rendezvous(&self, run: &RunId, generation: u64, body: Bytes) -> Result<PutOutcome> {
        let key = rendezvous_key(run, generation);
        if generation > MAX_GENERATION {
            return Err(StoreError::Damaged {
                key,
                detail: format!("rendezvous generations stop at {MAX_GENERATION}; a stray record with a huge number is probably in the store: remove it"),
            });
        }
        if self.backend.put(&key, body.clone(), true).await? == PutOutcome::AlreadyExists {
            return Ok(PutOutcome::AlreadyExists);
        }
        match self.backend.get(&key, MAX_RECORD_BYTES).await? == body {
            true => Ok(PutOutcome::Created),
            false => Ok(PutOutcome::AlreadyExists),
        }
    }

    pub async fn get_rendezvous(&self, run: &RunId, generation: u64) -> Result<Bytes> {
        self.backend.get(&rendezvous_key(run, generation), MAX_RECORD_BYTES).await
    }

    /// Rendezvous generations of a run, ascending.
    pub async fn list_rendezvous(&self, run: &RunId) -> Result<Vec<u64>> {
        let prefix = format!("runs/{}/rendezvous/", run);
        let mut gens: Vec<u64> = self.backend.list_names(&prefix).await?.iter().filter_map(|n| generation_of_name(n)).collect();
        gens.sort_unstable();
        gens.dedup();
        Ok(gens)
    }

    pub async fn delete_manifest(&self, run: &RunId, seq: u64) -> Result<()> {
        self.backend.delete(&manifest_key(run, seq)).await
    }

    /// Delete node `node`'s part of checkpoint `seq` (only `prune` deletes).
    pub async fn delete_part(&self, run: &RunId, seq: u64, node: u32) -> Result<()> {
        self.backend.delete(&part_key(run, seq, node)).await
    }

    /// Delete the rendezvous record of an old generation (only `prune` deletes).
    pub async fn delete_rendezvous(&self, run: &RunId, generation: u64) -> Result<()> {
        self.backend.delete(&rendezvous_key(run, generation)).await
    }

    /// Checkpoint seqs of a run, ascending. Keys that are not ours are ignored, with a
    /// warning for `.json` names that are not the ten digits baton writes.
    pub async fn list_manifests(&self, run: &RunId) -> Result<Vec<u64>> {
        let prefix = format!("runs/{}/checkpoints/", run);
        let mut seqs = Vec::new();
        // Names, not objects: a seq whose name holds a directory is taken. Listed, it is
        // reported as damaged and the next seq goes past it; unlisted, every new attempt
        // would pick it and lose to "another writer".
        for name in self.backend.list_names(&prefix).await? {
            match seq_of_name(&name) {
                Some(seq) => seqs.push(seq),
                None if name.ends_with(".json") => warn_ignored(
                    &format!("{prefix}{name}"),
                    "not a checkpoint name baton writes (ten digits, 0000000000.json to 9999999999.json); remove it",
                ),
                None => {}
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// Reserve attempt number `n` by writing its start record create-only.
    pub async fn put_attempt_start(&self, run: &RunId, n: u64, body: Bytes) -> Result<PutOutcome> {
        if n > MAX_ATTEMPT {
            return Err(StoreError::Damaged {
                key: attempt_key(run, n, false),
                detail: format!(
                    "attempt numbers stop at {MAX_ATTEMPT}, so run {run} cannot start again; a stray attempt record with a huge number is probably in the store: remove it"
                ),
            });
        }
        self.backend.put(&attempt_key(run, n, false), body, true).await
    }

    pub async fn put_attempt_end(&self, run: &RunId, n: u64, body: Bytes) -> Result<PutOutcome> {
        self.backend.put(&attempt_key(run, n, true), body, true).await
    }

    /// (n, has_end) for every attempt record of a run, ascending.
    pub async fn list_attempts(&self, run: &RunId) -> Result<Vec<(u64, bool)>> {
        let prefix = format!("runs/{}/attempts/", run);
        let mut starts = std::collections::BTreeMap::new();
        for o in self.backend.list(&prefix).await? {
            let Some(name) = o.key.strip_prefix(&prefix) else { continue };
            match attempt_of_name(name) {
                Some((n, true)) => {
                    starts.insert(n, true);
                }
                Some((n, false)) => {
                    starts.entry(n).or_insert(false);
                }
                None if name.ends_with(".json") => warn_ignored(&o.key, "not an attempt record name baton writes; remove it"),
                None => {}
            }
        }
        Ok(starts.into_iter().collect())
    }

    pub async fn get_attempt(&self, run: &RunId, n: u64, end: bool) -> Result<Bytes> {
        self.backend.get(&attempt_key(run, n, end), MAX_RECORD_BYTES).await
    }

    /// Every run's manifests, checkpoint parts and attempt records from one listing of
    /// `runs/` (paginated by the backend): enough to count checkpoints and attempts, and to
    /// know the newest manifest and each manifest's size and time, without reading any of
    /// them.
    pub async fn list_run_objects(&self) -> Result<std::collections::BTreeMap<RunId, RunObjects>> {
        let mut runs: std::collections::BTreeMap<RunId, RunObjects> = Default::default();
        for o in self.backend.list("runs/").await? {
            let Some(rest) = o.key.strip_prefix("runs/") else { continue };
            let mut parts = rest.splitn(3, '/');
            let (Some(name), Some(kind), Some(file)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(run) = RunId::parse(name) else { continue };
            let entry = runs.entry(run).or_default();
            match kind {
                "checkpoints" => {
                    if let Some(seq) = seq_of_name(file) {
                        entry.manifests.push(ManifestListing { seq, size: o.size, modified: o.modified });
                    }
                }
                "attempts" => match attempt_of_name(file) {
                    Some((n, true)) => {
                        entry.attempts.insert(n, true);
                    }
                    Some((n, false)) => {
                        entry.attempts.entry(n).or_insert(false);
                    }
                    None => {}
                },
                "parts" => {
                    if let Some((seq, node)) = part_of_name(file) {
                        entry.parts.entry(seq).or_default().push(PartListing { node, size: o.size, modified: o.modified });
                    }
                }
                _ => {}
            }
        }
        for r in runs.values_mut() {
            r.manifests.sort_by_key(|m| m.seq);
            for parts in r.parts.values_mut() {
                parts.sort_by_key(|p| p.node);
                parts.dedup_by_key(|p| p.node);
            }
        }
        Ok(runs)
    }

    /// Run ids present in the store (names that fail validation are skipped).
    pub async fn list_runs(&self) -> Result<Vec<RunId>> {
        let mut runs: Vec<RunId> = self
            .backend
            .list("runs/")
            .await?
            .iter()
            .filter_map(|o| o.key.strip_prefix("runs/")?.split('/').next())
            .filter_map(|name| RunId::parse(name).ok())
            .collect();
        runs.sort();
        runs.dedup();
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_baton_writes_are_seqs() {
        let run = RunId::parse("r").unwrap();
        for seq in [0, 1, 42, MAX_SEQ] {
            let key = manifest_key(&run, seq);
            assert_eq!(seq_of_name(key.rsplit('/').next().unwrap()), Some(seq), "{key}");
        }
        for name in
            ["18446744073709551615.json", "10000000000.json", "42.json", "+000000042.json", "000000004a.json", "0000000042", ".json"]
        {
            assert_eq!(seq_of_name(name), None, "{name}");
        }
        // Whatever is listed, the next seq is representable and gets a name listing sees.
        assert!(MAX_SEQ.checked_add(1).is_some());
    }

    #[test]
    fn only_the_names_baton_writes_are_parts_and_generations() {
        let run = RunId::parse("r").unwrap();
        let prefix = "runs/r/parts/";
        for (seq, node) in [(1, 0), (42, 1), (MAX_SEQ, MAX_NODES - 1)] {
            let key = part_key(&run, seq, node);
            assert_eq!(part_of_name(key.strip_prefix(prefix).unwrap()), Some((seq, node)), "{key}");
        }
        for rest in
            ["0000000001/1.json", "0000000001/00001.json", "1/0001.json", "0000000001/4096.json", "0000000001/0001.tmp", "0000000001"]
        {
            assert_eq!(part_of_name(rest), None, "{rest}");
        }
        for g in [1, 7, MAX_GENERATION] {
            let key = rendezvous_key(&run, g);
            assert_eq!(generation_of_name(key.rsplit('/').next().unwrap()), Some(g), "{key}");
        }
        for name in ["1.json", "0000000001.json", "00000001a.json", "000000001.tmp"] {
            assert_eq!(generation_of_name(name), None, "{name}");
        }
    }

    #[test]
    fn only_the_names_baton_writes_are_attempts() {
        let run = RunId::parse("r").unwrap();
        for n in [1, 999_999, 1_000_000, MAX_ATTEMPT] {
            for end in [false, true] {
                let key = attempt_key(&run, n, end);
                assert_eq!(attempt_of_name(key.rsplit('/').next().unwrap()), Some((n, end)), "{key}");
            }
        }
        for name in ["18446744073709551615.json", "1000000000.json", "1.json", "+00001.json", "0000001.end.json", "000001.tmp"] {
            assert_eq!(attempt_of_name(name), None, "{name}");
        }
    }
}
