//! Before the command starts: the newest intact checkpoint of the run, restored into
//! the checkpoint directory.

use std::path::Path;

use super::RunConfig;
use crate::format;
use crate::restore::{self, Restored};
use crate::store::KnownChunks;

/// Restore the newest intact checkpoint into the checkpoint directory, or make an empty
/// one for a fresh start.
pub async fn restore_newest(cfg: &RunConfig, state_dir: &Path, known: &KnownChunks) -> anyhow::Result<Restored> {
    let restored = restore::restore_latest(&cfg.store, &cfg.run, state_dir, cfg.upload.concurrency, known).await?;
    match &restored.found {
        Some((m, tmp)) => {
            install(tmp, &cfg.dir, state_dir)?;
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

/// Put a restored directory in place of the checkpoint directory. Whatever was there
/// is moved aside into baton's working directory, not deleted.
pub fn install(restored: &Path, dir: &Path, state_dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if empty {
            std::fs::remove_dir(dir)?;
        } else {
            let aside = state_dir.join("displaced");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(dir, &aside)?;
            tracing::warn!("{} was not empty; its old contents were moved to {}", dir.display(), aside.display());
        }
    }
    std::fs::rename(restored, dir).map_err(|e| anyhow::anyhow!("cannot move the restored checkpoint into {}: {e}", dir.display()))?;
    Ok(())
}
