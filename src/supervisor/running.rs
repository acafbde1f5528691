//! Running and draining: the event loop while the command lives, and what each event
//! does to it.

use nix::sys::signal::Signal;
use std::ops::ControlFlow;

use super::deadlines::Deadlines;
use super::env::StartedFrom;
use super::events::{Event, Events};
use super::restarts::{self, Next};
use super::{spawn_failure, Phase, Supervisor};
use crate::attempt;
use crate::commit;
use crate::error::{ErrorKind, Failure};
use crate::manifest::Reason;
use crate::process::{self, Exit};

impl Supervisor {
    /// Running and draining: act on events until the command has ended for good. An
    /// error stops baton: the command could not be restarted, or another writer owns
    /// one of this attempt's seqs.
    pub(super) async fn supervise(&mut self, events: &mut Events) -> anyhow::Result<Exit> {
        loop {
            let restart_at = self.pending_restart.map(|(at, _)| at);
            let killed = match events.next(self.trainer_deadline(), restart_at).await {
                Event::Eviction(sig) => {
                    self.on_eviction_signal(sig);
                    // Evicted while pausing before a restart: the command is not running,
                    // and its last exit is how it ended.
                    if let Some((_, code)) = self.pending_restart.take() {
                        return Ok(Exit::Code(code));
                    }
                    continue;
                }
                Event::RestartDue => {
                    self.pending_restart = None;
                    self.launch().map_err(spawn_failure)?;
                    continue;
                }
                Event::Commit(incoming) => {
                    self.on_commit(incoming).await;
                    continue;
                }
                Event::Upload(done) => {
                    self.on_upload_done(done)?;
                    continue;
                }
                Event::TrainerOverdue => self.kill_overdue_trainer(),
                Event::Child | Event::Tick => None,
            };
            let Some(exit) = killed.or_else(|| process::reap(Some(self.child))) else { continue };
            if let ControlFlow::Break(exit) = self.on_command_exit(exit).await? {
                return Ok(exit);
            }
        }
    }

    /// Forward the eviction signal to the command's group; the first one starts the
    /// vacate window and leaves only the newest checkpoint worth uploading.
    pub(super) fn on_eviction_signal(&mut self, sig: i32) {
        // The vacate deadline is running: uploads go first from now on.
        crate::priority::foreground();
        let forward = self.cfg.forward_signal.map(|s| s as i32).unwrap_or(sig);
        let fwd = Signal::try_from(forward).unwrap_or(Signal::SIGTERM);
        if let Phase::Running = self.phase {
            let w = self.cfg.vacate_window.as_secs_f64();
            tracing::warn!(
                "eviction: got {}, forwarding {} to the command; it has {:.0} s to commit and exit (vacate window {:.0} s from {})",
                Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?"),
                fwd.as_str(),
                w * self.cfg.trainer_share,
                w,
                self.cfg.window_source
            );
            let since = crate::signals::first_eviction();
            let at = attempt::now() - since.elapsed().as_secs_f64();
            let deadlines = Deadlines::new(since, self.cfg.vacate_window, self.cfg.trainer_share);
            self.phase = Phase::Draining { deadlines, at, signal: sig, killed: false };
            self.uploader.keep_newest_only();
            // The trainer saves now: hash what it writes while it writes it (the files as
            // they are before it hears of the signal are the ones to tell changes from).
            self.hashing_ahead = Some(crate::hash_ahead::Follower::start(self.cfg.dir.clone()));
        }
        process::forward_to_group(self.child, fwd);
    }

    fn kill_overdue_trainer(&mut self) -> Option<Exit> {
        tracing::warn!("eviction: the command did not exit within its share of the vacate window; killing its process group");
        let exit = self.kill_family();
        if let Phase::Draining { killed, .. } = &mut self.phase {
            *killed = true;
        }
        exit
    }

    /// Capture what the command left, and restart it if it asked for that by exiting
    /// with the checkpoint exit code; Break once it has ended for good.
    async fn on_command_exit(&mut self, exit: Exit) -> anyhow::Result<ControlFlow<Exit>> {
        let checkpoint_exit = matches!(exit, Exit::Code(c) if Some(c) == self.cfg.checkpoint_exit_code);
        match (&self.phase, exit) {
            (Phase::Running, Exit::Code(c)) if checkpoint_exit => {
                self.restart_in_place(c).await?;
                return Ok(ControlFlow::Continue(()));
            }
            (Phase::Draining { .. }, Exit::Code(c)) if checkpoint_exit => {
                if let Err(e) = self.capture(Reason::Eviction, commit::Request::default()).await {
                    tracing::error!("CHECKPOINT CAPTURE FAILED after exit code {c}: {e}");
                }
            }
            // Finished, even if an eviction signal came first (a trainer that was ending
            // its last epoch anyway): what it left is the final checkpoint, flushed in the
            // window like any other. Without it, baton would exit 0, HTCondor would call
            // the job done, and the store would hold older work.
            (_, Exit::Code(0)) => match self.capture(Reason::Final, commit::Request::default()).await {
                Ok(seq) => self.ledger.set_final(seq),
                Err(e) => tracing::warn!("no final checkpoint: {e}"),
            },
            _ => {}
        }
        self.hashing_ahead = None;
        Ok(ControlFlow::Break(exit))
    }

    /// The command saved and exited with the checkpoint exit code: commit what it saved
    /// and start it again on the same files, without a restore; after a pause, and not
    /// at all once it keeps doing so without changing its checkpoint.
    async fn restart_in_place(&mut self, code: i32) -> anyhow::Result<()> {
        match self.capture(Reason::CheckpointExit, commit::Request::default()).await {
            Ok(seq) => self.started_from = Some(StartedFrom { seq, epoch: None, step: None, device: self.cfg.device.clone() }),
            Err(e) => tracing::error!("CHECKPOINT CAPTURE FAILED after exit code {code}: {e}"),
        }
        self.kill_family();
        match self.restarts.after_exit(self.launched_at.elapsed()) {
            Next::GiveUp { restarts } => Err(Failure::new(
                ErrorKind::NoProgress,
                format!(
                    "the command exited with the checkpoint exit code {code} {restarts} times in a row, each time less than {} s \
                     after it started; not restarting it again (does it use {code} for something else? see --checkpoint-exit-code)",
                    restarts::QUICK_RUN.as_secs()
                ),
            )
            .into()),
            Next::Restart(pause) if pause.is_zero() => {
                tracing::info!("command exited with the checkpoint exit code {code}; restarting it in place");
                self.launch().map_err(spawn_failure)
            }
            Next::Restart(pause) => {
                tracing::warn!(
                    "command exited with the checkpoint exit code {code} again, moments after it started; restarting it in place after a {:.2} s pause",
                    pause.as_secs_f64()
                );
                self.pending_restart = Some((std::time::Instant::now() + pause, code));
                Ok(())
            }
        }
    }

    pub(super) fn log_command_end(&self, exit: Exit) {
        match self.deadlines() {
            None => tracing::info!("command ended with {exit}"),
            Some(d) => tracing::info!("command ended with {exit}, {:.1} s after the eviction signal", d.since().elapsed().as_secs_f64()),
        }
    }
}
