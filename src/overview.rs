//! Every run in a store at a glance (`baton inspect` with no run), cheaply enough for a
//! store of hundreds of runs: one listing of `runs/` and one of `chunks/` (each paginated
//! by the backend), then per run only its newest checkpoint and its attempt records, read
//! a bounded number at a time. Older checkpoints are never read: their seqs, sizes and
//! times come from the listing, and which attempt wrote them from the end records.
//!
//! A run on several nodes (src/nodes.rs) keeps its checkpoints as parts, one per node. The
//! same listing names them; the newest checkpoint whose listed parts are those of every
//! node is read (one read a part) and checked with [`nodes::complete`]; older ones count
//! as complete when their listing is (`baton verify RUN` reads them all). Its attempts
//! overlap in time, one per node: goodput is each node's useful time over the run's wall
//! time, averaged over the nodes, as `simulate --nodes` reports it.

use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::attempt::{EndRecord, StartRecord};
use crate::error::{Classify, ErrorKind};
use crate::identity::RunId;
use crate::manifest::Manifest;
use crate::nodes;
use crate::store::{PartListing, RunObjects, Store, StoreError};
use crate::timeline::{self, AttemptRecords, Point};

/// Reads in flight at once: enough to hide an S3 or WebDAV round trip, few enough not to
/// be throttled or to hold many large manifests in memory.
pub const CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// Checkpoints a restore can use: whole manifests, and checkpoints in parts whose
    /// parts are all there (only the newest is read and checked).
    pub checkpoints: usize,
    /// Checkpoints in parts that miss a node's part (or, the newest, fail the check).
    pub incomplete_checkpoints: usize,
    /// Nodes of the run: the most its attempts ran on (1: a single-node run).
    pub nodes: u32,
    /// The highest seq, intact or not.
    pub latest_seq: Option<u64>,
    /// From the newest checkpoint that reads.
    pub epoch: Option<u64>,
    pub step: Option<u64>,
    /// When the newest manifest was written (Unix seconds).
    pub updated: Option<f64>,
    /// Why the newest readable checkpoint was made (`final`: the command completed).
    pub latest_reason: Option<crate::manifest::Reason>,
    pub attempts: usize,
    pub evictions: usize,
    /// Useful training over wall time, from the attempt records and the listing's times
    /// (whole seconds, without checkpoint costs): approximate; `baton advise RUN` has the
    /// exact one.
    pub goodput: Option<f64>,
    /// Devices the attempts ran on, in the order first used.
    pub devices: Vec<String>,
    /// Bytes in the store of the chunks the newest checkpoint references.
    pub stored_bytes: u64,
    /// Of those, the bytes in chunks the newest checkpoint of another run references too.
    pub shared_bytes: u64,
    /// Bytes of all the run's manifests (parts included), from the listing.
    pub manifest_bytes: u64,
    /// Why the newest manifest could not be read, when it could not (progress is then
    /// from the newest one that could).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_error: Option<String>,
}

/// What building the overview cost.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub runs: usize,
    /// Objects the two listings returned (on S3, 1000 a request).
    pub listed_objects: usize,
    /// Objects read (manifests and attempt records).
    pub reads: usize,
    pub seconds: f64,
}

/// What is read of one run.
struct Fetched {
    run: RunId,
    listing: RunObjects,
    /// Checkpoints in parts, by seq: whether the listing holds every node's part.
    complete: BTreeMap<u64, bool>,
    /// The newest checkpoint that reads, whole or (several nodes) its parts combined.
    newest: Option<Manifest>,
    /// When `newest` is in parts: each node's part, for that node's timeline.
    newest_parts: BTreeMap<u32, Manifest>,
    newest_error: Option<String>,
    /// Checkpoints in parts read and found unusable (listed complete, but damaged).
    unusable: usize,
    records: Vec<AttemptRecords>,
    ends: Vec<EndRecord>,
    reads: usize,
}

/// Not there (deleted since the listing, say) or damaged is something to report; the
/// store not answering is an outage, and the whole overview fails.
fn tolerable(e: &StoreError) -> bool {
    e.kind() == ErrorKind::Integrity
}

/// The node an attempt ran as (0 for a single-node attempt).
fn node_of(start: &StartRecord) -> u32 {
    start.nodes.as_ref().map_or(0, |n| n.node)
}

