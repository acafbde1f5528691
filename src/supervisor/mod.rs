//! `baton run`'s lifecycle: restore, launch, commit, background upload, eviction.
//!
//! One event loop owns all state. Signals (including SIGCHLD), commit requests, upload
//! completions and deadlines arrive as events; handlers never act in place. The
//! phases are: running (the command trains, commits are captured and uploaded in the
//! background), draining (an eviction signal was forwarded; the command has its share
//! of the vacate window to commit and exit, then the group is killed), and flushing
//! (the command is gone; what was committed is made durable before baton's deadline).

use crate::signals::CHILD as SIGCHLD;
use futures::StreamExt;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::attempt::{self, Attempt, EndRecord, Ending, StartRecord};
use crate::capture::{self, Snapshot};
use crate::chirp::{self, Chirp};
use crate::commit;
use crate::error::{ExitCode, Failure};
use crate::format;
use crate::identity::RunId;
use crate::manifest::{JobIds, Reason};
use crate::process::{self, Exit};
use crate::restore;
use crate::store::KnownChunks;
use crate::store::Store;
use crate::upload::{self, CommitInfo};

mod deadlines;
mod ending;
mod env;
mod ledger;
mod uploader;

use deadlines::Deadlines;
use env::StartedFrom;
use ledger::Ledger;
use uploader::{Done, Job, Outcome, Source, Uploader};

pub struct RunConfig {
    pub store: Store,
    pub run: RunId,
    /// Absolute path of the checkpoint directory the trainer uses.
    pub dir: PathBuf,
    pub command: Vec<OsString>,
    pub checkpoint_exit_code: Option<i32>,
    pub vacate_window: Duration,
    pub window_source: String,
    /// Fraction of the vacate window the command gets to save and exit.
    pub trainer_share: f64,
    pub forward_signal: Option<Signal>,
    pub upload: upload::Settings,
    pub device: String,
    pub device_info: Option<crate::device::DeviceInfo>,
    pub job_ids: JobIds,
}

/// Private working space next to the checkpoint directory, on the same filesystem so
/// that restored directories can be renamed into place and captures can clone extents.
pub fn state_dir_for(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!(".baton-{name}"))
}

enum Phase {
    Running,
    Draining { deadlines: Deadlines, at: f64, signal: i32, killed: bool },
}

struct Supervisor {
    cfg: RunConfig,
    attempt: Attempt,
    state_dir: PathBuf,
    child: Pid,
    phase: Phase,
    ledger: Ledger,
    /// The checkpoint the command was last started from (restore or in-place restart).
    started_from: Option<StartedFrom>,
    uploader: Uploader,
    /// Progress into the job ad, under HTCondor.
    chirp: Option<Chirp>,
    /// Set when another attempt of the same run wrote one of our seqs: this attempt is a
    /// zombie (or the other one is) and must stop, loudly.
    conflict: Option<String>,
}

impl Supervisor {
    /// The last commit, when the checkpoint directory is exactly as it was then (same
    /// files, same inodes, same change times) and that commit is durable or on its way.
    async fn unchanged_since(&self) -> Option<u64> {
        let (seq, before) = self.ledger.repeatable()?;
        let src = self.cfg.dir.clone();
        let now = tokio::task::spawn_blocking(move || capture::stamps(&src)).await.ok()?.ok()?;
        (now == before).then_some(seq)
    }

