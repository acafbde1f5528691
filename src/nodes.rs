//! Runs on several nodes (docs/htcondor.md, section 6): every node runs `baton run` with
//! the same run id, its node rank and the node count.
//!
//! - **Rendezvous through the store.** Node 0 publishes its address and a port for each
//!   of its starts as a write-once record, `runs/<run>/rendezvous/<generation>.json`,
//!   with the checkpoint it restored and the seq the nodes' next commit takes. The other
//!   nodes wait (bounded) for the newest generation that none of their own attempts used
//!   and whose node 0 has not ended, restore exactly the checkpoint it names, and number
//!   their commits from the same seq, so that the nodes' parts of one commit share a seq.
//! - **One checkpoint from all nodes.** Each node uploads its own files as its part,
//!   `runs/<run>/parts/<seq>/<node>.json` (a manifest with a `part` field: node, node
//!   count, generation). A checkpoint is complete when the parts of nodes `0..nodes` are
//!   all there, all valid, all of the same generation, node count, epoch and step, and
//!   their files agree where two parts name the same path ([`complete`]). Readers decide
//!   that from the parts themselves; no node's word is trusted.
//! - **Restore.** Every node downloads every part of the chosen checkpoint into its
//!   checkpoint directory: torch.distributed.checkpoint spreads even replicated tensors
//!   over the ranks' shard files and needs `.metadata` and all the shards to load, and to
//!   reshard onto another number of nodes (/work/shared/facts/multinode.md).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::attempt;
use crate::error::{Classify, ErrorKind};
use crate::identity::RunId;
use crate::manifest::Manifest;
use crate::restore::{self, load_manifest, RestoreError, Restored};
use crate::store::{KnownChunks, PutOutcome, Store};

/// This node's place in a run on several nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub node: u32,
    pub nodes: u32,
}

/// What node 0 publishes for one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendezvous {
    pub format: u32,
    pub run_id: String,
    pub generation: u64,
    /// Where the other nodes reach node 0 (torchrun's MASTER_ADDR and MASTER_PORT).
    pub addr: String,
    pub port: u16,
    pub nodes: u32,
    /// The checkpoint node 0 restored, which every node restores (none: a fresh start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_seq: Option<u64>,
    /// The seq the nodes' first commit of this generation takes.
    pub next_seq: u64,
    /// Seconds since the Unix epoch.
    pub published: f64,
    pub host: String,
    pub writer: String,
}

/// One attempt's use of a generation, from its start and end records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    pub node: u32,
    pub generation: u64,
    /// The attempt has an end record.
    pub ended: bool,
    /// The attempt started its command (unknown, without an end record: taken as yes).
    pub command_started: bool,
}

/// Generations the attempts of the run used.
pub type Used = Vec<Use>;

/// The generation a node `me` may join: the newest listed, unless one of `me`'s own
/// attempts already ran its command in it or a newer one (it would be a stale address,
/// left by a node 0 that has since restarted or is about to), or node 0's attempt that
/// published it has ended. None: wait for node 0 to publish a new one.
///
/// An attempt of `me` that joined a generation but ended before starting its command
/// (evicted while restoring) does not make it stale: the other nodes' commands never met
/// it and are still waiting for this node, so its next attempt joins them there. Waiting
/// for a new generation instead would hold every node until their commands gave up on
/// the missing peer (torchrun's join timeout). If node 0's command has given up, node 0's
/// attempt ends, and that makes the generation stale by the second rule.
pub fn choose_generation(listed: &[u64], used: &[Use], me: u32) -> Option<u64> {
    let newest = *listed.iter().max()?;
    let stale = used
        .iter()
        .any(|u| (u.node == me && u.generation >= newest && u.command_started) || (u.node == 0 && u.generation == newest && u.ended));
    (!stale).then_some(newest)
}

