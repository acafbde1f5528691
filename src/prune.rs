//! Pruning: which checkpoints and chunks may go, as a plan the CLI prints (or carries
//! out), as rustic_core's `PrunePlan`. Only prune deletes; `baton run` never does.

use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
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
    /// (run, seq) of each checkpoint to delete, whole or in parts.
    pub checkpoints: Vec<(String, u64)>,
    /// Of those, the checkpoints of runs on several nodes: (run, seq, node) of each part.
    pub parts: Vec<(String, u64, u32)>,
    /// (run, generation) of each rendezvous record to delete: every generation but a
    /// run's newest, published longer ago than the grace period.
    pub rendezvous: Vec<(String, u64)>,
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
    doomed_manifests: Vec<(String, u64)>,
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
    let mut removed_parts: HashSet<(String, u64)> = HashSet::new();
    let now = crate::attempt::now();
    for run in &targets {
        let seqs = store.list_manifests(run).await?;
        let parts = parts_of(store, run).await?;
        if parts.is_empty() {
            // A run that never ran on several nodes: by seq, damaged or not, as always.
            let cut = seqs.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
            for &seq in &seqs[..cut] {
                plan.doomed_manifests.push((run.to_string(), seq));
                removed.insert((run.to_string(), seq));
            }
        } else {
            let (whole, in_parts) = multi_node(&seqs, &parts, keep, now, grace.as_secs_f64());
            for seq in whole {
                plan.doomed_manifests.push((run.to_string(), seq));
                removed.insert((run.to_string(), seq));
            }
            for seq in in_parts {
                for &node in &parts[&seq].nodes {
                    plan.parts.push((run.to_string(), seq, node));
                }
                removed_parts.insert((run.to_string(), seq));
            }
        }
        plan.rendezvous.extend(old_generations(store, run, now, grace.as_secs_f64()).await?.into_iter().map(|g| (run.to_string(), g)));
    }
    plan.checkpoints = plan.doomed_manifests.iter().cloned().chain(removed_parts.iter().cloned()).collect();
    plan.checkpoints.sort();
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
        // Checkpoints of runs on several nodes, in parts: every remaining part's chunks
        // are kept, complete or not (a node may still be uploading).
        for (seq, nodes) in store.list_parts(run).await? {
            if removed_parts.contains(&(run.to_string(), seq)) {
                continue;
            }
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
    let now = now as i64;
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
        let parse = |run: &str| RunId::parse(run).map_err(anyhow::Error::msg);
        for (run, seq) in &self.doomed_manifests {
            store.delete_manifest(&parse(run)?, *seq).await?;
        }
        // Any part gone makes its checkpoint incomplete: never restored from then on.
        for (run, seq, node) in &self.parts {
            store.delete_part(&parse(run)?, *seq, *node).await?;
        }
        for (run, generation) in &self.rendezvous {
            store.delete_rendezvous(&parse(run)?, *generation).await?;
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

/// What prune needs to know of one checkpoint kept in parts.
#[derive(Debug, Clone)]
struct PartsCheckpoint {
    nodes: Vec<u32>,
    complete: bool,
    /// When the newest readable part was written (Unix seconds); none if no part reads.
    newest: Option<f64>,
}

async fn parts_of(store: &Store, run: &RunId) -> anyhow::Result<BTreeMap<u64, PartsCheckpoint>> {
    let mut out = BTreeMap::new();
    for (seq, nodes) in store.list_parts(run).await? {
        let parts = crate::nodes::read_parts(store, run, seq, &nodes).await?;
        let newest = parts.values().filter_map(|p| p.as_ref().ok()).map(|m| m.created).reduce(f64::max);
        let complete = crate::nodes::complete(seq, &parts).is_ok();
        out.insert(seq, PartsCheckpoint { nodes, complete, newest });
    }
    Ok(out)
}

/// Which checkpoints of a run that ran on several nodes go: (whole manifests, seqs in
/// parts). The newest `keep` are kept, counting whole manifests (damaged or not, as on
/// one node) and complete checkpoints in parts together, since a run may change size.
/// An incomplete checkpoint in parts (a part missing or unreadable) is never restored:
/// it goes once a complete checkpoint newer than it exists and its newest part is
/// older than `grace` seconds (a node may still be uploading one); one with no readable
/// part has no age and is kept.
fn multi_node(whole: &[u64], parts: &BTreeMap<u64, PartsCheckpoint>, keep: u64, now: f64, grace: f64) -> (Vec<u64>, Vec<u64>) {
    let mut counted: Vec<u64> = whole.iter().copied().chain(parts.iter().filter(|(_, p)| p.complete).map(|(s, _)| *s)).collect();
    counted.sort_unstable();
    counted.dedup();
    let cut = counted.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
    let doomed: HashSet<u64> = counted[..cut].iter().copied().collect();
    let newest_complete = parts.iter().filter(|(_, p)| p.complete).map(|(s, _)| *s).chain(whole.iter().copied()).max();
    let whole_doomed = whole.iter().copied().filter(|s| doomed.contains(s)).collect();
    let parts_doomed = parts
        .iter()
        .filter(|(seq, p)| match p.complete {
            // A seq with a whole manifest is that manifest (as restore takes it); its
            // stray parts go with it.
            true => doomed.contains(seq),
            false => newest_complete.is_some_and(|n| **seq < n) && p.newest.is_some_and(|t| now - t >= grace),
        })
        .map(|(s, _)| *s)
        .collect();
    (whole_doomed, parts_doomed)
}

/// Rendezvous generations of `run` that no node will join again: every one but the
/// newest (nodes join only the newest, and node 0 numbers the next from it), published
/// longer ago than `grace` seconds (a node may be reading one it just chose). A record
/// that cannot be read has no age and is kept.
async fn old_generations(store: &Store, run: &RunId, now: f64, grace: f64) -> anyhow::Result<Vec<u64>> {
    let listed = store.list_rendezvous(run).await?;
    let mut old = Vec::new();
    for &g in listed.iter().rev().skip(1) {
        let Ok(bytes) = store.get_rendezvous(run, g).await else { continue };
        let Ok(r) = serde_json::from_slice::<crate::nodes::Rendezvous>(&bytes) else { continue };
        if now - r.published >= grace {
            old.push(g);
        }
    }
    old.sort_unstable();
    Ok(old)
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

    fn cp(nodes: &[u32], complete: bool, newest: f64) -> PartsCheckpoint {
        PartsCheckpoint { nodes: nodes.to_vec(), complete, newest: Some(newest) }
    }

    #[test]
    fn parts_checkpoints_are_kept_by_count_and_incomplete_ones_after_a_complete_one_and_the_grace() {
        let parts: BTreeMap<u64, PartsCheckpoint> = [
            (1, cp(&[0, 1], true, 100.0)),
            (2, cp(&[0], false, 200.0)),
            (3, cp(&[0, 1], true, 300.0)),
            (4, cp(&[0, 1], true, 400.0)),
            (5, cp(&[1], false, 500.0)),
        ]
        .into();
        // Keep 2: 3 and 4 stay; 1 goes; 2 (incomplete, older than 4) goes; 5 (newer than
        // every complete one) stays, a node may be uploading the rest of it.
        assert_eq!(multi_node(&[], &parts, 2, 10_000.0, 60.0), (vec![], vec![1, 2]));
        // Within the grace an incomplete one stays.
        assert_eq!(multi_node(&[], &parts, 2, 230.0, 60.0), (vec![], vec![1]));
        // Whole manifests of a run that changed size count with the complete ones (and
        // make 5 older than a complete checkpoint).
        assert_eq!(multi_node(&[6, 7], &parts, 2, 10_000.0, 60.0), (vec![], vec![1, 2, 3, 4, 5]));
        assert_eq!(multi_node(&[0], &parts, 1, 10_000.0, 60.0), (vec![0], vec![1, 2, 3]));
        // An incomplete one whose parts cannot be read has no age: kept.
        let mut p = parts.clone();
        p.insert(2, PartsCheckpoint { nodes: vec![0], complete: false, newest: None });
        assert_eq!(multi_node(&[], &p, 2, 10_000.0, 60.0), (vec![], vec![1]));
    }
}
