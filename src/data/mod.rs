//! Datasets: a directory stored in the same chunk store as the checkpoints, under a name,
//! one write-once manifest per version (`datasets/<name>/versions/<n>.json`), and brought
//! back before a command starts, through an optional node-local cache of chunks that
//! jobs on one machine share (`cache`).
//!
//! A push is an upload without a checkpoint: the same chunker, chunk encoding, damage
//! handling and byte window (`upload::store_files`), many files at once. A pull trusts
//! nothing it reads, from the store or from the cache: every chunk is checked against
//! its hash and every file against its sha256, as restore does.

pub mod cache;
pub mod pull;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::chunking::MAX_CHUNK;
use crate::error::{Classify, ErrorKind};
use crate::manifest::{validate_files, FileEntry};
use crate::store::{KnownChunks, Store, StoreError};

/// A dataset's name: part of store keys and of an environment variable's name, so it is
/// checked before anything touches the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(s: &str) -> Result<DatasetName, String> {
        if s.is_empty() {
            return Err("the dataset name is empty".into());
        }
        if s.len() > 100 {
            return Err(format!("the dataset name is {} bytes long; keep it under 100", s.len()));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(format!("dataset name {s:?} contains {c:?}; a dataset name may hold only letters, digits and . _ -"));
        }
        if s.contains("..") || s.starts_with('.') || s.starts_with('-') {
            return Err(format!("dataset name {s:?} may not start with '.' or '-' or contain '..'"));
        }
        Ok(DatasetName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The variable that tells the trainer where the dataset is: `BATON_DATA_` and the
    /// name uppercased, every character that is not a letter or digit made `_`.
    pub fn env_var(&self) -> String {
        let tail: String = self.0.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        format!("BATON_DATA_{tail}")
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `NAME` or `NAME@VERSION`: a dataset, and a version of it (default: the newest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRef {
    pub name: DatasetName,
    pub version: Option<u64>,
}

impl DataRef {
    pub fn parse(s: &str) -> Result<DataRef, String> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => {
                let v = match v {
                    "latest" | "newest" => None,
                    v => Some(
                        v.parse::<u64>()
                            .ok()
                            .filter(|&v| v >= 1)
                            .ok_or_else(|| format!("{s:?}: the version after '@' is a number from 1 (or `latest`)"))?,
                    ),
                };
                (n, v)
            }
            None => (s, None),
        };
        Ok(DataRef { name: DatasetName::parse(name)?, version })
    }
}

impl std::fmt::Display for DataRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// `NAME[@VERSION]=PATH` of `baton run --data`: which dataset, and where the command
/// finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub data: DataRef,
    pub path: PathBuf,
}

impl Mount {
    pub fn parse(s: &str) -> Result<Mount, String> {
        let (left, path) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected NAME=PATH or NAME@VERSION=PATH, e.g. --data imagenet=/scratch/imagenet or --data imagenet@3=data/in")
        })?;
        if path.is_empty() {
            return Err(format!("{s:?}: the PATH after '=' is empty; name the directory the dataset goes into"));
        }
        Ok(Mount { data: DataRef::parse(left)?, path: PathBuf::from(path) })
    }
}

/// Two mounts that the trainer could not tell apart: the same variable or the same
/// directory (or one inside the other).
pub fn check_mounts(mounts: &[Mount]) -> Result<(), String> {
    for (i, a) in mounts.iter().enumerate() {
        for b in &mounts[i + 1..] {
            if a.data.name.env_var() == b.data.name.env_var() {
                return Err(format!(
                    "--data {} and --data {} would both be given to the command as {}; use one of them, or names that differ in letters or digits",
                    a.data,
                    b.data,
                    a.data.name.env_var()
                ));
            }
            if a.path.starts_with(&b.path) || b.path.starts_with(&a.path) {
                return Err(format!(
                    "--data {} and --data {} go into the same directory ({} and {}); give each dataset its own",
                    a.data,
                    b.data,
                    a.path.display(),
                    b.path.display()
                ));
            }
        }
    }
    Ok(())
}