/// The newest seq any checkpoint, whole or in parts, holds; the next commit goes past it.
pub async fn next_seq(store: &Store, run: &RunId) -> anyhow::Result<u64> {
    let whole = store.list_manifests(run).await?.last().copied().unwrap_or(0);
    let parts = store.list_parts(run).await?.keys().next_back().copied().unwrap_or(0);
    Ok(whole.max(parts) + 1)
}

/// The generations the run's attempts used, from their start and end records.
pub async fn used_generations(store: &Store, run: &RunId) -> anyhow::Result<Used> {
    let mut used = Vec::new();
    for r in attempt::load_all(store, run).await? {
        if let Some((node, generation)) = r.start.as_ref().and_then(|s| s.nodes.as_ref()).and_then(|n| Some((n.node, n.generation?))) {
            let command_started = r.end.as_ref().is_none_or(|e| e.command_started);
            used.push(Use { node, generation, ended: r.end.is_some(), command_started });
        }
    }
    Ok(used)
}

/// Publish node 0's address as the next generation (create-only; a generation someone
/// else took is skipped).
pub async fn publish(store: &Store, run: &RunId, mut record: Rendezvous) -> anyhow::Result<Rendezvous> {
    let first = store.list_rendezvous(run).await?.last().map_or(1, |g| g + 1);
    for g in first..first + 16 {
        record.generation = g;
        let body = serde_json::to_vec_pretty(&record)?;
        if store.put_rendezvous(run, g, body.into()).await? == PutOutcome::Created {
            return Ok(record);
        }
    }
    anyhow::bail!("could not publish a rendezvous generation for run {run}: too many concurrent starts of node 0")
}

/// One look at the store for a generation `topo.node` may join. `Err` only when the
/// store cannot be asked; `Ok(Err(why))` says why nothing can be joined yet.
pub async fn look(store: &Store, run: &RunId, topo: Topology) -> anyhow::Result<Result<Rendezvous, String>> {
    let listed = store.list_rendezvous(run).await?;
    if listed.is_empty() {
        return Ok(Err("node 0 has published no address yet".into()));
    }
    let used = used_generations(store, run).await?;
    let Some(g) = choose_generation(&listed, &used, topo.node) else {
        let newest = listed.last().copied().unwrap_or(0);
        return Ok(Err(format!(
            "the newest generation, {newest}, is stale (an earlier attempt of this node ran its command in it, or its node 0 has ended)"
        )));
    };
    let bytes = match store.get_rendezvous(run, g).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::Integrity => return Ok(Err(format!("generation {g}: {e}"))),
        Err(e) => return Err(e.into()),
    };
    let r: Rendezvous = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("generation {g} is not a rendezvous record: {e}"))),
    };
    if r.run_id != run.as_str() || r.generation != g {
        return Ok(Err(format!("generation {g} names run {} generation {}", r.run_id, r.generation)));
    }
    if r.nodes != topo.nodes {
        return Ok(Err(format!("generation {g} is for {} nodes, this node was started for {}", r.nodes, topo.nodes)));
    }
    Ok(Ok(r))
}

/// The address the other nodes can reach this one at: the source address of this host's
/// route to the outside (a UDP socket "connected" to a documentation address sends
/// nothing), else the host name.
pub fn reachable_addr() -> String {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback());
    match routed {
        Some(ip) => ip.to_string(),
        None => attempt::hostname(),
    }
}

/// A port free on `addr` now (the OS picks; it is released for torchrun to take).
pub fn free_port(addr: &str) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((addr, 0)).or_else(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))?;
    Ok(l.local_addr()?.port())
}

/// A part as read, or why it is unusable.
pub type PartRead = Result<Manifest, String>;

