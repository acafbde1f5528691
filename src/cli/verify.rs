//! `baton verify`: re-download and re-hash checkpoints.

use super::StoreArg;
use baton::error::{ErrorKind, ExitCode, Failure};
use baton::identity::RunId;

/// Re-download and re-hash every chunk and file of a checkpoint, a run, or the whole store.
#[derive(clap::Args)]
#[command(long_about = "Re-download every chunk of the selected checkpoints, check its size and sha256, and \
re-hash every file. Exits 0 when everything is intact, 71 with a list of what is damaged otherwise.

Every damaged chunk found is marked in the store (damaged/<hash>), so that no later upload of any \
baton reuses it: the next checkpoint holding the same bytes writes them again.

With --repair, good copies of the damaged chunks are written from a directory holding the same \
bytes (--from-dir: the trainer's checkpoint directory, say) or from another store (--from-store), \
every candidate checked against its hash first; then the damaged checkpoints are verified again. \
On a store that overwrites (a directory, S3) the good copy replaces the damaged object; on a \
write-once Pelican origin it is written beside it, and readers find it there.")]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    /// Only this run.
    #[arg(value_parser = super::parse_run_id)]
    run: Option<RunId>,
    /// Only this checkpoint (seq) of the run.
    checkpoint: Option<u64>,
    /// Verify this dataset (NAME: every version; NAME@VERSION: that one), repeatable.
    /// Without RUN or --dataset, every run and every dataset version is verified.
    #[arg(long, value_name = "NAME[@VERSION]", value_parser = baton::data::DataRef::parse)]
    dataset: Vec<baton::data::DataRef>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write good copies of damaged chunks, from --from-dir or --from-store.
    #[arg(long)]
    repair: bool,
    /// With --repair: a directory whose files hold the damaged chunks' bytes (the
    /// checkpoint directory the trainer wrote, or a restored copy of it).
    #[arg(long, value_name = "DIR", requires = "repair", conflicts_with = "from_store")]
    from_dir: Option<std::path::PathBuf>,
    /// With --repair: another store holding the same chunks (any store URL).
    #[arg(long, value_name = "URL", requires = "repair", value_parser = super::check_store_url)]
    from_store: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let runs = match (&a.run, a.dataset.is_empty()) {
        (Some(r), _) => vec![r.clone()],
        (None, true) => store.list_runs().await?,
        (None, false) => Vec::new(),
    };
    let mut report = baton::verify::Report::default();
    for run in &runs {
        // Checkpoints of runs on several nodes are kept in parts, one per node.
        let mut parts = store.list_parts(run).await?;
        let mut seqs = match a.checkpoint {
            Some(s) => vec![s],
            None => store.list_manifests(run).await?,
        };
        if a.checkpoint.is_none() {
            seqs.extend(parts.keys().copied());
            seqs.sort_unstable();
            seqs.dedup();
        }
        if seqs.is_empty() && a.run.is_some() {
            return Err(Failure::new(ErrorKind::Usage, format!("run {run} has no checkpoints in {}", store.url())).into());
        }
        let whole: std::collections::BTreeSet<u64> = store.list_manifests(run).await?.into_iter().collect();
        for seq in seqs {
            match parts.remove(&seq) {
                Some(nodes) if !whole.contains(&seq) => baton::verify::parts(&store, run, seq, &nodes, 8, &mut report).await?,
                _ => baton::verify::checkpoint(&store, run, seq, 8, &mut report).await?,
            }
        }
    }
    let datasets: Vec<(baton::data::DatasetName, Vec<u64>)> = match (&a.run, a.dataset.is_empty()) {
        (None, true) => store.list_datasets().await?.into_iter().map(|(n, v)| (n, v.iter().map(|m| m.seq).collect())).collect(),
        _ => {
            let mut out = Vec::new();
            for d in &a.dataset {
                let versions = match d.version {
                    Some(_) => vec![baton::data::resolve(&store, d).await?],
                    None => {
                        baton::data::resolve(&store, d).await?;
                        store.list_dataset_versions(&d.name).await?
                    }
                };
                out.push((d.name.clone(), versions));
            }
            out
        }
    };
    for (name, versions) in &datasets {
        for &v in versions {
            baton::verify::dataset(&store, name, v, 8, &mut report).await?;
        }
    }
    let repair = match (a.repair, report.damaged.is_empty()) {
        (false, _) | (true, true) => None,
        (true, false) => Some(repair(&store, &a, &mut report, &runs).await?),
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(r) = &repair {
            v["repair"] = serde_json::to_value(r)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(r) = &repair {
            for h in &r.repaired {
                println!("REPAIRED chunk {h}");
            }
            for h in &r.not_found {
                println!("NOT REPAIRED chunk {h}: no intact copy of its bytes in the source");
            }
            for (h, why) in &r.failed {
                println!("NOT REPAIRED chunk {h}: {why}");
            }
            println!("{} damaged chunk(s): {} repaired", r.damaged_chunks, r.repaired.len());
        }
        for d in &report.incomplete {
            println!("INCOMPLETE run {} checkpoint {}: {} (never restored)", d.run, d.seq, d.problem);
        }
        for d in &report.damaged {
            match &d.file {
                Some(f) => println!("DAMAGED  run {} checkpoint {} file {}: {}", d.run, d.seq, f, d.problem),
                None => println!("DAMAGED  run {} checkpoint {}: {}", d.run, d.seq, d.problem),
            }
        }
        for d in &report.damaged_datasets {
            match &d.file {
                Some(f) => println!("DAMAGED  dataset {} version {} file {}: {}", d.dataset, d.version, f, d.problem),
                None => println!("DAMAGED  dataset {} version {}: {}", d.dataset, d.version, d.problem),
            }
        }
        let damaged = report.damaged.len() + report.damaged_datasets.len();
        println!(
            "{} checkpoint(s), {}{} file(s), {} chunk(s), {:.1} MB checked: {}",
            report.checkpoints,
            if report.dataset_versions > 0 { format!("{} dataset version(s), ", report.dataset_versions) } else { String::new() },
            report.files,
            report.chunks,
            report.bytes as f64 / 1e6,
            match (damaged, report.incomplete.len()) {
                (0, 0) => "all intact".to_string(),
                (0, i) => format!("all intact, {i} incomplete"),
                (d, 0) => format!("{d} damaged"),
                (d, i) => format!("{d} damaged, {i} incomplete"),
            }
        );
    }
    Ok(if report.intact() { 0 } else { ExitCode::Damaged as i32 })
}

/// Repair what `report` found, then verify the damaged checkpoints again: `report` ends
/// as the second verification's.
async fn repair(
    store: &baton::store::Store,
    a: &Args,
    report: &mut baton::verify::Report,
    runs: &[RunId],
) -> anyhow::Result<baton::repair::Repair> {
    let source = match (&a.from_dir, &a.from_store) {
        (Some(dir), _) => baton::repair::Source::Dir(dir.clone()),
        (None, Some(url)) => {
            let options = baton::store::Options { token_file: a.store.token_file()? };
            baton::repair::Source::Store(baton::store::Store::open_with(
                &baton::store::StoreUrl::parse(url).map_err(baton::error::usage)?,
                &options,
            )?)
        }
        (None, None) => return Err(Failure::new(
            ErrorKind::Usage,
            "--repair needs the good bytes from somewhere: --from-dir DIR (a directory with the checkpoint's files) or --from-store URL",
        )
        .into()),
    };
    let wanted = baton::repair::damaged_chunks(store, report).await?;
    let done = baton::repair::repair(store, &wanted, &source, 1).await?;
    let again: Vec<(String, u64)> = report.damaged.iter().map(|d| (d.run.clone(), d.seq)).collect();
    let mut fresh = baton::verify::Report::default();
    let mut seen = std::collections::BTreeSet::new();
    for (run, seq) in again {
        if seen.insert((run.clone(), seq)) {
            let run =
                runs.iter().find(|r| r.as_str() == run).cloned().map_or_else(|| RunId::parse(&run).map_err(anyhow::Error::msg), Ok)?;
            baton::verify::checkpoint(store, &run, seq, 8, &mut fresh).await?;
        }
    }
    report.damaged = fresh.damaged;
    Ok(done)
}
