//! Pruning: which checkpoints and chunks may go, as a plan the CLI prints (or carries
//! out), as rustic_core's `PrunePlan`. Only prune deletes; `baton run` never does.

use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;

use crate::error::{ErrorKind, Failure};
use crate::identity::RunId;
use crate::restore::load_manifest;
use crate::store::{parse_copy_name, Store};

/// What a prune deletes. Chunks are shared by every run and dataset in the store, so a
/// chunk goes only when no remaining manifest of any run and no version of any dataset
/// references it, and it is older than the grace period (a running upload may be about
/// to reference it).
#[derive(Debug, Default, Serialize)]
pub struct PrunePlan {
    pub dry_run: bool,
    /// (run, seq) of each checkpoint to delete.
    pub checkpoints: Vec<(String, u64)>,
    pub chunks: usize,
    pub chunk_bytes: u64,
    /// Temporary files of writes that never finished (uploads killed mid-write), older
    /// than the grace period: nothing else ever removes them.
    pub temporaries: usize,
    pub temporary_bytes: u64,
    /// Unreferenced chunks kept because the store does not say how old they are (a
    /// Pelican origin whose listing has no Last-Modified): age unknown is never old enough.
    pub unknown_age: usize,
    #[serde(skip)]
    doomed_chunks: Vec<(String, u32)>,
    #[serde(skip)]
    doomed_markers: Vec<(String, u32)>,
    #[serde(skip)]
    doomed_temporaries: Vec<String>,
}

/// Plan to keep the newest `keep` checkpoints of `run` (or of every run).
pub async fn plan(store: &Store, run: Option<&RunId>, keep: u64, grace: Duration) -> anyhow::Result<PrunePlan> {
    let all_runs = store.list_runs().await?;
    let targets: Vec<RunId> = match run {
        Some(r) => vec![r.clone()],
        None => all_runs.clone(),
    };
    let mut plan = PrunePlan::default();
    let mut removed: HashSet<(String, u64)> = HashSet::new();
    for run in &targets {
        let seqs = store.list_manifests(run).await?;
        let cut = seqs.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
        for &seq in &seqs[..cut] {
            plan.checkpoints.push((run.to_string(), seq));
            removed.insert((run.to_string(), seq));
        }
    }
    let mut referenced = HashSet::new();
    for run in &all_runs {
        for seq in store.list_manifests(run).await? {
            if removed.contains(&(run.to_string(), seq)) {
                continue;
            }
            let m = load_manifest(store, run, seq).await.map_err(|e| {
                Failure::new(
                    ErrorKind::Integrity,
                    format!(
                        "{}; cannot tell which chunks it needs, so no chunk is deleted (fix or remove that manifest first)",
                        crate::error::chain(&e)
                    ),
                )
            })?;
            referenced.extend(m.chunk_hashes().map(str::to_string));
        }
        // Checkpoints of runs on several nodes, in parts: never pruned yet, and every
        // part's chunks are kept, complete or not (a node may still be uploading).
        for (seq, nodes) in store.list_parts(run).await? {
            for (node, part) in crate::nodes::read_parts(store, run, seq, &nodes).await? {
                let m = part.map_err(|e| {
                    Failure::new(
                        ErrorKind::Integrity,
                        format!("checkpoint {seq} of run {run}, node {node}'s part: {e}; cannot tell which chunks it needs, so no chunk is deleted"),
                    )
                })?;
                referenced.extend(m.chunk_hashes().map(str::to_string));
            }
        }
    }
    // Every version of every dataset is kept, and so is every chunk one uses.
    referenced.extend(crate::data::referenced_chunks(store).await.map_err(|e| {
        Failure::new(
            ErrorKind::Integrity,
            format!(
                "{}; cannot tell which chunks it needs, so no chunk is deleted (fix or remove that dataset manifest first)",
                crate::error::chain(e.as_ref())
            ),
        )
    })?);
    let now = crate::attempt::now() as i64;
    let mut stored = HashSet::new();
    for o in store.list_chunks().await? {
        // The chunk's own name, or a good copy beside a damaged one (`store::damage`).
        let Some((hash, copy)) = o.key.rsplit('/').next().and_then(parse_copy_name) else { continue };
        stored.insert(hash.to_string());
        if referenced.contains(hash) {
            continue;
        }
        if o.modified <= 0 {
            plan.unknown_age += 1;
            continue;
        }
        if now - o.modified >= grace.as_secs() as i64 {
            plan.chunk_bytes += o.size;
            plan.doomed_chunks.push((hash.to_string(), copy));
        }
    }
    plan.chunks = plan.doomed_chunks.len();
    if plan.unknown_age > 0 {
        tracing::warn!(
            "{} unreferenced chunk(s) kept: the store does not say when they were written (no Last-Modified in its listing), so prune cannot tell them from chunks a running upload is about to reference",
            plan.unknown_age
        );
    }
    // A damage marker outlives its use once no copy of its chunk is left to be damaged.
    let doomed: HashSet<&str> = plan.doomed_chunks.iter().map(|(h, _)| h.as_str()).collect();
    for (hash, copy) in store.damaged_chunks().await?.iter() {
        if doomed.contains(hash) || !stored.contains(hash) {
            plan.doomed_markers.push((hash.to_string(), copy));
        }
    }
    // A write in progress touches its temporary file until it publishes it moments later,
    // so one older than the grace period belongs to a write that is dead.
    for o in store.list_leftovers().await? {
        if o.modified > 0 && now - o.modified >= grace.as_secs() as i64 {
            plan.temporary_bytes += o.size;
            plan.doomed_temporaries.push(o.key);
        }
    }
    plan.temporaries = plan.doomed_temporaries.len();
    Ok(plan)
}