/// Whether the parts listed for `seq` make a complete checkpoint: the parts of nodes
/// `0..nodes` all present and valid, with one node count, one generation, one epoch and
/// step, and no two naming one path with different contents. Returns the checkpoint as
/// one manifest (node 0's, with every part's files) or why it is not complete.
pub fn complete(seq: u64, parts: &BTreeMap<u32, PartRead>) -> Result<Manifest, String> {
    let damaged: Vec<String> = parts.iter().filter_map(|(n, p)| p.as_ref().err().map(|e| format!("node {n}'s part: {e}"))).collect();
    if !damaged.is_empty() {
        return Err(damaged.join("; "));
    }
    let valid: Vec<(u32, &Manifest)> = parts.iter().filter_map(|(n, p)| p.as_ref().ok().map(|m| (*n, m))).collect();
    let Some(&(_, first)) = valid.first() else { return Err(format!("checkpoint {seq} has no parts")) };
    let Some(head) = first.part else { return Err("a part without its node count".into()) };
    for (n, m) in &valid {
        let Some(p) = m.part else { return Err(format!("node {n}'s part does not say it is one")) };
        if p.nodes != head.nodes || p.generation != head.generation {
            return Err(format!(
                "the parts disagree: node {} wrote for {} nodes in generation {}, node {n} for {} nodes in generation {}",
                head.node, head.nodes, head.generation, p.nodes, p.generation
            ));
        }
        if (m.epoch, m.step) != (first.epoch, first.step) {
            return Err(format!(
                "the parts disagree on where training was: node {} at epoch {:?} step {:?}, node {n} at epoch {:?} step {:?}",
                head.node, first.epoch, first.step, m.epoch, m.step
            ));
        }
    }
    let missing: Vec<u32> = (0..head.nodes).filter(|n| !parts.contains_key(n)).collect();
    if !missing.is_empty() {
        return Err(format!("incomplete: the part(s) of node(s) {missing:?} of {} are missing", head.nodes));
    }
    if let Some(extra) = parts.keys().find(|&&n| n >= head.nodes) {
        return Err(format!("a part of node {extra} is there, beyond the {} nodes the parts name", head.nodes));
    }
    let mut whole = parts[&0].as_ref().map_err(|e| e.clone())?.clone();
    let mut files: BTreeMap<String, (u32, crate::manifest::FileEntry)> = BTreeMap::new();
    whole.sizes = Default::default();
    for (n, m) in &valid {
        whole.sizes.logical_bytes += m.sizes.logical_bytes;
        whole.sizes.new_bytes += m.sizes.new_bytes;
        whole.sizes.stored_bytes += m.sizes.stored_bytes;
        whole.sizes.capture_seconds = whole.sizes.capture_seconds.max(m.sizes.capture_seconds);
        whole.sizes.upload_seconds = whole.sizes.upload_seconds.max(m.sizes.upload_seconds);
        for f in &m.files {
            match files.get(&f.path) {
                Some((_, there)) if there.sha256 == f.sha256 && there.size == f.size => {}
                Some((other, _)) => {
                    return Err(format!(
                        "nodes {other} and {n} both wrote {:?}, with different contents (does the trainer save into a clean directory?)",
                        f.path
                    ))
                }
                None => {
                    files.insert(f.path.clone(), (*n, f.clone()));
                }
            }
        }
    }
    whole.files = files.into_values().map(|(_, f)| f).collect();
    whole.validate().map_err(|e| e.to_string())?;
    Ok(whole)
}

