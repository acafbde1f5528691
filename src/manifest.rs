//! The manifest is the commit: a checkpoint exists once its manifest is in the store.
//! Manifests come back from an untrusted store, so `validate` checks everything restore
//! relies on before a single byte is written.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

use crate::chunking::{MAX_CHUNK, MAX_CHUNK_FORMAT_1};

/// The format this baton writes. 1: chunks of at most 4 MiB (3479efb and before);
/// 2: files of 64 MiB and more cut larger (chunks of up to 8 MiB written, 16 MiB
/// accepted). Both are read.
pub const FORMAT: u32 = 2;
/// The oldest format this baton reads.
pub const OLDEST_FORMAT: u32 = 1;
/// Bounds on what a manifest may ask restore to do.
const MAX_FILES: usize = 1_000_000;
/// Linux's PATH_MAX (4096, with the terminating NUL) and NAME_MAX: a path past either
/// cannot be restored on any filesystem baton runs on, so a manifest that lists one is
/// damaged, whatever its chunks say, and `verify` must say so.
const MAX_PATH: usize = 4095;
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// `baton commit` while training runs.
    Commit,
    /// The command exited with the checkpoint exit code.
    CheckpointExit,
    /// The command finished (exit 0).
    Final,
    /// Committed while baton was draining after an eviction signal.
    Eviction,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Commit => "commit",
            Reason::CheckpointExit => "checkpoint-exit",
            Reason::Final => "final",
            Reason::Eviction => "eviction",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sizes {
    /// Bytes of the files as the trainer wrote them.
    pub logical_bytes: u64,
    /// Bytes of chunks this checkpoint was the first to bring to the store (uncompressed).
    pub new_bytes: u64,
    /// Bytes those new chunks take in the store (after zstd where it paid).
    pub stored_bytes: u64,
    pub capture_seconds: f64,
    pub upload_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub run_id: String,
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub created: f64,
    pub reason: Reason,
    pub attempt: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    pub host: String,
    pub device: String,
    /// The device's details, when baton detected it (absent with `--device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<crate::device::DeviceInfo>,
    #[serde(default, skip_serializing_if = "crate::htcondor::JobIds::is_empty")]
    pub htcondor: crate::htcondor::JobIds,
    /// Identifies the process that wrote the manifest, so a read-back can tell two
    /// writers of the same seq apart.
    pub writer: String,
    pub files: Vec<FileEntry>,
    pub sizes: Sizes,
    /// On a run on several nodes: which node's part of the checkpoint this is. Absent on
    /// the manifests of single-node runs (and on every manifest older baton wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

/// One node's part of a checkpoint of a run on several nodes (`nodes::complete` decides
/// when a checkpoint's parts make a whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// This node's rank, 0 to `nodes - 1`.
    pub node: u32,
    /// How many nodes the run had when the part was written: the parts a complete
    /// checkpoint has.
    pub nodes: u32,
    /// The rendezvous generation the nodes met in: parts of one checkpoint all have it.
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a baton manifest: {0}")]
    Parse(String),
    #[error("unsupported manifest format {0} (this baton reads formats {OLDEST_FORMAT} to {FORMAT}); upgrade baton")]
    Format(u32),
    #[error("manifest is for run {found:?} / seq {found_seq}, but it is stored as run {expected:?} / seq {expected_seq}")]
    Misplaced { expected: String, expected_seq: u64, found: String, found_seq: u64 },
    #[error("refusing file path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("file {path:?}: {why}")]
    BadEntry { path: String, why: String },
    #[error("checkpoint part: {0}")]
    PartMismatch(String),
    #[error("manifest lists {0} files, more than baton accepts")]
    TooManyFiles(usize),
}