impl PrunePlan {
    /// Delete what the plan names: manifests first, so a checkpoint is never visible
    /// with its chunks gone.
    pub async fn execute(&self, store: &Store) -> anyhow::Result<()> {
        for (run, seq) in &self.checkpoints {
            store.delete_manifest(&RunId::parse(run).map_err(anyhow::Error::msg)?, *seq).await?;
        }
        for (hash, copy) in &self.doomed_chunks {
            store.delete_chunk_copy(hash, *copy).await?;
        }
        for (hash, copy) in &self.doomed_markers {
            store.delete_marker(hash, *copy).await?;
        }
        for key in &self.doomed_temporaries {
            store.delete_leftover(key).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, MemoryBackend, ObjectInfo, PutOutcome};
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::sync::Arc;

    /// A store whose listings carry no modification time, as a Pelican origin without
    /// Last-Modified in its PROPFIND answers.
    struct NoTimes(MemoryBackend);

    impl std::fmt::Display for NoTimes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("no-times")
        }
    }

    #[async_trait]
    impl Backend for NoTimes {
        async fn put(&self, key: &str, data: Bytes, create_only: bool) -> crate::store::Result<PutOutcome> {
            self.0.put(key, data, create_only).await
        }
        async fn get(&self, key: &str, limit: u64) -> crate::store::Result<Bytes> {
            self.0.get(key, limit).await
        }
        async fn head(&self, key: &str) -> crate::store::Result<Option<u64>> {
            self.0.head(key).await
        }
        async fn list(&self, prefix: &str) -> crate::store::Result<Vec<ObjectInfo>> {
            Ok(self.0.list(prefix).await?.into_iter().map(|o| ObjectInfo { modified: 0, ..o }).collect())
        }
        async fn delete(&self, key: &str) -> crate::store::Result<()> {
            self.0.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_chunk_of_unknown_age_is_never_old_enough() {
        let store = Store::from_backend(Arc::new(NoTimes(MemoryBackend::new())), "no-times");
        let hash = crate::chunking::sha256_hex(b"x");
        store.put_chunk(&hash, Bytes::from_static(b"x")).await.unwrap();
        let plan = plan(&store, None, 1, Duration::from_secs(3600)).await.unwrap();
        assert_eq!((plan.chunks, plan.unknown_age), (0, 1), "an unreferenced chunk of unknown age was doomed");
    }
}
