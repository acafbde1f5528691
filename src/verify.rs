//! Verification: download every chunk of a checkpoint again and check it against the
//! manifest, the way restore would, without writing anything.

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::chunking;
use crate::identity::RunId;
use crate::restore::load_manifest;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub run: String,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checkpoints: usize,
    pub files: usize,
    pub chunks: usize,
    pub bytes: u64,
    pub damaged: Vec<Damage>,
}

/// `Err(Ok(problem))`: the chunk is damaged or missing. `Err(Err(e))`: the store failed.
async fn fetch(store: &Store, hash: String, size: u64) -> Result<Vec<u8>, Result<String, StoreError>> {
    let stored = match store.get_chunk(&hash, chunking::max_stored_size(size)).await {
        Ok(b) => b,
        Err(e) if crate::restore::is_transport(&e) => return Err(Err(e)),
        Err(e) => return Err(Ok(e.to_string())),
    };
    tokio::task::spawn_blocking(move || chunking::decode(&hash, stored, size))
        .await
        .map_err(|e| Ok(e.to_string()))?
        .map_err(|e| Ok(e.to_string()))
}

pub async fn checkpoint(store: &Store, run: &RunId, seq: u64, concurrency: usize, report: &mut Report) -> anyhow::Result<()> {
    report.checkpoints += 1;
    let m = match load_manifest(store, run, seq).await {
        Ok(m) => m,
        Err(e) => {
            if e.is_transport() {
                return Err(anyhow::Error::from(e));
            }
            report.damaged.push(Damage { run: run.to_string(), seq, file: None, problem: format!("manifest: {e:#}") });
            return Ok(());
        }
    };
    for f in &m.files {
        report.files += 1;
        let mut hasher = Sha256::new();
        let mut problem = None;
        let mut chunks = futures::stream::iter(f.chunks.iter().cloned()).map(|c| fetch(store, c.hash, c.size)).buffered(concurrency.max(1));
        while let Some(r) = chunks.next().await {
            report.chunks += 1;
            match r {
                Ok(data) => {
                    report.bytes += data.len() as u64;
                    hasher.update(&data);
                }
                Err(Ok(e)) => {
                    problem.get_or_insert(e);
                }
                Err(Err(e)) => return Err(e.into()),
            }
        }
        if problem.is_none() {
            let digest = hex::encode(hasher.finalize());
            if digest != f.sha256 {
                problem = Some(format!("file content hashes to {digest}, manifest says {}", f.sha256));
            }
        }
        if let Some(problem) = problem {
            report.damaged.push(Damage { run: run.to_string(), seq, file: Some(f.path.clone()), problem });
        }
    }
    Ok(())
}
