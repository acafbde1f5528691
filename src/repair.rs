//! Repair: write good copies of damaged chunks, taken from a checkpoint directory or
//! from another store that holds the same bytes (`baton verify --repair`).
//!
//! A chunk is named by the sha256 of its bytes, so any file that contains them will do:
//! the trainer's checkpoint directory on the submit machine, a copy of it elsewhere, or a
//! second store the run was mirrored to. The directory's files are cut with the same
//! content-defined chunker as uploads, so the same bytes give the same chunks wherever
//! they sit in a file. Every candidate is hashed before it is written, and the store's
//! chunk is read back afterwards: nothing is called repaired that does not verify.
//!
//! Where the good copy goes is the store's business (`store::damage`): over the damaged
//! object where the store overwrites, beside it on a write-once (Pelican) origin.

use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::chunking;
use crate::identity::RunId;
use crate::restore::{self, load_manifest};
use crate::store::Store;
use crate::verify;

/// Where the good bytes come from.
pub enum Source {
    /// A directory holding files with the chunks' bytes (a checkpoint directory).
    Dir(PathBuf),
    /// Another store holding the same chunks.
    Store(Store),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(d) => write!(f, "{}", d.display()),
            Source::Store(s) => f.write_str(s.url()),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Repair {
    /// Damaged chunks found in the damaged files.
    pub damaged_chunks: usize,
    /// Chunks now intact in the store.
    pub repaired: Vec<String>,
    /// Chunks the source does not hold (or holds damaged too).
    pub not_found: Vec<String>,
    /// Chunks whose good copy could not be written or did not read back intact, with why.
    pub failed: Vec<(String, String)>,
}

/// The chunks of the damaged files in `report` that do not read back intact, with their
/// sizes. Damaged manifests have no chunks to repair and are left out.
pub async fn damaged_chunks(store: &Store, report: &verify::Report) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut wanted = BTreeMap::new();
    for d in &report.damaged {
        let Some(file) = &d.file else { continue };
        let run = RunId::parse(&d.run).map_err(anyhow::Error::msg)?;
        let Ok(m) = load_manifest(store, &run, d.seq).await else { continue };
        let Some(f) = m.files.iter().find(|f| &f.path == file) else { continue };
        for c in &f.chunks {
            if wanted.contains_key(&c.hash) {
                continue;
            }
            if restore::check_chunk(store, &c.hash, c.size).await?.is_some() {
                wanted.insert(c.hash.clone(), c.size);
            }
        }
    }
    Ok(wanted)
}

/// Write a good copy of every chunk in `wanted` that `source` holds.
pub async fn repair(store: &Store, wanted: &BTreeMap<String, u64>, source: &Source, zstd_level: i32) -> anyhow::Result<Repair> {
    let mut out = Repair { damaged_chunks: wanted.len(), ..Default::default() };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(4);
    let feeder = match source {
        Source::Dir(dir) => {
            let (dir, wanted) = (dir.clone(), wanted.clone());
            tokio::task::spawn_blocking(move || chunks_in_dir(&dir, wanted, tx))
        }
        Source::Store(other) => {
            let (other, wanted) = (other.clone(), wanted.clone());
            tokio::spawn(async move {
                for (hash, size) in wanted {
                    match restore::read_chunk(&other, &hash, size).await {
                        Ok(data) => {
                            if tx.send((hash, data)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => tracing::warn!("chunk {hash}: no intact copy in {}: {}", other.url(), crate::error::chain(&e)),
                    }
                }
                Ok(())
            })
        }
    };
    let mut markers = store.damaged_chunks().await.unwrap_or_default();
    let mut found = std::collections::BTreeSet::new();
    while let Some((hash, data)) = rx.recv().await {
        if !found.insert(hash.clone()) {
            continue;
        }
        let size = data.len() as u64;
        let encoded = tokio::task::spawn_blocking(move || chunking::encode(Bytes::from(data), zstd_level)).await??;
        markers.insert(&hash, 0);
        let written = match store.write_good_copy(&hash, encoded, &markers).await {
            Ok(_) => restore::check_chunk(store, &hash, size).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match written {
            Ok(None) => out.repaired.push(hash),
            Ok(Some(why)) => out.failed.push((hash, format!("written, but does not read back intact: {why}"))),
            Err(e) => out.failed.push((hash, crate::error::chain(&*e))),
        }
    }
    match feeder.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context(format!("reading {source}"))),
        Err(e) => anyhow::bail!("reading {source}: {e}"),
    }
    out.not_found = wanted.keys().filter(|h| !found.contains(*h)).cloned().collect();
    Ok(out)
}

/// Cut every regular file under `dir` into chunks and send those in `wanted`, stopping
/// once all are found. Symbolic links are not followed.
fn chunks_in_dir(dir: &Path, mut wanted: BTreeMap<String, u64>, tx: tokio::sync::mpsc::Sender<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", dir.display());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let path = entry.path();
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            // The cut this baton uses for the size, then the one format 1 used for every
            // file (a damaged checkpoint may be older than the large cut).
            let mut cuts = vec![chunking::cut_for(size)];
            if cuts[0] != chunking::SMALL_CUT {
                cuts.push(chunking::SMALL_CUT);
            }
            for cut in cuts {
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("skipping {}: {e}", path.display());
                        break;
                    }
                };
                for chunk in chunking::chunks_with(std::io::BufReader::with_capacity(1 << 20, file), cut) {
                    let chunk = chunk.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let hash = chunking::sha256_hex(&chunk);
                    if wanted.get(&hash) == Some(&(chunk.len() as u64)) {
                        wanted.remove(&hash);
                        if tx.blocking_send((hash, chunk)).is_err() || wanted.is_empty() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
