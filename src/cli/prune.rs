//! `baton prune`: delete old checkpoints and the chunks nothing references any more.

use std::time::Duration;

use super::StoreArg;
use baton::identity::RunId;

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
    /// Only chunks (and temporary files of unfinished uploads) older than this are deleted.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let mut plan = baton::prune::plan(&store, a.run.as_ref(), a.keep, a.grace).await?;
    plan.dry_run = a.dry_run;
    if !a.dry_run {
        plan.execute(&store).await?;
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
        if !plan.rendezvous.is_empty() {
            println!("{verb} {} rendezvous record(s) of old generations", plan.rendezvous.len());
        }
        if plan.temporaries > 0 {
            println!("{verb} {} temporary file(s) of unfinished uploads, {:.1} MB", plan.temporaries, plan.temporary_bytes as f64 / 1e6);
        }
        if plan.unknown_age > 0 {
            println!("kept {} unreferenced chunk(s) whose age the store does not give (no Last-Modified)", plan.unknown_age);
        }
    }
    Ok(0)
}
