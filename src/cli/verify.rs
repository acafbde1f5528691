//! `baton verify`: re-download and re-hash checkpoints.

use super::StoreArg;
use baton::error::{ErrorKind, ExitCode, Failure};
use baton::identity::RunId;

/// Re-download and re-hash every chunk and file of a checkpoint, a run, or the whole store.
#[derive(clap::Args)]
#[command(long_about = "Re-download every chunk of the selected checkpoints, check its size and sha256, and \
re-hash every file. Exits 0 when everything is intact, 71 with a list of what is damaged otherwise.")]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    /// Only this run.
    #[arg(value_parser = super::parse_run_id)]
    run: Option<RunId>,
    /// Only this checkpoint (seq) of the run.
    checkpoint: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let runs = match &a.run {
        Some(r) => vec![r.clone()],
        None => store.list_runs().await?,
    };
    let mut report = baton::verify::Report::default();
    for run in &runs {
        let seqs = match a.checkpoint {
            Some(s) => vec![s],
            None => store.list_manifests(run).await?,
        };
        if seqs.is_empty() && a.run.is_some() {
            return Err(Failure::new(ErrorKind::Usage, format!("run {run} has no checkpoints in {}", store.url())).into());
        }
        for seq in seqs {
            baton::verify::checkpoint(&store, run, seq, 8, &mut report).await?;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.damaged {
            match &d.file {
                Some(f) => println!("DAMAGED  run {} checkpoint {} file {}: {}", d.run, d.seq, f, d.problem),
                None => println!("DAMAGED  run {} checkpoint {}: {}", d.run, d.seq, d.problem),
            }
        }
        println!(
            "{} checkpoint(s), {} file(s), {} chunk(s), {:.1} MB checked: {}",
            report.checkpoints,
            report.files,
            report.chunks,
            report.bytes as f64 / 1e6,
            if report.damaged.is_empty() { "all intact".to_string() } else { format!("{} damaged", report.damaged.len()) }
        );
    }
    Ok(if report.damaged.is_empty() { 0 } else { ExitCode::Damaged as i32 })
}