    /// Copy the checkpoint directory as it is now and queue it for upload.
    async fn capture(&mut self, reason: Reason, req: commit::Request) -> Result<u64, String> {
        let seq = self.ledger.next_seq();
        let (source, stamps) = match self.unchanged_since().await {
            Some(same) => {
                tracing::info!(
                    "checkpoint {seq} ({reason}): the checkpoint directory is unchanged since checkpoint {same}; reusing its files"
                );
                (Source::Same(same), None)
            }
            None => {
                let snap = self.snapshot(seq, reason).await?;
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
        let seq = self.ledger.commit(stamps);
        let info = CommitInfo { seq, reason, epoch: req.epoch, step: req.step, meta: req.meta, created: attempt::now() };
        self.uploader.queue(Job { info, source }).map_err(|e| e.to_string())?;
        Ok(seq)
    }

    /// The checkpoint directory as it is now, in staging for `seq`.
    async fn snapshot(&self, seq: u64, reason: Reason) -> Result<Snapshot, String> {
        let staging = self.state_dir.join("staging").join(seq.to_string());
        let _ = std::fs::remove_dir_all(&staging);
        let (src, dst) = (self.cfg.dir.clone(), staging.clone());
        // Once the command is being evicted or has finished, nobody writes its files again.
        let hold =
            if matches!(self.phase, Phase::Draining { .. }) || reason == Reason::Final { capture::Hold::Link } else { capture::Hold::Copy };
        let snap = tokio::task::spawn_blocking(move || capture::snapshot(&src, &dst, hold))
            .await
            .map_err(|e| format!("capture failed: {e}"))?
            .map_err(|e| format!("capture failed: {e}"))?;
        if snap.files.is_empty() {
            snap.discard();
            return Err(format!("the checkpoint directory {} is empty; nothing to commit", self.cfg.dir.display()));
        }
        Ok(snap)
    }

    fn on_upload_done(&mut self, Done { seq, outcome }: Done) {
        match &outcome {
            Outcome::Durable(_) => self.ledger.made_durable(seq),
            _ => self.ledger.gave_up(seq),
        }
        match outcome {
            Outcome::Durable(m) => {
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
            Outcome::Superseded => {}
            Outcome::Conflict(e) => {
                tracing::error!("CHECKPOINT {seq} BELONGS TO ANOTHER WRITER: {e}");
                self.conflict = Some(e);
            }
            Outcome::Failed(e) => tracing::error!("UPLOAD OF CHECKPOINT {seq} FAILED: {e}; the previous checkpoint stays the latest"),
        }
    }

    fn on_eviction_signal(&mut self, sig: i32) {
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
        }
        process::signal_group(self.child, fwd);
    }

    fn deadlines(&self) -> Option<Deadlines> {
        match self.phase {
            Phase::Draining { deadlines, .. } => Some(deadlines),
            Phase::Running => None,
        }
    }

    fn trainer_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Draining { deadlines, killed: false, .. } => Some(deadlines.trainer()),
            _ => None,
        }
    }

    fn flush_deadline(&self) -> Option<Instant> {
        self.deadlines().map(|d| d.flush())
    }