/// A relative path that stays inside the checkpoint directory whatever it is joined to.
pub fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH {
        return Err("path too long");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.contains('\0') || path.chars().any(|c| c.is_control()) {
        return Err("control character in path");
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path component"),
            "." | ".." => return Err("'.' or '..' component"),
            _ if part.len() > MAX_NAME => return Err("path component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn is_hex_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parse and validate a manifest read from `runs/<run>/checkpoints/<seq>.json`.
    pub fn from_store(bytes: &[u8], run: &str, seq: u64) -> Result<Manifest, ManifestError> {
        Self::from_store_at(bytes, run, seq, None)
    }

    /// Parse and validate a manifest, or with `Some(node)` node `node`'s part of
    /// checkpoint `seq`: a part must say it is that node's, a manifest that it is none.
    pub fn from_store_at(bytes: &[u8], run: &str, seq: u64, node: Option<u32>) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&m.format) {
            return Err(ManifestError::Format(m.format));
        }
        if m.run_id != run || m.seq != seq {
            return Err(ManifestError::Misplaced { expected: run.into(), expected_seq: seq, found: m.run_id.clone(), found_seq: m.seq });
        }
        match (node, m.part) {
            (None, None) => {}
            (None, Some(p)) => {
                return Err(ManifestError::PartMismatch(format!("stored as a whole checkpoint, it says it is node {}'s part", p.node)))
            }
            (Some(n), None) => {
                return Err(ManifestError::PartMismatch(format!("stored as node {n}'s part, it says it is a whole checkpoint")))
            }
            (Some(n), Some(p)) if p.node != n => {
                return Err(ManifestError::PartMismatch(format!("stored as node {n}'s part, it says it is node {}'s", p.node)))
            }
            (Some(_), Some(p)) if p.node >= p.nodes || p.nodes > crate::store::MAX_NODES => {
                return Err(ManifestError::PartMismatch(format!("node {} of {} nodes is impossible", p.node, p.nodes)))
            }
            (Some(_), Some(_)) => {}
        }
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_files(&self.files, if self.format == 1 { MAX_CHUNK_FORMAT_1 } else { MAX_CHUNK })
    }

    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Every distinct chunk the manifest needs.
    pub fn chunk_hashes(&self) -> impl Iterator<Item = &str> {
        self.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.hash.as_str()))
    }
}