/// How many nodes wrote checkpoint `seq` in parts, from the attempts' records (the
/// listing cannot say): the node count of an attempt whose end record lists the seq,
/// else of the last attempt on several nodes started by the time the part was written.
/// None when no record says (the records are gone): then the parts are judged by
/// whether the nodes listed are 0, 1, ... without a gap.
fn expected_nodes(records: &[AttemptRecords], ends: &[EndRecord], seq: u64, written: f64) -> Option<u32> {
    let of = |attempt: u64| records.iter().find(|r| r.start.attempt == attempt).and_then(|r| r.start.nodes.as_ref()).map(|n| n.nodes);
    ends.iter().filter(|e| e.committed.contains(&seq)).find_map(|e| of(e.attempt)).or_else(|| {
        records
            .iter()
            .filter(|r| r.start.started <= written + 1.0)
            .filter_map(|r| r.start.nodes.as_ref().map(|n| (r.start.started, n.nodes)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n)
    })
}

/// Whether the listed parts of a checkpoint are those of every node it was written by.
fn listed_complete(parts: &[PartListing], expected: Option<u32>) -> bool {
    let nodes: Vec<u32> = parts.iter().map(|p| p.node).collect();
    let n = expected.unwrap_or(nodes.len() as u32);
    n > 0 && nodes.iter().copied().eq(0..n)
}

/// A checkpoint to try as the newest: whole, or in parts (listed complete).
enum Candidate {
    Whole(u64),
    Parts(u64, Vec<u32>),
}

/// Checkpoints in parts whose listing is complete, by seq; those listed both whole and in
/// parts are taken whole, as a restore takes them.
fn complete_by_listing(listing: &RunObjects, records: &[AttemptRecords], ends: &[EndRecord]) -> BTreeMap<u64, bool> {
    let whole: BTreeSet<u64> = listing.manifests.iter().map(|m| m.seq).collect();
    listing
        .parts
        .iter()
        .filter(|(seq, _)| !whole.contains(seq))
        .map(|(&seq, parts)| {
            let written = parts.iter().map(|p| p.modified).max().unwrap_or(0) as f64 + 0.5;
            (seq, listed_complete(parts, expected_nodes(records, ends, seq, written)))
        })
        .collect()
}

async fn fetch(store: &Store, run: RunId, listing: RunObjects) -> crate::store::Result<Fetched> {
    let mut reads = 0;
    // The records first: which checkpoints in parts are complete depends on how many
    // nodes their attempts ran on.
    let mut records = Vec::new();
    let mut ends = Vec::new();
    for (&n, &has_end) in &listing.attempts {
        reads += 1;
        let start: Option<StartRecord> = match store.get_attempt(&run, n, false).await {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) if tolerable(&e) => None,
            Err(e) => return Err(e),
        };
        let end: Option<EndRecord> = match has_end {
            true => {
                reads += 1;
                match store.get_attempt(&run, n, true).await {
                    Ok(b) => serde_json::from_slice(&b).ok(),
                    Err(e) if tolerable(&e) => None,
                    Err(e) => return Err(e),
                }
            }
            false => None,
        };
        if let Some(e) = &end {
            ends.push(e.clone());
        }
        if let Some(start) = start {
            records.push(AttemptRecords { start, end });
        }
    }
    let mut candidates: BTreeMap<u64, Candidate> = listing.manifests.iter().map(|m| (m.seq, Candidate::Whole(m.seq))).collect();
    let complete = complete_by_listing(&listing, &records, &ends);
    for (&seq, &whole) in &complete {
        if whole {
            candidates.insert(seq, Candidate::Parts(seq, listing.parts[&seq].iter().map(|p| p.node).collect()));
        }
    }
    let (mut newest, mut newest_parts, mut newest_error, mut unusable) = (None, BTreeMap::new(), None, 0);
    // The newest checkpoint that reads; older ones only when newer ones are damaged.
    for candidate in candidates.values().rev() {
        match candidate {
            Candidate::Whole(seq) => {
                reads += 1;
                match store.get_manifest_bytes(&run, *seq).await {
                    Ok(bytes) => match Manifest::from_store(&bytes, run.as_str(), *seq) {
                        Ok(manifest) => {
                            newest = Some(manifest);
                            break;
                        }
                        Err(e) => newest_error.get_or_insert(format!("checkpoint {seq}: {e}")),
                    },
                    Err(e) if tolerable(&e) => newest_error.get_or_insert(format!("checkpoint {seq}: {e}")),
                    Err(e) => return Err(e),
                };
            }
            Candidate::Parts(seq, listed) => {
                reads += listed.len();
                let parts = nodes::read_parts(store, &run, *seq, listed).await?;
                match nodes::complete(*seq, &parts) {
                    Ok(whole) => {
                        newest = Some(whole);
                        newest_parts = parts.into_iter().filter_map(|(n, p)| Some((n, p.ok()?))).collect();
                        break;
                    }
                    Err(why) => {
                        unusable += 1;
                        newest_error.get_or_insert(format!("checkpoint {seq}: {why}"));
                    }
                }
            }
        }
    }
    Ok(Fetched { run, listing, complete, newest, newest_parts, newest_error, unusable, records, ends, reads })
}

