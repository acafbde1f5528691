//! `--verify`: does the run that was evicted end exactly where an uninterrupted run of
//! the same command ends? Final checkpoints are compared file by file (sha256), and the
//! last line mentioning a digest in each run's output.

use std::path::Path;

use futures::future::BoxFuture;

use super::{Outcome, Reference, VerifyOutcome};
use crate::identity::RunId;
use crate::manifest::Manifest;
use crate::restore::load_manifest;
use crate::store::Store;

fn digest_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().rev().find(|l| l.to_ascii_lowercase().contains("digest")).map(|l| l.trim().to_string())
}

/// How a run's final checkpoint is found: the newest manifest on one node, the newest
/// complete checkpoint on several.
pub type Latest = for<'a> fn(&'a Store, &'a RunId) -> BoxFuture<'a, anyhow::Result<Manifest>>;

/// `--verify`'s verdict, when there is a reference run to compare with.
pub async fn verdict(
    reference: Option<&Reference>,
    outcome: &Outcome,
    store: &Store,
    run: &RunId,
    latest: Latest,
) -> anyhow::Result<Option<VerifyOutcome>> {
    let Some(r) = reference else { return Ok(None) };
    if !outcome.completed {
        let message = "FAIL: the simulated run did not complete".into();
        return Ok(Some(VerifyOutcome { pass: false, message, reference_seconds: r.seconds }));
    }
    let reference_run = RunId::parse("reference").map_err(anyhow::Error::msg)?;
    let (pass, message) = compare(&latest(store, run).await?, &latest(&r.store, &reference_run).await?, &outcome.last_stdout, &r.stdout);
    Ok(Some(VerifyOutcome { pass, message, reference_seconds: r.seconds }))
}

pub async fn latest(store: &Store, run: &RunId) -> anyhow::Result<Manifest> {
    let seq = store.list_manifests(run).await?.last().copied().ok_or_else(|| anyhow::anyhow!("run {run} has no checkpoint"))?;
    Ok(load_manifest(store, run, seq).await?)
}

/// Compare the final checkpoints file by file, and the printed digests.
pub fn compare(sim: &Manifest, reference: &Manifest, sim_out: &Path, ref_out: &Path) -> (bool, String) {
    let mut a: Vec<_> = sim.files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect();
    let mut b: Vec<_> = reference.files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect();
    a.sort();
    b.sort();
    for (path, hash) in &b {
        match a.iter().find(|(p, _)| p == path) {
            None => return (false, format!("FAIL: {path} is in the uninterrupted run's final checkpoint but not in the simulated one")),
            Some((_, h)) if h != hash => {
                return (
                    false,
                    format!("FAIL: first differing file {path}: sha256 {}… after evictions, {}… uninterrupted", &h[..16], &hash[..16]),
                )
            }
            _ => {}
        }
    }
    if let Some((path, _)) = a.iter().find(|(p, _)| !b.iter().any(|(q, _)| q == p)) {
        return (false, format!("FAIL: {path} is in the simulated run's final checkpoint but not in the uninterrupted one"));
    }
    match (digest_line(sim_out), digest_line(ref_out)) {
        (Some(x), Some(y)) if x != y => (false, format!("FAIL: the final output differs: {x:?} after evictions, {y:?} uninterrupted")),
        (Some(x), Some(_)) => (true, format!("PASS: {} files identical to the uninterrupted run, and the same {x:?}", b.len())),
        (None, Some(y)) => (false, format!("FAIL: the uninterrupted run printed {y:?}, the simulated run printed no digest")),
        _ => (true, format!("PASS: {} files identical to the uninterrupted run", b.len())),
    }
}