    fn exit_deadline(&self) -> Option<Instant> {
        self.deadlines().map(|d| d.exit())
    }
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<i32> {
    let state_dir = state_dir_for(&cfg.dir);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create baton's working directory {}: {e}", state_dir.display()))?;
    let _ = std::fs::remove_dir_all(state_dir.join("staging"));
    // Signals are registered before anything is spawned so no SIGCHLD or SIGTERM is lost.
    let mut sigs = crate::signals::install()?;
    process::become_subreaper();
    let started = attempt::now();
    let known = KnownChunks::default();

    // Restore.
    let restored = restore::restore_latest(&cfg.store, &cfg.run, &state_dir, cfg.upload.concurrency, &known).await?;
    let mut restored_info = None;
    if let Some((m, tmp)) = &restored.found {
        install(tmp, &cfg.dir, &state_dir)?;
        tracing::info!(
            "restored {} of run {} into {} ({}, written on {}) in {:.2} s",
            format::checkpoint(m),
            cfg.run,
            cfg.dir.display(),
            format::bytes(m.logical_bytes()),
            m.device,
            restored.seconds
        );
        restored_info = Some(StartedFrom::restored(m));
    } else {
        std::fs::create_dir_all(&cfg.dir)?;
        tracing::info!("no checkpoint of run {} in {}: fresh start", cfg.run, cfg.store.url());
    }
    let next_seq = cfg.store.list_manifests(&cfg.run).await?.last().map(|s| s + 1).unwrap_or(1);

    let host = attempt::hostname();
    let start_record = StartRecord {
        format: 1,
        run_id: cfg.run.to_string(),
        attempt: 0,
        host: host.clone(),
        device: cfg.device.clone(),
        device_info: cfg.device_info.clone(),
        started,
        restored_seq: restored_info.as_ref().map(|r| r.seq),
        skipped_damaged: restored.skipped.iter().map(|s| s.0).collect(),
        restore_seconds: restored.seconds,
        vacate_window_seconds: cfg.vacate_window.as_secs_f64(),
        vacate_window_source: cfg.window_source.clone(),
        htcondor: cfg.job_ids.clone(),
        baton_version: env!("CARGO_PKG_VERSION").into(),
    };
    let number = attempt::reserve(&cfg.store, &cfg.run, start_record).await?;
    let attempt = Attempt {
        run: cfg.run.clone(),
        number,
        host: host.clone(),
        device: cfg.device.clone(),
        device_info: cfg.device_info.clone(),
        htcondor: cfg.job_ids.clone(),
        writer: format!("{host}:{}:{}", std::process::id(), (started * 1e6) as u64),
    };
    tracing::info!(
        "run {} attempt {number} on {host}, device {}; vacate window {:.0} s from {}",
        cfg.run,
        cfg.device,
        cfg.vacate_window.as_secs_f64(),
        cfg.window_source
    );

    // The commit socket. Unix socket paths are limited to ~108 bytes.
    let mut socket = state_dir.join("commit.sock");
    if socket.as_os_str().len() > 100 {
        socket = std::env::temp_dir().join(format!("baton-{}.sock", std::process::id()));
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot create the commit socket {}: {e}", socket.display()))?;
    let (commit_tx, mut commit_rx) = mpsc::channel::<commit::Incoming>(4);
    let server = tokio::spawn(commit::serve(listener, commit_tx));

    let (uploader, mut done_rx) = Uploader::spawn(cfg.store.clone(), attempt.clone(), cfg.upload.clone(), known);

    let mut sv = Supervisor {
        cfg,
        attempt,
        state_dir,
        child: Pid::from_raw(0),
        phase: Phase::Running,
        ledger: Ledger::new(next_seq),
        started_from: restored_info,
        uploader,
        chirp: Chirp::from_env(),
        conflict: None,
    };
    if let Some(c) = &sv.chirp {
        c.report(chirp::device_attrs(&sv.cfg.device));
    }

    // Evicted while restoring: starting the command now would only waste the window.
    while let Some(Some(sig)) = futures::FutureExt::now_or_never(sigs.next()) {
        if sig != SIGCHLD {
            tracing::warn!("eviction signal {sig} arrived before the command started; not starting it");
            let deadlines = Deadlines::new(Instant::now(), sv.cfg.vacate_window, sv.cfg.trainer_share);
            sv.phase = Phase::Draining { deadlines, at: attempt::now(), signal: sig, killed: true };
            end_record(&sv, Ending::Evicted, None, None, None).await;
            let _ = std::fs::remove_file(&socket);
            return Ok(128 + sig);
        }
    }

    let env = env::for_trainer(&sv.attempt, &sv.cfg.dir, &socket, sv.started_from.as_ref());
    sv.child = match process::spawn(&sv.cfg.command, &env.set, &env.unset) {
        Ok(pid) => pid,
        Err(e) => {
            end_record(&sv, Ending::BatonError, None, None, Some(e.to_string())).await;
            let _ = std::fs::remove_file(&socket);
            return Err(spawn_failure(e));
        }
    };

    // Running and draining.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86400);
    let mut main_exit = None;
    let exit = loop {
        let trainer_deadline = sv.trainer_deadline();
        tokio::select! {
            Some(sig) = sigs.next() => {
                if sig != SIGCHLD {
                    sv.on_eviction_signal(sig);
                    continue;
                }
            }
            Some((req, reply)) = commit_rx.recv() => {
                let reason = if matches!(sv.phase, Phase::Draining { .. }) { Reason::Eviction } else { Reason::Commit };
                let r = match sv.capture(reason, req).await {
                    Ok(seq) => commit::Reply { ok: true, seq: Some(seq), error: None },
                    Err(e) => {
                        tracing::error!("COMMIT FAILED: {e}");
                        commit::Reply { ok: false, seq: None, error: Some(e) }
                    }
                };
                let _ = reply.send(r);
                continue;
            }
            Some(done) = done_rx.recv() => {
                sv.on_upload_done(done);
                match &sv.conflict {
                    Some(e) => break Err(Failure::new(ExitCode::Conflict, format!("stopping: {e}")).into()),
                    None => continue,
                }
            }
            _ = tokio::time::sleep_until(trainer_deadline.unwrap_or(far).into()), if trainer_deadline.is_some() => {
                tracing::warn!("eviction: the command did not exit within its share of the vacate window; killing its process group");
                main_exit = process::kill_everything(Some(sv.child));
                if let Phase::Draining { killed, .. } = &mut sv.phase { *killed = true; }
            }
            _ = tick.tick() => {}
        }
        let Some(exit) = main_exit.take().or_else(|| process::reap(Some(sv.child))) else { continue };
        match (&sv.phase, exit) {
            (Phase::Running, Exit::Code(c)) if Some(c) == sv.cfg.checkpoint_exit_code => {
                match sv.capture(Reason::CheckpointExit, commit::Request::default()).await {
                    Ok(seq) => sv.started_from = Some(StartedFrom { seq, epoch: None, step: None, device: sv.cfg.device.clone() }),
                    Err(e) => tracing::error!("CHECKPOINT CAPTURE FAILED after exit code {c}: {e}"),
                }
                process::kill_everything(Some(sv.child));
                tracing::info!("command exited with the checkpoint exit code {c}; restarting it in place");
                let env = env::for_trainer(&sv.attempt, &sv.cfg.dir, &socket, sv.started_from.as_ref());
                match process::spawn(&sv.cfg.command, &env.set, &env.unset) {
                    Ok(pid) => sv.child = pid,
                    Err(e) => break Err(spawn_failure(e)),
                }
            }
            (Phase::Running, Exit::Code(0)) => {
                match sv.capture(Reason::Final, commit::Request::default()).await {
                    Ok(seq) => sv.ledger.set_final(seq),
                    Err(e) => tracing::warn!("no final checkpoint: {e}"),
                }
                break Ok(exit);
            }
            (Phase::Draining { .. }, Exit::Code(c)) if Some(c) == sv.cfg.checkpoint_exit_code => {
                if let Err(e) = sv.capture(Reason::Eviction, commit::Request::default()).await {
                    tracing::error!("CHECKPOINT CAPTURE FAILED after exit code {c}: {e}");
                }
                break Ok(exit);
            }
            _ => break Ok(exit),
        }
    };
    process::kill_everything(Some(sv.child));
    server.abort();
    let _ = std::fs::remove_file(&socket);
    let exit = match exit {
        Ok(exit) => exit,
        Err(e) => {
            end_record(&sv, Ending::BatonError, None, None, Some(format!("{e:#}"))).await;
            return Err(e);
        }
    };
    match &sv.phase {
        Phase::Running => tracing::info!("command ended with {exit}"),
        Phase::Draining { deadlines, .. } => {
            tracing::info!("command ended with {exit}, {:.1} s after the eviction signal", deadlines.since().elapsed().as_secs_f64())
        }
    }

    // Flushing.
    let drain_seconds = sv.deadlines().map(|d| d.since().elapsed().as_secs_f64());
    let flush_start = Instant::now();
    let flushed_any = !sv.ledger.outstanding().is_empty();
    while !sv.ledger.outstanding().is_empty() {
        let deadline = sv.flush_deadline();
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            tracing::info!(
                "flushing {} checkpoint(s), {:.1} s left before the hard kill",
                sv.ledger.outstanding().len(),
                left.as_secs_f64()
            );
        }
        tokio::select! {
            Some(done) = done_rx.recv() => sv.on_upload_done(done),
            Some(sig) = sigs.next() => {
                if sig != SIGCHLD { sv.on_eviction_signal(sig); }
                process::reap(None);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far).into()), if deadline.is_some() => {
                tracing::error!(
                    "FLUSH INCOMPLETE: checkpoint(s) {:?} could not be made durable before the vacate deadline; the newest durable checkpoint stays the latest",
                    sv.ledger.outstanding()
                );
                break;
            }
        }
    }
    let flush_seconds = flush_start.elapsed().as_secs_f64();
    if let (Some(c), true) = (&sv.chirp, flushed_any) {
        c.report(chirp::flush_attrs(flush_seconds));
    }
    if sv.ledger.outstanding().is_empty() {
        let _ = std::fs::remove_dir_all(sv.state_dir.join("staging"));
    }

