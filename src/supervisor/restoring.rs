//! Restoring, before the command starts: the newest intact checkpoint of the run, put into
//! the checkpoint directory.

use std::path::Path;

use super::RunConfig;
use crate::format;
use crate::restore::{self, Restored};
use crate::store::KnownChunks;

/// Restore the newest intact checkpoint into the checkpoint directory, or make an empty
/// one for a fresh start.
pub async fn restore_newest(cfg: &RunConfig, state_dir: &Path, known: &KnownChunks) -> anyhow::Result<Restored> {
    let restored =
        restore::restore_latest(&cfg.store, &cfg.run, state_dir, restore::CONCURRENCY.max(cfg.upload.concurrency), known).await?;
    match &restored.found {
        Some((m, tmp)) => {
            // Whatever was in the checkpoint directory is moved aside, never deleted.
            restore::put_in_place(tmp, &cfg.dir, Some(&state_dir.join("displaced")))?;
            tracing::info!(
                "restored {} of run {} into {} ({}, written on {}) in {:.2} s",
                format::checkpoint(m),
                cfg.run,
                cfg.dir.display(),
                format::bytes(m.logical_bytes()),
                m.device,
                restored.seconds
            );
        }
        None => {
            std::fs::create_dir_all(&cfg.dir)?;
            tracing::info!("no checkpoint of run {} in {}: fresh start", cfg.run, cfg.store.url());
        }
    }
    Ok(restored)
}