/// The dataset manifest format this baton writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSizes {
    /// Bytes of the files.
    pub logical_bytes: u64,
    /// Bytes of chunks this version was the first to bring to the store (uncompressed).
    pub new_bytes: u64,
    /// What those new chunks take in the store.
    pub stored_bytes: u64,
    pub upload_seconds: f64,
}

/// One version of a dataset: the commit of a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub format: u32,
    pub name: String,
    pub version: u64,
    /// Seconds since the Unix epoch.
    pub created: f64,
    pub host: String,
    /// `host:pid:start-µs` of the pushing process: two pushes of one version differ.
    pub writer: String,
    /// The directory pushed, as the pusher named it (for people; never used to read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub files: Vec<FileEntry>,
    pub sizes: DataSizes,
}

impl DatasetManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    pub fn from_store(bytes: &[u8], name: &DatasetName, version: u64) -> Result<DatasetManifest, String> {
        let m: DatasetManifest = serde_json::from_slice(bytes).map_err(|e| format!("not a baton dataset manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!("unsupported dataset manifest format {} (this baton reads format {FORMAT}); upgrade baton", m.format));
        }
        if m.name != name.as_str() || m.version != version {
            return Err(format!(
                "the manifest is for dataset {:?} version {}, but it is stored as {name} version {version}",
                m.name, m.version
            ));
        }
        validate_files(&m.files, MAX_CHUNK).map_err(|e| e.to_string())?;
        Ok(m)
    }

    /// Distinct chunks, with their sizes.
    pub fn chunks(&self) -> BTreeMap<&str, u64> {
        self.files.iter().flat_map(|f| f.chunks.iter().map(|c| (c.hash.as_str(), c.size))).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Usage(String),
    #[error("dataset {name} version {version}: {detail}")]
    Damaged { name: String, version: u64, detail: String },
    #[error("dataset {name} version {version}, file {path}: {detail}")]
    File { name: String, version: u64, path: String, detail: String },
    #[error("dataset {name}: {source}")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot use the cache directory {dir}: {detail}; pass --cache DIR with a directory this job can write (or unset BATON_CACHE_DIR to go without a cache)")]
    Cache { dir: String, detail: String },
    #[error("{path}: changed while it was being pushed; nothing was published: push again once the directory is complete")]
    Changed { path: String },
}

impl Classify for DataError {
    fn kind(&self) -> ErrorKind {
        match self {
            DataError::Usage(_) | DataError::Cache { .. } => ErrorKind::Usage,
            DataError::Damaged { .. } | DataError::File { .. } => ErrorKind::Integrity,
            DataError::Store { source, .. } => source.kind(),
            DataError::Changed { .. } => ErrorKind::Checkpoint,
        }
    }
}

fn store_err(name: &DatasetName) -> impl Fn(StoreError) -> DataError + '_ {
    move |source| DataError::Store { name: name.to_string(), source }
}

/// The version `r` names: the one given, or the newest. An unknown name or version is
/// the user's to fix, and says how.
pub async fn resolve(store: &Store, r: &DataRef) -> Result<u64, DataError> {
    let versions = store.list_dataset_versions(&r.name).await.map_err(store_err(&r.name))?;
    let Some(&newest) = versions.last() else {
        return Err(DataError::Usage(format!(
            "no dataset {} in {}; `baton data list` lists the datasets there, `baton data push DIR --name {}` stores one",
            r.name,
            store.url(),
            r.name
        )));
    };
    match r.version {
        None => Ok(newest),
        Some(v) if versions.contains(&v) => Ok(v),
        Some(v) => Err(DataError::Usage(format!(
            "dataset {} has no version {v} in {} (it has {}); `baton data inspect {}` lists them",
            r.name,
            store.url(),
            versions.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            r.name
        ))),
    }
}

pub async fn load(store: &Store, name: &DatasetName, version: u64) -> Result<DatasetManifest, DataError> {
    let bytes = store.get_dataset_manifest_bytes(name, version).await.map_err(|e| match e.kind() {
        ErrorKind::Integrity => DataError::Damaged { name: name.to_string(), version, detail: e.to_string() },
        _ => DataError::Store { name: name.to_string(), source: e },
    })?;
    DatasetManifest::from_store(&bytes, name, version).map_err(|detail| DataError::Damaged { name: name.to_string(), version, detail })
}