/// The checkpoints of node `node`'s timeline as points: whole manifests (single-node
/// attempts are node 0) and its parts of checkpoints in parts complete by the listing
/// (work counts as saved only by a checkpoint that can be restored). The newest from
/// what was read, the others from the listing, each given to the node's attempt whose
/// end record lists it, else to the node's last attempt that had started by then.
fn points(f: &Fetched, node: u32) -> Vec<Point> {
    let mine: Vec<&AttemptRecords> = f.records.iter().filter(|r| node_of(&r.start) == node).collect();
    // Another node's end record lists the same seqs (its parts): not this node's. An end
    // record without a start record stays, as it always has for a single-node run.
    let others: BTreeSet<u64> = f.records.iter().filter(|r| node_of(&r.start) != node).map(|r| r.start.attempt).collect();
    let by_end: HashMap<u64, u64> =
        f.ends.iter().filter(|e| !others.contains(&e.attempt)).flat_map(|e| e.committed.iter().map(move |&s| (s, e.attempt))).collect();
    let from_listing = |seq: u64, modified: i64| {
        // Listings give whole seconds: the middle of the second is the unbiased guess.
        let created = modified as f64 + 0.5;
        let attempt = by_end
            .get(&seq)
            .copied()
            .unwrap_or_else(|| mine.iter().filter(|r| r.start.started <= created + 1.0).map(|r| r.start.attempt).max().unwrap_or(0));
        Point { seq, attempt, created, epoch: None, step: None, cost: 0.0 }
    };
    let whole = f.listing.manifests.iter().filter(|_| node == 0).map(|m| match &f.newest {
        Some(n) if n.seq == m.seq && f.newest_parts.is_empty() => Point::from(n),
        _ => from_listing(m.seq, m.modified),
    });
    let parts = f.listing.parts.iter().filter(|(seq, _)| f.complete.get(seq).copied().unwrap_or(false)).filter_map(|(&seq, parts)| {
        let p = parts.iter().find(|p| p.node == node)?;
        Some(match (&f.newest, f.newest_parts.get(&node)) {
            (Some(n), Some(part)) if n.seq == seq => Point::from(part),
            _ => from_listing(seq, p.modified),
        })
    });
    whole.chain(parts).collect()
}

/// Goodput of a run from each node's timeline (one for a single-node run): each node's
/// useful time over the run's wall time (first start of any node to last end of any),
/// averaged over `nodes`. Attempts of different nodes overlap in time, so summing them
/// over one wall time would count the same hours once per node. With one node this is
/// exactly that timeline's goodput. None without attempts or wall time. Also returns
/// the evictions, every node's together.
pub fn goodput_of(nodes: u32, timelines: &[(Vec<timeline::AttemptRow>, timeline::Totals, f64)]) -> (Option<f64>, usize) {
    let evictions = timelines.iter().map(|(_, t, _)| t.evictions).sum();
    let ran: Vec<&(Vec<timeline::AttemptRow>, timeline::Totals, f64)> = timelines.iter().filter(|(rows, _, _)| !rows.is_empty()).collect();
    let t0 = ran.iter().map(|(_, _, t0)| *t0).fold(f64::INFINITY, f64::min);
    // Each node's timeline starts at its own first attempt: its end on the run's clock is
    // its offset plus its wall time (the offset is exactly 0 for the earliest node).
    let wall = ran.iter().map(|(_, t, start)| (start - t0) + t.wall_seconds).fold(0.0, f64::max);
    if ran.is_empty() || wall <= 0.0 {
        return (None, evictions);
    }
    let useful: f64 = ran.iter().map(|(_, t, _)| t.useful_seconds).sum();
    (Some(useful / (nodes.max(1) as f64 * wall)), evictions)
}