/// Everything restore relies on in a list of files read from the store (a checkpoint's,
/// a dataset version's): safe relative paths, each once, hashes that are hashes, chunk
/// sizes within `max_chunk` that add up to the file's size.
pub fn validate_files(files: &[FileEntry], max_chunk: u32) -> Result<(), ManifestError> {
    if files.len() > MAX_FILES {
        return Err(ManifestError::TooManyFiles(files.len()));
    }
    let mut seen = HashSet::new();
    for f in files {
        check_relative_path(&f.path).map_err(|why| ManifestError::BadPath { path: f.path.clone(), why })?;
        if !seen.insert(f.path.as_str()) {
            return Err(ManifestError::BadEntry { path: f.path.clone(), why: "listed twice".into() });
        }
        if !is_hex_hash(&f.sha256) {
            return Err(ManifestError::BadEntry { path: f.path.clone(), why: "sha256 is not 64 hex digits".into() });
        }
        let mut total: u64 = 0;
        for c in &f.chunks {
            if !is_hex_hash(&c.hash) {
                return Err(ManifestError::BadEntry { path: f.path.clone(), why: format!("chunk hash {:?} is not 64 hex digits", c.hash) });
            }
            if c.size == 0 || c.size > max_chunk as u64 {
                return Err(ManifestError::BadEntry { path: f.path.clone(), why: format!("chunk size {} is out of range", c.size) });
            }
            total =
                total.checked_add(c.size).ok_or_else(|| ManifestError::BadEntry { path: f.path.clone(), why: "sizes overflow".into() })?;
        }
        if total != f.size {
            return Err(ManifestError::BadEntry {
                path: f.path.clone(),
                why: format!("size {} does not match its chunks ({total} bytes)", f.size),
            });
        }
    }
    // A file may not sit "inside" another file: restore would have to make a
    // directory where a file is, which is how hostile archives smuggle paths.
    for f in files {
        let mut prefix = String::new();
        for part in f.path.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d).unwrap_or(&[]) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if seen.contains(prefix.as_str()) {
                return Err(ManifestError::BadEntry { path: f.path.clone(), why: format!("{prefix:?} is listed as a file") });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            run_id: "r".into(),
            seq: 1,
            created: 0.0,
            reason: Reason::Commit,
            attempt: 1,
            epoch: Some(1),
            step: None,
            meta: BTreeMap::new(),
            host: "h".into(),
            device: "cpu".into(),
            device_info: None,
            htcondor: crate::htcondor::JobIds::default(),
            writer: "w".into(),
            files: vec![FileEntry {
                path: "a/b.pt".into(),
                size: 3,
                mode: 0o644,
                sha256: "a".repeat(64),
                chunks: vec![ChunkRef { hash: "b".repeat(64), size: 3 }],
            }],
            sizes: Sizes::default(),
            part: None,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::from_store(&m.to_bytes(), "r", 1).unwrap(), m);
    }

    /// Times are f64 seconds: one that serde_json's default float parser reads back one
    /// ulp off (about 12% of Unix timestamps are) must come back exactly.
    #[test]
    fn a_time_reads_back_exactly_as_written() {
        let m = Manifest { created: 1764556083.0003703, ..sample() };
        assert_eq!(Manifest::from_store(&m.to_bytes(), "r", 1).unwrap().created.to_bits(), m.created.to_bits());
    }

    #[test]
    fn refuses_hostile_entries() {
        for (path, size) in [("/etc/passwd", 3), ("../x", 3), ("a/../../x", 3), ("a//b", 3), ("a/b.pt", 4), ("./a", 3)] {
            let mut m = sample();
            m.files[0].path = path.into();
            m.files[0].size = size;
            assert!(m.validate().is_err(), "{path} {size}");
        }
        let mut m = sample();
        m.files.push(FileEntry { path: "a".into(), ..m.files[0].clone() });
        assert!(m.validate().is_err(), "file nested under a file");
        let mut m = sample();
        m.files[0].path = format!("a/{}", "n".repeat(256));
        assert!(m.validate().unwrap_err().to_string().contains("longer than 255 bytes"), "overlong name");
        let mut m = sample();
        m.files[0].path = vec!["p".repeat(200); 21].join("/");
        assert!(m.validate().unwrap_err().to_string().contains("path too long"), "overlong path");
        let mut m = sample();
        m.files[0].chunks[0].size = MAX_CHUNK as u64 + 1;
        m.files[0].size = m.files[0].chunks[0].size;
        assert!(m.validate().is_err(), "oversized chunk");
    }

    #[test]
    fn reads_both_formats_with_each_ones_chunk_limit() {
        let mut m = sample();
        m.files[0].chunks[0].size = MAX_CHUNK_FORMAT_1 as u64 + 1;
        m.files[0].size = m.files[0].chunks[0].size;
        assert_eq!(Manifest::from_store(&m.to_bytes(), "r", 1).unwrap(), m, "format 2 allows chunks over 4 MiB");
        m.format = 1;
        assert!(Manifest::from_store(&m.to_bytes(), "r", 1).is_err(), "format 1 never had them");
        m.files[0].chunks[0].size = 3;
        m.files[0].size = 3;
        assert_eq!(Manifest::from_store(&m.to_bytes(), "r", 1).unwrap(), m, "format 1 is read");
        m.format = 3;
        let e = Manifest::from_store(&m.to_bytes(), "r", 1).unwrap_err().to_string();
        assert!(e.contains("upgrade baton"), "{e}");
    }

    #[test]
    fn accepts_paths_up_to_the_limits() {
        let mut m = sample();
        m.files[0].path = format!("a/{}", "n".repeat(255));
        m.validate().unwrap();
        // 4095 bytes: sixteen 255-byte names and the fifteen slashes between them.
        m.files[0].path = vec!["d".repeat(255); 16].join("/");
        assert_eq!(m.files[0].path.len(), 4095);
        m.validate().unwrap();
        m.files[0].path.push('x');
        assert!(m.validate().is_err(), "4096 bytes");
    }

    #[test]
    fn a_part_is_read_only_as_the_part_it_says_it_is() {
        let mut m = sample();
        assert!(matches!(Manifest::from_store_at(&m.to_bytes(), "r", 1, Some(0)), Err(ManifestError::PartMismatch(_))));
        m.part = Some(Part { node: 1, nodes: 2, generation: 3 });
        assert_eq!(Manifest::from_store_at(&m.to_bytes(), "r", 1, Some(1)).unwrap(), m);
        assert!(matches!(Manifest::from_store_at(&m.to_bytes(), "r", 1, Some(0)), Err(ManifestError::PartMismatch(_))));
        assert!(matches!(Manifest::from_store(&m.to_bytes(), "r", 1), Err(ManifestError::PartMismatch(_))));
        m.part = Some(Part { node: 2, nodes: 2, generation: 3 });
        assert!(matches!(Manifest::from_store_at(&m.to_bytes(), "r", 1, Some(2)), Err(ManifestError::PartMismatch(_))));
    }

    #[test]
    fn refuses_a_manifest_stored_under_another_name() {
        let m = sample();
        assert!(matches!(Manifest::from_store(&m.to_bytes(), "other", 1), Err(ManifestError::Misplaced { .. })));
        assert!(matches!(Manifest::from_store(&m.to_bytes(), "r", 2), Err(ManifestError::Misplaced { .. })));
        assert!(matches!(Manifest::from_store(b"{not json", "r", 1), Err(ManifestError::Parse(_))));
    }
}