#[derive(Debug, Clone)]
pub struct PushSettings {
    pub upload: crate::upload::Settings,
    /// Files read and uploaded at once: a dataset of many small files is bound by round
    /// trips, one existence check and one write per new chunk.
    pub files_at_once: usize,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings { upload: crate::upload::Settings::default(), files_at_once: 32 }
    }
}

/// Store the directory `dir` as the next version of dataset `name`. The files are read
/// in place (a dataset can be larger than the disk has room for a copy), so each is
/// checked unchanged after it was read; a directory written during the push is not
/// published.
pub async fn push(store: &Store, name: &DatasetName, dir: &Path, settings: &PushSettings) -> anyhow::Result<DatasetManifest> {
    let meta = std::fs::metadata(dir).map_err(|e| DataError::Usage(format!("{}: {e}; push a directory", dir.display())))?;
    if !meta.is_dir() {
        return Err(DataError::Usage(format!("{} is not a directory; push a directory", dir.display())).into());
    }
    let root = dir.to_path_buf();
    let snap = tokio::task::spawn_blocking(move || -> anyhow::Result<crate::capture::Snapshot> {
        let stamps = crate::capture::stamps(&root)?;
        let mut files = Vec::with_capacity(stamps.len());
        for s in &stamps {
            let path = root.join(&s.rel);
            let m = std::fs::metadata(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            // Held in place, like a checkpoint held by hard links: checked unchanged after.
            files.push(crate::capture::SnapFile {
                rel: s.rel.clone(),
                size: m.len(),
                mode: m.permissions().mode() & 0o777,
                linked: true,
                ahead: None,
            });
        }
        Ok(crate::capture::Snapshot { dir: root, files, stamps, seconds: 0.0 })
    })
    .await??;
    if snap.files.is_empty() {
        return Err(DataError::Usage(format!("{} holds no files; nothing to push", dir.display())).into());
    }
    let versions = store.list_dataset_versions(name).await.map_err(store_err(name))?;
    let version = versions.last().map_or(1, |v| v + 1);
    // The previous version's chunks are in the store (prune keeps every chunk a dataset
    // version uses), so the files that did not change cost no request at all.
    let known = KnownChunks::default();
    if let Some(&prev) = versions.last() {
        match load(store, name, prev).await {
            Ok(m) => m.chunks().into_keys().for_each(|h| known.insert(h.to_string())),
            Err(e) if e.kind() == ErrorKind::Integrity => tracing::warn!("{e}; every chunk is checked in the store instead"),
            Err(e) => return Err(e.into()),
        }
    }
    let (files, sizes) = crate::upload::store_files(store, &snap, &settings.upload, &known, settings.files_at_once).await?;
    snap.still_intact().map_err(|e| DataError::Changed { path: e.to_string() })?;
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into());
    let created = crate::attempt::now();
    let manifest = DatasetManifest {
        format: FORMAT,
        name: name.to_string(),
        version,
        created,
        writer: format!("{host}:{}:{}", std::process::id(), (created * 1e6) as u64),
        host,
        source: std::path::absolute(dir).ok().map(|p| p.display().to_string()),
        files,
        sizes: DataSizes {
            logical_bytes: sizes.logical_bytes,
            new_bytes: sizes.new_bytes,
            stored_bytes: sizes.stored_bytes,
            upload_seconds: sizes.upload_seconds,
        },
    };
    validate_files(&manifest.files, MAX_CHUNK)?;
    publish(store, name, manifest).await
}

/// How many times a push that lost its version number to another push at the same time
/// takes the next one. Each round has a winner, so this many pushes of one name at once
/// all publish; past that, the conflict error says to push again.
const PUBLISH_TRIES: u32 = 16;

