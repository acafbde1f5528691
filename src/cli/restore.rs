//! `baton restore`: bring a checkpoint back into a directory.

use std::path::PathBuf;

use super::StoreArg;
use baton::error::{usage, ExitCode, Failure};
use baton::identity::RunId;
use baton::store::KnownChunks;

/// Download a checkpoint (default: the newest intact one) into a new or empty directory.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  baton restore RUN --to ./ckpt        newest intact checkpoint\n  baton restore RUN 4 --to ./ckpt-4    checkpoint 4 exactly"
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    #[arg(value_parser = super::parse_run_id)]
    run: RunId,
    /// Checkpoint seq [default: the newest intact one].
    checkpoint: Option<u64>,
    /// Directory to write into; must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let target = std::path::absolute(&a.to).map_err(|e| usage(format!("{}: {e}", a.to.display())))?;
    if target.exists() {
        let empty = std::fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty || std::fs::symlink_metadata(&target)?.file_type().is_symlink() {
            return Err(usage(format!("{} exists and is not an empty directory; restore into a new directory", target.display())));
        }
    }
    // Download next to the target, then rename: a failed restore leaves nothing behind.
    let parent = target.parent().ok_or_else(|| usage("--to must name a directory"))?;
    std::fs::create_dir_all(parent)?;
    let work = parent.join(format!(".baton-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let known = KnownChunks::default();
    let result = async {
        match a.checkpoint {
            Some(seq) => {
                let m = baton::restore::load_manifest(&store, &a.run, seq).await?;
                let dir = work.join("data");
                std::fs::create_dir_all(&dir)?;
                baton::restore::download(&store, &m, &dir, 8, &known).await?;
                Ok::<_, anyhow::Error>(Some((m, dir)))
            }
            None => Ok(baton::restore::restore_latest(&store, &a.run, &work, 8, &known).await?.found),
        }
    }
    .await;
    let outcome = match result {
        Ok(Some((m, dir))) => {
            if target.exists() {
                std::fs::remove_dir(&target)?;
            }
            std::fs::rename(&dir, &target)?;
            eprintln!("restored {} of run {} ({} files) into {}", baton::format::checkpoint(&m), a.run, m.files.len(), target.display());
            Ok(0)
        }
        Ok(None) => Err(Failure::new(ExitCode::Damaged, format!("run {} has no intact checkpoint in {}", a.run, store.url())).into()),
        Err(e) => match e.downcast_ref::<baton::restore::RestoreError>() {
            Some(r) if !r.is_transport() => Err(Failure::new(ExitCode::Damaged, format!("{e:#}")).into()),
            _ => Err(e),
        },
    };
    let _ = std::fs::remove_dir_all(&work);
    outcome
}
