//! A commit's way to durability: captured (a snapshot of the checkpoint directory, or
//! a repeat of the last one when nothing in it changed since), queued for upload, and
//! its outcome entered in the ledger.

use super::uploader::{Done, Job, Outcome, Source};
use super::Supervisor;
use crate::attempt;
use crate::capture::{self, Snapshot};
use crate::chirp;
use crate::commit;
use crate::error::{ErrorKind, Failure};
use crate::format;
use crate::hash_ahead;
use crate::manifest::Reason;
use crate::upload::CommitInfo;

impl Supervisor {
    /// A commit request from the trainer. The reply waits for the capture, so the
    /// trainer may overwrite its files as soon as it has one.
    pub(super) async fn on_commit(&mut self, (req, reply): commit::Incoming) {
        let reason = if self.evicted() { Reason::Eviction } else { Reason::Commit };
        let r = self.capture(reason, req).await;
        // Still draining: the trainer may save again before it exits.
        if self.evicted() && self.hashing_ahead.is_none() {
            self.hashing_ahead = Some(crate::hash_ahead::Follower::start(self.cfg.dir.clone()));
        }
        let r = match r {
            Ok(seq) => commit::Reply { ok: true, seq: Some(seq), error: None },
            Err(e) => {
                tracing::error!("COMMIT FAILED: {e}");
                commit::Reply { ok: false, seq: None, error: Some(e) }
            }
        };
        let _ = reply.send(r);
    }

    /// Copy the checkpoint directory as it is now and queue it for upload.
    pub(super) async fn capture(&mut self, reason: Reason, req: commit::Request) -> Result<u64, String> {
        let seq = self.ledger.next_seq();
        let mut req = req;
        let (source, stamps) = match self.unchanged_since().await {
            Some(same) => {
                tracing::info!(
                    "checkpoint {seq} ({reason}): the checkpoint directory is unchanged since checkpoint {same}; reusing its files"
                );
                req = self.ledger.labels_for_repeat(req);
                (Source::Same(same), None)
            }
            None => {
                let ahead = self.hashing_ahead.take();
                let snap = self.snapshot(seq, reason, ahead).await?;
                tracing::info!(
                    "captured checkpoint {seq} ({reason}{}): {} files, {} in {:.2} s",
                    req.epoch.map(|e| format!(", epoch {e}")).unwrap_or_default(),
                    snap.files.len(),
                    format::bytes(snap.logical_bytes()),
                    snap.seconds
                );
                let stamps = snap.stamps.clone();
                (Source::Snapshot(snap), Some(stamps))
            }
        };
        let seq = self.ledger.commit(stamps, &req);
        let info = CommitInfo { seq, reason, epoch: req.epoch, step: req.step, meta: req.meta, created: attempt::now() };
        self.uploader.queue(Job { info, source }).map_err(|e| e.to_string())?;
        Ok(seq)
    }

    /// The last commit, when the checkpoint directory is exactly as it was then (same
    /// files, same inodes, same change times) and that commit is durable or on its way.
    async fn unchanged_since(&self) -> Option<u64> {
        let (seq, before) = self.ledger.repeatable()?;
        let src = self.cfg.dir.clone();
        let now = tokio::task::spawn_blocking(move || capture::stamps(&src)).await.ok()?.ok()?;
        (now == before).then_some(seq)
    }

    /// The checkpoint directory as it is now, in staging for `seq`, with what was read
    /// ahead of its files during an eviction.
    async fn snapshot(&self, seq: u64, reason: Reason, ahead: Option<hash_ahead::Follower>) -> Result<Snapshot, String> {
        let staging = self.state_dir.join("staging").join(seq.to_string());
        let _ = std::fs::remove_dir_all(&staging);
        let (src, dst) = (self.cfg.dir.clone(), staging.clone());
        // Once the command is being evicted or has finished, nobody writes its files again.
        let hold = if self.evicted() || reason == Reason::Final { capture::Hold::Link } else { capture::Hold::Copy };
        let snap = tokio::task::spawn_blocking(move || {
            let ahead = ahead.map(hash_ahead::Follower::finish).unwrap_or_default();
            let mut snap = capture::snapshot(&src, &dst, hold)?;
            for (f, s) in snap.files.iter_mut().zip(&snap.stamps) {
                f.ahead = ahead.get(&s.identity()).cloned();
            }
            Ok::<_, capture::CaptureError>(snap)
        })
        .await
        .map_err(|e| format!("capture failed: {e}"))?
        .map_err(|e| format!("capture failed: {e}"))?;
        if snap.files.is_empty() {
            snap.discard();
            return Err(format!("the checkpoint directory {} is empty; nothing to commit", self.cfg.dir.display()));
        }
        Ok(snap)
    }

    /// Err when another writer owns the seq: this attempt is a zombie (or the other one
    /// is) and must stop, loudly.
    pub(super) fn on_upload_done(&mut self, Done { seq, outcome }: Done) -> Result<(), Failure> {
        match outcome {
            Outcome::Durable(m) => {
                self.ledger.made_durable(seq);
                let s = &m.sizes;
                let rate = if s.upload_seconds > 0.0 { s.logical_bytes as f64 / s.upload_seconds / 1e6 } else { 0.0 };
                tracing::info!(
                    "{} is durable: {} logical, {} new, {} stored, uploaded in {:.2} s ({rate:.0} MB/s)",
                    format::checkpoint(&m),
                    format::bytes(s.logical_bytes),
                    format::bytes(s.new_bytes),
                    format::bytes(s.stored_bytes),
                    s.upload_seconds
                );
                if let Some(c) = &self.chirp {
                    c.report(chirp::progress_attrs(m.seq, m.epoch, m.step, m.created));
                }
            }
            Outcome::Superseded => self.ledger.gave_up(seq),
            Outcome::Conflict(e) => {
                self.ledger.gave_up(seq);
                tracing::error!("CHECKPOINT {seq} BELONGS TO ANOTHER WRITER: {e}");
                return Err(Failure::new(ErrorKind::Conflict, format!("stopping: {e}")));
            }
            Outcome::Failed(e) => {
                self.ledger.gave_up(seq);
                tracing::error!("UPLOAD OF CHECKPOINT {seq} FAILED: {e}; the previous checkpoint stays the latest");
            }
        }
        Ok(())
    }
}
