//! `baton prune`: delete old checkpoints and the chunks nothing references any more.

use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;

use super::StoreArg;
use baton::error::{ErrorKind, Failure};
use baton::identity::RunId;
use baton::restore::load_manifest;

/// Keep the newest N checkpoints of each run (or of RUN), then delete unreferenced chunks.
#[derive(clap::Args)]
#[command(long_about = "Delete all but the newest --keep checkpoints of RUN (or of every run), then delete \
chunks that no remaining manifest of any run references and that are older than --grace (a run \
may be uploading them right now). Only prune deletes; `baton run` never does.")]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    #[arg(value_parser = super::parse_run_id)]
    run: Option<RunId>,
    /// Checkpoints to keep per run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: u64,
    /// Only chunks older than this are deleted.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct Plan {
    dry_run: bool,
    checkpoints: Vec<(String, u64)>,
    chunks: usize,
    chunk_bytes: u64,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let all_runs = store.list_runs().await?;
    let targets: Vec<RunId> = match &a.run {
        Some(r) => vec![r.clone()],
        None => all_runs.clone(),
    };
    let mut plan = Plan { dry_run: a.dry_run, ..Default::default() };
    let mut removed: HashSet<(String, u64)> = HashSet::new();
    for run in &targets {
        let seqs = store.list_manifests(run).await?;
        let cut = seqs.len().saturating_sub(a.keep as usize);
        for &seq in &seqs[..cut] {
            plan.checkpoints.push((run.to_string(), seq));
            removed.insert((run.to_string(), seq));
        }
    }
    // Chunks are shared by every run in the store: collect what all remaining manifests need.
    let mut referenced = HashSet::new();
    for run in &all_runs {
        for seq in store.list_manifests(run).await? {
            if removed.contains(&(run.to_string(), seq)) {
                continue;
            }
            let m = load_manifest(&store, run, seq).await.map_err(|e| {
                Failure::new(
                    ErrorKind::Integrity,
                    format!("{e:#}; cannot tell which chunks it needs, so no chunk is deleted (fix or remove that manifest first)"),
                )
            })?;
            referenced.extend(m.chunk_hashes().map(str::to_string));
        }
    }
    let now = baton::attempt::now() as i64;
    let mut doomed = Vec::new();
    for o in store.list_chunks().await? {
        let Some(hash) = o.key.rsplit('/').next() else { continue };
        if !referenced.contains(hash) && now - o.modified >= a.grace.as_secs() as i64 {
            plan.chunk_bytes += o.size;
            doomed.push(hash.to_string());
        }
    }
    plan.chunks = doomed.len();
    if !a.dry_run {
        // Manifests first: a checkpoint must never be visible with its chunks gone.
        for (run, seq) in &plan.checkpoints {
            store.delete_manifest(&RunId::parse(run).map_err(anyhow::Error::msg)?, *seq).await?;
        }
        for h in &doomed {
            store.delete_chunk(h).await?;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        for (run, seq) in &plan.checkpoints {
            println!("{verb} run {run} checkpoint {seq}");
        }
        println!(
            "{verb} {} checkpoint(s) and {} unreferenced chunk(s), {:.1} MB",
            plan.checkpoints.len(),
            plan.chunks,
            plan.chunk_bytes as f64 / 1e6
        );
    }
    Ok(0)
}