/// Write the manifest as version `manifest.version`, or, when another push of the same
/// name took that number between our listing and our write, as the next free version.
/// Both pushes stored their chunks already, so the loser's publishing costs one listing
/// and one write, and no version is overwritten: the manifest write is create-only and
/// read back (`Store::put_dataset_manifest`).
async fn publish(store: &Store, name: &DatasetName, mut manifest: DatasetManifest) -> anyhow::Result<DatasetManifest> {
    let mut tries = 1;
    loop {
        match store.put_dataset_manifest(name, manifest.version, manifest.to_bytes().into()).await {
            Ok(()) => return Ok(manifest),
            Err(e) if e.kind() == ErrorKind::Conflict && tries < PUBLISH_TRIES => {
                let versions = store.list_dataset_versions(name).await.map_err(store_err(name))?;
                // Past both the newest listed and the one just lost: a listing can lag a
                // write on some stores.
                let next = versions.last().map_or(0, |v| v + 1).max(manifest.version + 1);
                tracing::warn!(
                    "another push of dataset {name} took version {} at the same time; publishing this push as version {next}",
                    manifest.version
                );
                manifest.version = next;
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One line of `baton data list`.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetSummary {
    pub name: String,
    pub versions: usize,
    pub latest: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<f64>,
    /// Why the newest version's manifest could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every dataset, from one listing and each one's newest manifest (32 reads in flight).
pub async fn summaries(store: &Store) -> anyhow::Result<Vec<DatasetSummary>> {
    use futures::StreamExt;
    let listed = store.list_datasets().await?;
    let reads = listed.into_iter().filter_map(|(name, versions)| Some((name, versions.len(), versions.last()?.seq)));
    let mut out: Vec<DatasetSummary> = futures::stream::iter(reads)
        .map(|(name, count, latest)| async move {
            let mut s = DatasetSummary {
                name: name.to_string(),
                versions: count,
                latest,
                files: None,
                logical_bytes: None,
                created: None,
                error: None,
            };
            match load(store, &name, latest).await {
                Ok(m) => {
                    s.files = Some(m.files.len());
                    s.logical_bytes = Some(m.sizes.logical_bytes);
                    s.created = Some(m.created);
                }
                Err(e) if e.kind() == ErrorKind::Integrity => s.error = Some(e.to_string()),
                Err(e) => return Err(anyhow::Error::from(e)),
            }
            Ok(s)
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every chunk some version of some dataset uses: what `prune` must keep. An unreadable
/// manifest is an error, since nothing can say which chunks it needs.
pub async fn referenced_chunks(store: &Store) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut referenced = std::collections::HashSet::new();
    for (name, versions) in store.list_datasets().await? {
        for v in versions {
            let m = load(store, &name, v.seq).await?;
            referenced.extend(m.chunks().into_keys().map(str::to_string));
        }
    }
    Ok(referenced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_make_one_variable_each() {
        for good in ["imagenet", "c4.en", "wiki_2024-06", "A1"] {
            DatasetName::parse(good).unwrap();
        }
        for bad in ["", "a/b", "..", "a..b", ".hidden", "-x", "a b", "x@1", "ü"] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DatasetName::parse("c4.en-v2").unwrap().env_var(), "BATON_DATA_C4_EN_V2");
        assert_eq!(DatasetName::parse("imagenet").unwrap().env_var(), "BATON_DATA_IMAGENET");
    }

    #[test]
    fn mounts_parse_name_version_and_path() {
        let m = Mount::parse("imagenet=/scratch/in").unwrap();
        assert_eq!((m.data.name.as_str(), m.data.version, m.path.as_path()), ("imagenet", None, Path::new("/scratch/in")));
        let m = Mount::parse("c4@3=data/c4").unwrap();
        assert_eq!((m.data.name.as_str(), m.data.version), ("c4", Some(3)));
        assert_eq!(Mount::parse("c4@latest=x").unwrap().data.version, None);
        // The first '=' splits: a path may hold '=' itself.
        assert_eq!(Mount::parse("a=b=c").unwrap().path, Path::new("b=c"));
        for bad in ["imagenet", "=x", "a=", "a@0=x", "a@-1=x", "a@x=y", "a/b=x", "@3=x"] {
            assert!(Mount::parse(bad).is_err(), "{bad:?}");
        }
        let e = Mount::parse("imagenet").unwrap_err();
        assert!(e.contains("expected NAME=PATH"), "{e}");
    }

    #[test]
    fn mounts_that_collide_are_refused() {
        let m = |s: &str| Mount::parse(s).unwrap();
        check_mounts(&[m("a=x"), m("b=y")]).unwrap();
        assert!(check_mounts(&[m("a-b=x"), m("a.b=y")]).unwrap_err().contains("BATON_DATA_A_B"));
        assert!(check_mounts(&[m("a=x"), m("b=x/sub")]).unwrap_err().contains("same directory"));
    }

    /// A store where another push publishes the version a push is about to write, right
    /// before it writes it, `races` times: the worst interleaving, every time.
    struct Interloper {
        inner: crate::store::MemoryBackend,
        races: std::sync::atomic::AtomicU32,
    }

    impl std::fmt::Display for Interloper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("interloper")
        }
    }

    #[async_trait::async_trait]
    impl crate::store::Backend for Interloper {
        async fn put(&self, key: &str, data: bytes::Bytes, create_only: bool) -> crate::store::Result<crate::store::PutOutcome> {
            use std::sync::atomic::Ordering;
            if key.starts_with("datasets/") && self.races.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                self.inner.put(key, bytes::Bytes::from(format!("the other push's {key}")), true).await?;
            }
            self.inner.put(key, data, create_only).await
        }
        async fn get(&self, key: &str, limit: u64) -> crate::store::Result<bytes::Bytes> {
            self.inner.get(key, limit).await
        }
        async fn head(&self, key: &str) -> crate::store::Result<Option<u64>> {
            self.inner.head(key).await
        }
        async fn list(&self, prefix: &str) -> crate::store::Result<Vec<crate::store::ObjectInfo>> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> crate::store::Result<()> {
            self.inner.delete(key).await
        }
    }

    fn racing_store(races: u32) -> Store {
        let backend = Interloper { inner: crate::store::MemoryBackend::new(), races: races.into() };
        Store::from_backend(std::sync::Arc::new(backend), "memory://interloper")
    }

    #[tokio::test]
    async fn a_push_that_loses_its_version_to_another_takes_the_next_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"the data").unwrap();
        let name = DatasetName::parse("d").unwrap();
        let store = racing_store(2);
        let m = push(&store, &name, dir.path(), &PushSettings::default()).await.unwrap();
        assert_eq!(m.version, 3, "versions 1 and 2 were taken while it published");
        assert_eq!(store.list_dataset_versions(&name).await.unwrap(), vec![1, 2, 3]);
        for v in [1, 2] {
            let there = store.get_dataset_manifest_bytes(&name, v).await.unwrap();
            assert_eq!(there, format!("the other push's {}", crate::store::dataset_key(&name, v)), "version {v} was overwritten");
        }
        assert_eq!(load(&store, &name, 3).await.unwrap(), m);
    }

    #[tokio::test]
    async fn a_push_that_keeps_losing_stops_with_the_conflict_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"the data").unwrap();
        let name = DatasetName::parse("d").unwrap();
        let store = racing_store(PUBLISH_TRIES);
        let e = push(&store, &name, dir.path(), &PushSettings::default()).await.unwrap_err();
        let conflict = e.downcast_ref::<StoreError>().unwrap_or_else(|| panic!("not a store error: {e:#}"));
        assert_eq!(conflict.kind(), ErrorKind::Conflict, "{e:#}");
        assert!(format!("{e:#}").contains("push again"), "{e:#}");
        assert_eq!(store.list_dataset_versions(&name).await.unwrap().len(), PUBLISH_TRIES as usize);
    }

    #[test]
    fn a_manifest_stored_under_another_name_is_refused() {
        let name = DatasetName::parse("d").unwrap();
        let m = DatasetManifest {
            format: FORMAT,
            name: "d".into(),
            version: 2,
            created: 0.0,
            host: "h".into(),
            writer: "w".into(),
            source: None,
            files: vec![],
            sizes: DataSizes::default(),
        };
        assert_eq!(DatasetManifest::from_store(&m.to_bytes(), &name, 2).unwrap(), m);
        assert!(DatasetManifest::from_store(&m.to_bytes(), &name, 3).is_err());
        assert!(DatasetManifest::from_store(&m.to_bytes(), &DatasetName::parse("e").unwrap(), 2).is_err());
        let mut hostile = m.clone();
        hostile.files.push(FileEntry { path: "../x".into(), size: 0, mode: 0o644, sha256: "a".repeat(64), chunks: vec![] });
        assert!(DatasetManifest::from_store(&hostile.to_bytes(), &name, 2).is_err());
    }
}