pub async fn overview(store: &Store) -> crate::store::Result<(Vec<RunSummary>, Cost)> {
    let clock = Instant::now();
    let runs = store.list_run_objects().await?;
    let chunks: HashMap<String, u64> =
        store.list_chunks().await?.into_iter().filter_map(|o| Some((o.key.rsplit('/').next()?.to_string(), o.size))).collect();
    let listed_objects = runs
        .values()
        .map(|r| {
            r.manifests.len() + r.parts.values().map(Vec::len).sum::<usize>() + r.attempts.values().map(|&e| 1 + e as usize).sum::<usize>()
        })
        .sum::<usize>()
        + chunks.len();
    let mut fetched: Vec<Fetched> = futures::stream::iter(runs)
        .map(|(run, listing)| fetch(store, run, listing))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<crate::store::Result<_>>()?;
    fetched.sort_by(|a, b| a.run.cmp(&b.run));
    // Which runs' newest checkpoints use each chunk.
    let chunk_sets: Vec<BTreeSet<&str>> = fetched
        .iter()
        .map(|f| f.newest.iter().flat_map(|m| m.files.iter().flat_map(|file| file.chunks.iter().map(|c| c.hash.as_str()))).collect())
        .collect();
    let mut users: HashMap<&str, usize> = HashMap::new();
    for set in &chunk_sets {
        for h in set {
            *users.entry(h).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (f, set) in fetched.iter().zip(&chunk_sets) {
        let node_count = f.records.iter().filter_map(|r| r.start.nodes.as_ref().map(|n| n.nodes)).max().unwrap_or(1).max(1);
        // One timeline per node that has attempts, as `simulate --nodes` builds them.
        let node_ids: BTreeSet<u32> = f.records.iter().map(|r| node_of(&r.start)).chain([0]).collect();
        let timelines: Vec<_> = node_ids
            .iter()
            .map(|&node| {
                let recs: Vec<AttemptRecords> = f
                    .records
                    .iter()
                    .filter(|r| node_of(&r.start) == node)
                    .map(|r| AttemptRecords { start: r.start.clone(), end: r.end.clone() })
                    .collect();
                let t0 = recs.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
                let (rows, totals) = timeline::compute(&[], &recs, &points(f, node));
                (rows, totals, t0)
            })
            .collect();
        let (goodput, evictions) = goodput_of(node_count, &timelines);
        let incomplete = f.complete.values().filter(|&&c| !c).count() + f.unusable;
        let mut devices: Vec<String> = Vec::new();
        for r in &f.records {
            if !devices.contains(&r.start.device) {
                devices.push(r.start.device.clone());
            }
        }
        let size = |h: &&str| chunks.get(*h).copied().unwrap_or(0);
        out.push(RunSummary {
            run_id: f.run.to_string(),
            checkpoints: f.listing.manifests.len() + f.complete.values().filter(|&&c| c).count() - f.unusable,
            incomplete_checkpoints: incomplete,
            nodes: node_count,
            latest_seq: f.listing.manifests.iter().map(|m| m.seq).chain(f.listing.parts.keys().copied()).max(),
            epoch: f.newest.as_ref().and_then(|m| m.epoch),
            step: f.newest.as_ref().and_then(|m| m.step),
            updated: f.newest.as_ref().map(|m| m.created),
            latest_reason: f.newest.as_ref().map(|m| m.reason),
            attempts: f.listing.attempts.len(),
            evictions,
            goodput,
            devices,
            stored_bytes: set.iter().map(size).sum(),
            shared_bytes: set.iter().filter(|h| users.get(**h).copied().unwrap_or(0) > 1).map(size).sum(),
            manifest_bytes: f.listing.manifests.iter().map(|m| m.size).sum::<u64>()
                + f.listing.parts.values().flatten().map(|p| p.size).sum::<u64>(),
            latest_error: f.newest_error.clone(),
        });
    }
    let cost =
        Cost { runs: out.len(), listed_objects, reads: fetched.iter().map(|f| f.reads).sum(), seconds: clock.elapsed().as_secs_f64() };
    tracing::debug!(
        "overview of {} runs: 2 listings ({} objects), {} reads, {} at a time, in {:.2} s",
        cost.runs,
        cost.listed_objects,
        cost.reads,
        CONCURRENCY,
        cost.seconds
    );
    Ok((out, cost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::samples::{end, start};
    use crate::attempt::{Ending, NodeStart};

    fn timeline_of(attempts: &[(u64, f64, f64)]) -> (Vec<timeline::AttemptRow>, timeline::Totals, f64) {
        let recs: Vec<AttemptRecords> = attempts
            .iter()
            .map(|&(n, from, to)| AttemptRecords { start: start(n, from, 0.0, None), end: Some(end(n, to, Ending::Completed, None, 0.0)) })
            .collect();
        let t0 = recs.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
        let (rows, totals) = timeline::compute(&[], &recs, &[]);
        (rows, totals, t0)
    }

    #[test]
    fn goodput_of_several_nodes_is_each_node_s_useful_time_over_the_run_s_wall_averaged() {
        // Node 0 trains 100..200, node 1 joins at 110: 100 s and 90 s of training over
        // 100 s of wall time on two nodes. Summed over one wall time it would be 190%.
        let (g, ev) = goodput_of(2, &[timeline_of(&[(1, 100.0, 200.0)]), timeline_of(&[(2, 110.0, 200.0)])]);
        assert!((g.unwrap() - 0.95).abs() < 1e-12, "{g:?}");
        assert_eq!(ev, 0);
        // Node 1 ends after node 0: the wall time runs to the last end of any node.
        let (g, _) = goodput_of(2, &[timeline_of(&[(1, 100.0, 200.0)]), timeline_of(&[(2, 100.0, 300.0)])]);
        assert!((g.unwrap() - 300.0 / 400.0).abs() < 1e-12, "{g:?}");
        // A node with no attempt contributes nothing: half the nodes trained.
        let (g, _) = goodput_of(2, &[timeline_of(&[(1, 100.0, 200.0)]), timeline_of(&[])]);
        assert!((g.unwrap() - 0.5).abs() < 1e-12, "{g:?}");
        // One node: exactly its timeline's goodput, as before runs on several nodes.
        let one = timeline_of(&[(1, 100.0, 150.0), (2, 170.0, 200.0)]);
        let want = one.1.goodput;
        assert_eq!(goodput_of(1, &[one]).0, Some(want));
        assert_eq!(goodput_of(1, &[timeline_of(&[])]).0, None);
    }

    #[test]
    fn a_checkpoint_in_parts_is_complete_by_its_listing_when_every_node_s_part_is_there() {
        let listed = |nodes: &[u32]| nodes.iter().map(|&node| PartListing { node, size: 1, modified: 0 }).collect::<Vec<_>>();
        assert!(listed_complete(&listed(&[0, 1]), Some(2)));
        assert!(!listed_complete(&listed(&[0]), Some(2)));
        assert!(!listed_complete(&listed(&[1]), Some(2)));
        assert!(!listed_complete(&listed(&[0, 1]), Some(3)));
        // Without records to say how many nodes: complete unless there is a gap.
        assert!(listed_complete(&listed(&[0, 1]), None));
        assert!(!listed_complete(&listed(&[1, 2]), None));
        // How many nodes: from the attempt whose end record lists the seq, else from the
        // last attempt on several nodes started by then.
        let on = |n: u64, started: f64, nodes: u32| {
            let mut s = start(n, started, 0.0, None);
            s.nodes = Some(NodeStart { node: 0, nodes, generation: Some(1), master_addr: None, master_port: None, restored_nodes: None });
            AttemptRecords { start: s, end: None }
        };
        let records = [on(1, 10.0, 2), on(2, 50.0, 3)];
        let mut e = end(1, 60.0, Ending::Evicted, None, 0.0);
        e.committed = vec![7];
        assert_eq!(expected_nodes(&records, &[e.clone()], 7, 55.0), Some(2));
        assert_eq!(expected_nodes(&records, &[e.clone()], 8, 55.0), Some(3));
        assert_eq!(expected_nodes(&records, &[e], 8, 20.0), Some(2));
        assert_eq!(expected_nodes(&[], &[], 8, 20.0), None);
    }
}
