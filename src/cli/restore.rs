//! `baton restore`: bring a checkpoint back into a directory.

use std::path::PathBuf;

use super::StoreArg;
use baton::error::usage;
use baton::identity::RunId;

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
    /// Chunks downloaded at once (within 48 MiB of chunks in memory, more for a distant store).
    #[arg(long, value_name = "N", default_value_t = baton::restore::CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let target = std::path::absolute(&a.to).map_err(|e| usage(format!("{}: {e}", a.to.display())))?;
    // symlink_metadata, not exists(): a link (even a dangling one) is refused, never followed.
    if let Ok(meta) = std::fs::symlink_metadata(&target) {
        if meta.file_type().is_symlink() {
            return Err(usage(format!("{} is a symbolic link, not an empty directory; restore into a new directory", target.display())));
        }
        let empty = meta.is_dir() && std::fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            return Err(usage(format!("{} exists and is not an empty directory; restore into a new directory", target.display())));
        }
    }
    let m = baton::restore::restore_into(&store, &a.run, a.checkpoint, &target, a.concurrency as usize).await?;
    eprintln!("restored {} of run {} ({} files) into {}", baton::format::checkpoint(&m), a.run, m.files.len(), target.display());
    Ok(0)
}
