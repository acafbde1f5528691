//! Every run in a store at a glance (`baton inspect` with no run), cheaply enough for a
//! store of hundreds of runs: one listing of `runs/` and one of `chunks/` (each paginated
//! by the backend), then per run only its newest manifest and its attempt records, read
//! a bounded number at a time. Older manifests are never read: their seqs, sizes and
//! times come from the listing, and which attempt wrote them from the end records.

use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::attempt::{EndRecord, StartRecord};
use crate::error::{Classify, ErrorKind};
use crate::identity::RunId;
use crate::manifest::Manifest;
use crate::store::{RunObjects, Store, StoreError};
use crate::timeline::{self, AttemptRecords, Point};

/// Reads in flight at once: enough to hide an S3 or WebDAV round trip, few enough not to
/// be throttled or to hold many large manifests in memory.
pub const CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub checkpoints: usize,
    /// The highest seq, intact or not.
    pub latest_seq: Option<u64>,
    /// From the newest manifest that reads.
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
    /// Bytes of all the run's manifests, from the listing.
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
    newest: Option<Manifest>,
    newest_error: Option<String>,
    records: Vec<AttemptRecords>,
    ends: Vec<EndRecord>,
    reads: usize,
}

/// Not there (deleted since the listing, say) or damaged is something to report; the
/// store not answering is an outage, and the whole overview fails.
fn tolerable(e: &StoreError) -> bool {
    e.kind() == ErrorKind::Integrity
}

async fn fetch(store: &Store, run: RunId, listing: RunObjects) -> crate::store::Result<Fetched> {
    let mut reads = 0;
    let (mut newest, mut newest_error) = (None, None);
    // The newest manifest that reads; older ones only when newer ones are damaged.
    for m in listing.manifests.iter().rev() {
        reads += 1;
        match store.get_manifest_bytes(&run, m.seq).await {
            Ok(bytes) => match Manifest::from_store(&bytes, run.as_str(), m.seq) {
                Ok(manifest) => {
                    newest = Some(manifest);
                    break;
                }
                Err(e) => newest_error.get_or_insert(format!("checkpoint {}: {e}", m.seq)),
            },
            Err(e) if tolerable(&e) => newest_error.get_or_insert(format!("checkpoint {}: {e}", m.seq)),
            Err(e) => return Err(e),
        };
    }
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
    Ok(Fetched { run, listing, newest, newest_error, records, ends, reads })
}

/// The checkpoints as timeline points: the newest from its manifest, the others from the
/// listing, each given to the attempt whose end record lists it, else to the last attempt
/// that had started by then.
fn points(f: &Fetched) -> Vec<Point> {
    let by_end: HashMap<u64, u64> = f.ends.iter().flat_map(|e| e.committed.iter().map(move |&s| (s, e.attempt))).collect();
    f.listing
        .manifests
        .iter()
        .map(|m| match &f.newest {
            Some(n) if n.seq == m.seq => Point::from(n),
            _ => {
                // Listings give whole seconds: the middle of the second is the unbiased guess.
                let created = m.modified as f64 + 0.5;
                let attempt = by_end.get(&m.seq).copied().unwrap_or_else(|| {
                    f.records.iter().filter(|r| r.start.started <= created + 1.0).map(|r| r.start.attempt).max().unwrap_or(0)
                });
                Point { seq: m.seq, attempt, created, epoch: None, step: None, cost: 0.0 }
            }
        })
        .collect()
}

pub async fn overview(store: &Store) -> crate::store::Result<(Vec<RunSummary>, Cost)> {
    let clock = Instant::now();
    let runs = store.list_run_objects().await?;
    let chunks: HashMap<String, u64> =
        store.list_chunks().await?.into_iter().filter_map(|o| Some((o.key.rsplit('/').next()?.to_string(), o.size))).collect();
    let listed_objects =
        runs.values().map(|r| r.manifests.len() + r.attempts.values().map(|&e| 1 + e as usize).sum::<usize>()).sum::<usize>()
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
        let pts = points(f);
        let (rows, totals) = timeline::compute(&[], &f.records, &pts);
        let mut devices: Vec<String> = Vec::new();
        for r in &f.records {
            if !devices.contains(&r.start.device) {
                devices.push(r.start.device.clone());
            }
        }
        let size = |h: &&str| chunks.get(*h).copied().unwrap_or(0);
        out.push(RunSummary {
            run_id: f.run.to_string(),
            checkpoints: f.listing.manifests.len(),
            latest_seq: f.listing.manifests.last().map(|m| m.seq),
            epoch: f.newest.as_ref().and_then(|m| m.epoch),
            step: f.newest.as_ref().and_then(|m| m.step),
            updated: f.newest.as_ref().map(|m| m.created),
            latest_reason: f.newest.as_ref().map(|m| m.reason),
            attempts: f.listing.attempts.len(),
            evictions: totals.evictions,
            goodput: (!rows.is_empty() && totals.wall_seconds > 0.0).then_some(totals.goodput),
            devices,
            stored_bytes: set.iter().map(size).sum(),
            shared_bytes: set.iter().filter(|h| users.get(**h).copied().unwrap_or(0) > 1).map(size).sum(),
            manifest_bytes: f.listing.manifests.iter().map(|m| m.size).sum(),
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