    let final_lost = sv.ledger.final_lost();
    let (ending, status) = ending::decide(sv.deadlines().is_some(), exit, final_lost.is_some());
    if let (Ending::BatonError, Some(seq)) = (ending, final_lost) {
        tracing::error!("the command finished but its final checkpoint {seq} is not durable");
    }
    end_record(&sv, ending, Some(exit), Some((flush_seconds, drain_seconds)), None).await;
    if let Some(c) = &sv.chirp {
        // Best effort, and never past the point where baton must be gone.
        c.wait_idle(deadlines::chirp_budget(sv.exit_deadline(), Instant::now()));
    }
    Ok(status)
}

fn spawn_failure(e: process::SpawnError) -> anyhow::Error {
    let code = match e {
        process::SpawnError::NotFound(_) => ExitCode::NotFound,
        _ => ExitCode::NotExecutable,
    };
    Failure::new(code, e.to_string()).into()
}

async fn end_record(sv: &Supervisor, ending: Ending, exit: Option<Exit>, timing: Option<(f64, Option<f64>)>, error: Option<String>) {
    let record = EndRecord {
        format: 1,
        attempt: sv.attempt.number,
        ended: attempt::now(),
        ending,
        exit_code: match exit {
            Some(Exit::Code(c)) => Some(c),
            _ => None,
        },
        signal: match exit {
            Some(Exit::Signal(s)) => Some(s),
            _ => None,
        },
        committed: sv.ledger.committed().to_vec(),
        durable: sv.ledger.durable().to_vec(),
        eviction_signal: match sv.phase {
            Phase::Draining { signal, .. } => Some(signal),
            _ => None,
        },
        evicted_at: match sv.phase {
            Phase::Draining { at, .. } => Some(at),
            _ => None,
        },
        flush_seconds: timing.map(|t| t.0),
        drain_seconds: timing.and_then(|t| t.1),
        error,
    };
    let Ok(body) = serde_json::to_vec_pretty(&record) else { return };
    // Never let bookkeeping eat into the vacate window.
    let limit = deadlines::record_budget(sv.exit_deadline(), Instant::now());
    match tokio::time::timeout(limit, sv.cfg.store.put_attempt_end(&sv.cfg.run, sv.attempt.number, body.into())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("could not write the attempt record: {e}"),
        Err(_) => tracing::warn!("no time left to write the attempt record"),
    }
}

/// Put a restored directory in place of the checkpoint directory. Whatever was there
/// is moved aside into baton's working directory, not deleted.
fn install(restored: &Path, dir: &Path, state_dir: &Path) -> anyhow::Result<()> {
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