/// Read the parts listed for `seq`, all at once. `Err` only when the store cannot be
/// asked; a part that cannot be used (damaged, not a part) is its node's `PartRead` error.
pub async fn read_parts(store: &Store, run: &RunId, seq: u64, listed: &[u32]) -> crate::store::Result<BTreeMap<u32, PartRead>> {
    let reads = futures::future::join_all(listed.iter().map(|&node| async move {
        let read = match store.get_checkpoint_bytes(run, seq, Some(node)).await {
            Ok(bytes) => Manifest::from_store_at(&bytes, run.as_str(), seq, Some(node)).map_err(|e| e.to_string()),
            Err(e) if e.kind() == ErrorKind::Integrity => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        Ok((node, read))
    }))
    .await;
    reads.into_iter().collect()
}

/// Checkpoint `seq` of a run, whole (a single-node manifest) or from its parts, as one
/// manifest, or why it cannot be used (`RestoreError` of kind `Integrity`).
pub async fn load_checkpoint(store: &Store, run: &RunId, seq: u64, listed_parts: Option<&[u32]>) -> Result<Manifest, RestoreError> {
    match listed_parts {
        None => load_manifest(store, run, seq).await,
        Some(listed) => {
            let wrap = |source: anyhow::Error| RestoreError::Manifest { run: run.to_string(), seq, source };
            let parts = read_parts(store, run, seq, listed).await.map_err(|e| wrap(e.into()))?;
            complete(seq, &parts).map_err(|e| wrap(anyhow::Error::msg(e)))
        }
    }
}

/// Every checkpoint seq of a run, descending, with its parts when it is in parts. A seq
/// with both a whole manifest and parts (a single-node attempt and a multi-node one at
/// once) is taken whole.
async fn candidates(store: &Store, run: &RunId) -> anyhow::Result<Vec<(u64, Option<Vec<u32>>)>> {
    let mut all: BTreeMap<u64, Option<Vec<u32>>> = store.list_parts(run).await?.into_iter().map(|(s, n)| (s, Some(n))).collect();
    for seq in store.list_manifests(run).await? {
        all.insert(seq, None);
    }
    Ok(all.into_iter().rev().collect())
}

/// Download checkpoint `seq` (whole or all its parts) into a fresh `work/restore-<seq>`.
async fn fetch(
    store: &Store,
    run: &RunId,
    seq: u64,
    parts: Option<&[u32]>,
    work: &Path,
    concurrency: usize,
    known: &KnownChunks,
) -> anyhow::Result<Result<(Manifest, std::path::PathBuf), RestoreError>> {
    let dir = work.join(format!("restore-{seq}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let m = load_checkpoint(store, run, seq, parts).await?;
        restore::download(store, &m, &dir, concurrency, known).await?;
        Ok::<_, RestoreError>(m)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(result.map(|m| (m, dir)))
}

/// Restore the newest complete checkpoint of `run`, whole or in parts; incomplete and
/// damaged ones are skipped with a warning. A run with no parts restores exactly as a
/// single-node run always has (`restore::restore_latest`).
pub async fn restore_newest(store: &Store, run: &RunId, work: &Path, concurrency: usize, known: &KnownChunks) -> anyhow::Result<Restored> {
    let start = Instant::now();
    if store.list_parts(run).await?.is_empty() {
        return restore::restore_latest(store, run, work, concurrency, known).await;
    }
    let mut skipped = Vec::new();
    for (seq, parts) in candidates(store, run).await? {
        match fetch(store, run, seq, parts.as_deref(), work, concurrency, known).await? {
            Ok(found) => return Ok(Restored { found: Some(found), skipped, seconds: start.elapsed().as_secs_f64() }),
            Err(e) if e.kind() != ErrorKind::Integrity => return Err(e.into()),
            Err(e) => {
                let why = crate::error::chain(&e);
                tracing::warn!("SKIPPING CHECKPOINT {seq} of run {run}: {why}; falling back to the previous one");
                skipped.push((seq, why));
            }
        }
    }
    if !skipped.is_empty() {
        tracing::warn!("no complete checkpoint left for run {run}; {} skipped, starting fresh", skipped.len());
    }
    Ok(Restored { found: None, skipped, seconds: start.elapsed().as_secs_f64() })
}

/// Restore exactly checkpoint `seq` (the one node 0 restored): a node that fell back on
/// its own would train from another step than the others.
pub async fn restore_exactly(
    store: &Store,
    run: &RunId,
    seq: u64,
    work: &Path,
    concurrency: usize,
    known: &KnownChunks,
) -> anyhow::Result<Restored> {
    let start = Instant::now();
    let parts = store.list_parts(run).await?.remove(&seq);
    let whole = store.list_manifests(run).await?.contains(&seq);
    let parts = if whole { None } else { parts };
    if !whole && parts.is_none() {
        anyhow::bail!("node 0 restored checkpoint {seq} of run {run}, which this node cannot find in {}", store.url());
    }
    match fetch(store, run, seq, parts.as_deref(), work, concurrency, known).await? {
        Ok(found) => Ok(Restored { found: Some(found), skipped: vec![], seconds: start.elapsed().as_secs_f64() }),
        Err(e) => Err(anyhow::Error::from(e).context(format!("cannot restore checkpoint {seq}, which node 0 restored"))),
    }
}

/// What `inspect` and `verify` say about one checkpoint kept in parts.
#[derive(Debug, Clone, Serialize)]
pub struct PartsRow {
    pub seq: u64,
    /// The nodes whose parts are listed.
    pub present: Vec<u32>,
    /// The node count the parts name (none when no part could be read).
    pub nodes: Option<u32>,
    pub generation: Option<u64>,
    pub epoch: Option<u64>,
    pub step: Option<u64>,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Every checkpoint of `run` kept in parts, ascending, each with whether it is complete.
pub async fn parts_rows(store: &Store, run: &RunId) -> anyhow::Result<Vec<PartsRow>> {
    let mut rows = Vec::new();
    for (seq, listed) in store.list_parts(run).await? {
        let parts = read_parts(store, run, seq, &listed).await?;
        let any = parts.values().find_map(|p| p.as_ref().ok());
        let verdict = complete(seq, &parts);
        rows.push(PartsRow {
            seq,
            present: listed,
            nodes: any.and_then(|m| m.part).map(|p| p.nodes),
            generation: any.and_then(|m| m.part).map(|p| p.generation),
            epoch: any.and_then(|m| m.epoch),
            step: any.and_then(|m| m.step),
            complete: verdict.is_ok(),
            problem: verdict.err(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ChunkRef, FileEntry, Part, Reason, Sizes, FORMAT};

    fn file(path: &str, byte: char) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 3,
            mode: 0o644,
            sha256: byte.to_string().repeat(64),
            chunks: vec![ChunkRef { hash: byte.to_string().repeat(64), size: 3 }],
        }
    }

    fn part(node: u32, nodes: u32, generation: u64, files: Vec<FileEntry>) -> PartRead {
        Ok(Manifest {
            format: FORMAT,
            run_id: "r".into(),
            seq: 7,
            created: 0.0,
            reason: Reason::Commit,
            attempt: 1,
            epoch: Some(1),
            step: Some(10),
            meta: Default::default(),
            host: format!("node{node}"),
            device: "cpu".into(),
            device_info: None,
            htcondor: Default::default(),
            writer: format!("w{node}"),
            files,
            sizes: Sizes { logical_bytes: 3, ..Default::default() },
            part: Some(Part { node, nodes, generation }),
        })
    }

    fn two() -> BTreeMap<u32, PartRead> {
        [(0, part(0, 2, 3, vec![file(".metadata", 'a'), file("__0_0.distcp", 'b')])), (1, part(1, 2, 3, vec![file("__1_0.distcp", 'c')]))]
            .into()
    }

    #[test]
    fn every_node_s_part_makes_the_checkpoint_with_all_their_files() {
        let whole = complete(7, &two()).unwrap();
        let paths: Vec<_> = whole.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [".metadata", "__0_0.distcp", "__1_0.distcp"]);
        assert_eq!(whole.sizes.logical_bytes, 6);
        assert_eq!(whole.host, "node0");
    }

    #[test]
    fn a_missing_part_makes_it_incomplete_whichever_node_it_is() {
        for gone in [0, 1] {
            let mut parts = two();
            parts.remove(&gone);
            let e = complete(7, &parts).unwrap_err();
            assert!(e.contains(&format!("node(s) [{gone}] of 2 are missing")), "{e}");
        }
        // A third node's part of a two-node checkpoint is not one of its parts.
        let mut parts = two();
        parts.insert(2, part(2, 2, 3, vec![]));
        assert!(complete(7, &parts).is_err());
    }

    #[test]
    fn parts_of_different_generations_steps_or_sizes_never_combine() {
        let mut parts = two();
        parts.insert(1, part(1, 2, 4, vec![file("__1_0.distcp", 'c')]));
        assert!(complete(7, &parts).unwrap_err().contains("generation"));
        let mut parts = two();
        let Ok(mut m) = part(1, 2, 3, vec![file("__1_0.distcp", 'c')]) else { unreachable!() };
        m.step = Some(11);
        parts.insert(1, Ok(m));
        assert!(complete(7, &parts).unwrap_err().contains("step"));
        // Node 1 believes in three nodes: node 2's part would be missing anyway, and the
        // disagreement says why.
        let mut parts = two();
        parts.insert(1, part(1, 3, 3, vec![file("__1_0.distcp", 'c')]));
        assert!(complete(7, &parts).unwrap_err().contains("disagree"));
    }

    #[test]
    fn a_damaged_part_or_conflicting_files_make_it_unusable() {
        let mut parts = two();
        parts.insert(1, Err("sha256 is not 64 hex digits".into()));
        assert!(complete(7, &parts).unwrap_err().contains("node 1's part"));
        // The same path from two nodes: fine when the bytes agree, refused when not
        // (a stale shard restored from another node and committed again).
        let mut parts = two();
        parts.insert(1, part(1, 2, 3, vec![file("__1_0.distcp", 'c'), file(".metadata", 'a')]));
        assert_eq!(complete(7, &parts).unwrap().files.len(), 3);
        parts.insert(1, part(1, 2, 3, vec![file("__1_0.distcp", 'c'), file("__0_0.distcp", 'd')]));
        assert!(complete(7, &parts).unwrap_err().contains("__0_0.distcp"));
    }

    /// An attempt of `node` in `generation` that started its command.
    fn ran(node: u32, generation: u64, ended: bool) -> Use {
        Use { node, generation, ended, command_started: true }
    }

    #[test]
    fn a_node_joins_only_a_generation_it_has_not_used_and_whose_node_0_lives() {
        assert_eq!(choose_generation(&[], &[], 1), None);
        assert_eq!(choose_generation(&[1, 2, 3], &[], 1), Some(3));
        // Node 1 used generation 3 already: it waits for node 0's next start.
        assert_eq!(choose_generation(&[1, 2, 3], &[ran(0, 3, false), ran(1, 3, true)], 1), None);
        assert_eq!(choose_generation(&[1, 2, 3, 4], &[ran(0, 3, true), ran(1, 3, true), ran(0, 4, false)], 1), Some(4));
        // Node 0's attempt of generation 4 has ended: its address is dead.
        assert_eq!(choose_generation(&[4], &[ran(0, 4, true)], 1), None);
        // Another node's use says nothing about this node's.
        assert_eq!(choose_generation(&[4], &[ran(2, 4, true)], 1), Some(4));
    }

    #[test]
    fn an_attempt_evicted_before_its_command_started_has_not_used_its_generation() {
        let never = Use { node: 1, generation: 3, ended: true, command_started: false };
        // Node 0's command of generation 3 still waits for node 1: node 1 joins it again.
        assert_eq!(choose_generation(&[1, 2, 3], &[ran(0, 3, false), never], 1), Some(3));
        // Node 0's attempt has ended meanwhile: its address is dead all the same.
        assert_eq!(choose_generation(&[3], &[ran(0, 3, true), never], 1), None);
        // Another attempt of node 1 did run its command in generation 3: stale.
        assert_eq!(choose_generation(&[3], &[ran(0, 3, false), never, ran(1, 3, true)], 1), None);
        // A record without the field is of an attempt that started its command.
        let old: crate::attempt::EndRecord =
            serde_json::from_str(r#"{"format":1,"attempt":2,"ended":1.0,"ending":"evicted","committed":[],"durable":[]}"#).unwrap();
        assert!(old.command_started);
        let mut e = old.clone();
        e.command_started = false;
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["command_started"], false);
        assert!(serde_json::to_value(&old).unwrap().get("command_started").is_none());
    }
}
