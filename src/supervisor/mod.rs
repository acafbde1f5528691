//! `baton run`'s lifecycle: restore, launch, commit, background upload, eviction.
//!
//! One event loop owns all state. Signals (including SIGCHLD), commit requests, upload
//! completions and deadlines arrive as events; handlers never act in place. The
//! phases are: running (the command trains, commits are captured and uploaded in the
//! background), draining (an eviction signal was forwarded; the command has its share
//! of the vacate window to commit and exit, then the group is killed), and flushing
//! (the command is gone; what was committed is made durable before baton's deadline).

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::attempt::{self, Attempt, Ending};
use crate::chirp::{self, Chirp};
use crate::error::{ErrorKind, Failure};
use crate::htcondor::JobIds;
use crate::identity::RunId;
use crate::process::{self, Exit};
use crate::store::{KnownChunks, Store};
use crate::upload;
use crate::watcher;

mod commits;
mod deadlines;
mod ending;
mod env;
mod events;
mod flushing;
mod ledger;
mod records;
mod restarts;
mod restoring;
mod running;
mod socket;
mod uploader;

use deadlines::Deadlines;
use env::StartedFrom;
use events::Events;
use ledger::Ledger;
use socket::CommitSocket;
use uploader::Uploader;

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
    /// How far below the command's priority background uploads run (nice increment;
    /// 0: the same priority). See `priority`.
    pub upload_nice: i32,
    pub device: String,
    pub device_info: Option<crate::device::DeviceInfo>,
    pub job_ids: JobIds,
    /// A run on several nodes (`--nodes` above 1); none for a single-node run.
    pub nodes: Option<NodesConfig>,
    /// Datasets pulled before the command starts (`--data`), while the checkpoint is restored.
    pub data: Vec<crate::data::Mount>,
    pub data_settings: crate::data::pull::PullSettings,
}

/// This node of a run on several nodes, and how it meets the others.
#[derive(Debug, Clone)]
pub struct NodesConfig {
    pub topology: crate::nodes::Topology,
    /// Node 0: the address and port it publishes [default: its routed address, a free port].
    pub master_addr: Option<String>,
    pub master_port: Option<u16>,
    /// The other nodes: how long they wait for node 0's address.
    pub timeout: Duration,
}

/// Wrap the command: restore, launch, supervise until it ends, flush, record how it
/// ended. Returns baton's exit status.
pub async fn run(cfg: RunConfig) -> anyhow::Result<i32> {
    let state_dir = prepare_state_dir(&cfg.dir)?;
    // Signals are registered before anything is spawned so no SIGCHLD or SIGTERM is lost.
    let mut signals = crate::signals::install()?;
    process::become_subreaper();
    let started = attempt::now();
    let known = KnownChunks::default();

    // The datasets come down while the checkpoint does: both are bound by the network.
    let (start, _) = tokio::try_join!(
        restoring::prepare(&cfg, &state_dir, &known, &mut signals),
        crate::data::pull::pull_all(&cfg.store, &cfg.data, &cfg.data_settings)
    )?;
    let prepared = match start {
        restoring::Start::Ready(p) => p,
        restoring::Start::Evicted(sig) => return Ok(128 + sig),
    };
    let restoring::Prepared { restored, next_seq, node } = *prepared;
    let attempt = records::start(&cfg, &restored, started, node.clone()).await?;
    let (socket, commits) = CommitSocket::open(&state_dir)?;
    let (uploader, uploads) = Uploader::spawn(cfg.store.clone(), attempt.clone(), cfg.upload.clone(), known);
    let started_from = restored.found.as_ref().map(|(m, _)| StartedFrom::restored(m));
    let mut sv = Supervisor::new(cfg, attempt, state_dir, socket.path(), started_from, next_seq, uploader);
    sv.node_env = node.as_ref().map(env::for_node).unwrap_or_default();

    // Evicted while restoring: starting the command now would only waste the window.
    if let Some(sig) = events::eviction_pending(&mut signals) {
        let status = sv.evicted_before_start(sig).await;
        socket.close();
        return Ok(status);
    }
    if let Err(e) = sv.launch() {
        sv.end_record(Ending::BatonError, None, None, Some(e.to_string())).await;
        socket.close();
        return Err(spawn_failure(e));
    }

    let mut events = Events::new(signals, commits, uploads);
    let exit = sv.supervise(&mut events).await;
    // The command is gone: what is left to upload is the flush, and it goes first now.
    crate::priority::foreground();
    sv.kill_family();
    socket.close();
    let exit = match exit {
        Ok(exit) => exit,
        Err(e) => {
            sv.end_record(Ending::BatonError, None, None, Some(crate::error::chain(e.as_ref()))).await;
            return Err(e);
        }
    };
    sv.log_command_end(exit);
    let timing = sv.flush(&mut events).await;
    sv.finish(exit, timing).await
}

/// Private working space next to the checkpoint directory, on the same filesystem so
/// that restored directories can be renamed into place and captures can clone extents.
pub fn state_dir_for(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!(".baton-{name}"))
}

fn prepare_state_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let state_dir = state_dir_for(dir);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create baton's working directory {}: {e}", state_dir.display()))?;
    let _ = std::fs::remove_dir_all(state_dir.join("staging"));
    Ok(state_dir)
}

fn spawn_failure(e: process::SpawnError) -> anyhow::Error {
    let code = match e {
        process::SpawnError::NotFound(_) => ErrorKind::CommandNotFound,
        _ => ErrorKind::CommandNotExecutable,
    };
    Failure::new(code, e.to_string()).into()
}

enum Phase {
    Running,
    /// An eviction signal arrived (`at`, in Unix time); `killed` once the command's group
    /// was killed for overrunning its share of the window.
    Draining {
        deadlines: Deadlines,
        at: f64,
        signal: i32,
        killed: bool,
    },
}

/// How long the end of the attempt took, for its end record.
#[derive(Debug, Clone, Copy)]
struct Timing {
    flush_seconds: f64,
    /// From the eviction signal until the command had exited.
    drain_seconds: Option<f64>,
}

struct Supervisor {
    cfg: RunConfig,
    attempt: Attempt,
    state_dir: PathBuf,
    /// The commit socket, as the trainer is told it.
    socket: PathBuf,
    child: Pid,
    phase: Phase,
    /// The checkpoint the command was last started from (restore or in-place restart).
    started_from: Option<StartedFrom>,
    ledger: Ledger,
    uploader: Uploader,
    /// Progress into the job ad, under HTCondor.
    chirp: Option<Chirp>,
    /// When the command was last started.
    launched_at: std::time::Instant,
    restarts: restarts::Restarts,
    /// An in-place restart waiting out its pause: when, and the code the command exited with.
    pending_restart: Option<(std::time::Instant, i32)>,
    /// The value of `BATON_FAMILY` that marks every process of the command's family.
    family: String,
    /// Kills the family if baton is SIGKILLed; started with the first launch.
    watcher: Option<process::Watcher>,
    /// Another writer took a checkpoint of this attempt while it flushed: the attempt
    /// ends as a conflict (exit 73) once the flush is over, as it would have while running.
    conflict: Option<crate::error::Failure>,
    /// MASTER_ADDR, NODE_RANK and the like, on several nodes.
    node_env: Vec<(String, String)>,
    /// During an eviction, until the command commits or exits: hashing the files it
    /// writes as it writes them (`hash_ahead`).
    hashing_ahead: Option<crate::hash_ahead::Follower>,
}

impl Supervisor {
    fn new(
        cfg: RunConfig,
        attempt: Attempt,
        state_dir: PathBuf,
        socket: &Path,
        started_from: Option<StartedFrom>,
        next_seq: u64,
        uploader: Uploader,
    ) -> Self {
        let chirp = Chirp::from_env();
        if let Some(c) = &chirp {
            c.report(chirp::device_attrs(&cfg.device));
        }
        Supervisor {
            cfg,
            attempt,
            state_dir,
            socket: socket.to_path_buf(),
            child: Pid::from_raw(0),
            phase: Phase::Running,
            started_from,
            ledger: Ledger::new(next_seq),
            uploader,
            chirp,
            launched_at: std::time::Instant::now(),
            restarts: restarts::Restarts::default(),
            pending_restart: None,
            hashing_ahead: None,
            family: String::new(),
            watcher: None,
            conflict: None,
            node_env: Vec::new(),
        }
    }

    fn launch(&mut self) -> Result<(), process::SpawnError> {
        self.start_watcher();
        let mut env = env::for_trainer(&self.attempt, &self.cfg.dir, &self.socket, self.started_from.as_ref());
        env.set.extend(self.node_env.iter().cloned());
        if !self.family.is_empty() {
            env.set.push((watcher::FAMILY_ENV.into(), self.family.clone()));
        }
        for m in &self.cfg.data {
            env.set.push((m.data.name.env_var(), m.path.display().to_string()));
        }
        self.child = process::spawn(&self.cfg.command, &env.set, &env.unset)?;
        // The command trains: uploads take what CPU it leaves.
        crate::priority::background(self.cfg.upload_nice);
        if let Some(w) = &self.watcher {
            w.watch_group(Some(self.child));
        }
        self.launched_at = std::time::Instant::now();
        Ok(())
    }

    /// Before the command first starts (tried again at an in-place restart if it failed).
    /// Without a watcher the command still runs, with the guarantees of a baton that is
    /// alive to kill its family.
    fn start_watcher(&mut self) {
        if self.watcher.is_some() {
            return;
        }
        let token = watcher::new_token();
        match process::Watcher::start(&token) {
            Ok(w) => {
                tracing::debug!("watcher {} started for family {token}", w.pid);
                let inherited = std::env::var(watcher::FAMILY_ENV).ok();
                self.family = watcher::family_value(inherited.as_deref(), &token);
                self.watcher = Some(w);
            }
            Err(e) => tracing::warn!(
                "cannot start the watcher ({e}): if baton is killed with SIGKILL, processes the command started may outlive it"
            ),
        }
    }

    /// SIGKILL the command's group and every remaining child, and reap them; the watcher
    /// then has no group to kill (its number may be reused while baton flushes).
    fn kill_family(&mut self) -> Option<Exit> {
        let exit = process::kill_everything(Some(self.child));
        if let Some(w) = &self.watcher {
            w.watch_group(None);
        }
        exit
    }

    async fn evicted_before_start(&mut self, sig: i32) -> i32 {
        tracing::warn!("eviction signal {sig} arrived before the command started; not starting it");
        let deadlines = Deadlines::new(Instant::now(), self.cfg.vacate_window, self.cfg.trainer_share);
        self.phase = Phase::Draining { deadlines, at: attempt::now(), signal: sig, killed: true };
        self.end_record(Ending::Evicted, None, None, None).await;
        128 + sig
    }

    /// Decide how the attempt ended, record it, and give the job ad a last moment.
    /// A final checkpoint that could not be made durable is baton's own failure: an
    /// error (one `baton: error:` line, exit 72), after the end record says so.
    async fn finish(&mut self, exit: Exit, timing: Timing) -> anyhow::Result<i32> {
        if let Some(conflict) = self.conflict.take() {
            self.end_record(Ending::BatonError, Some(exit), Some(timing), Some(conflict.to_string())).await;
            return Err(conflict.into());
        }
        let final_lost = self.ledger.final_lost();
        let (ending, status) = ending::decide(self.evicted(), exit, final_lost.is_some());
        self.end_record(ending, Some(exit), Some(timing), None).await;
        if let Some(c) = &self.chirp {
            c.wait_idle(deadlines::chirp_budget(self.exit_deadline(), Instant::now()));
        }
        match (ending, final_lost) {
            (Ending::BatonError, Some(seq)) => Err(crate::error::Failure::new(
                crate::error::ErrorKind::Checkpoint,
                format!(
                    "the command finished, but its final checkpoint {seq} could not be made durable (the upload errors are logged above); the run's newest durable checkpoint is older"
                ),
            )
            .into()),
            _ => Ok(status),
        }
    }

    /// An eviction signal arrived, before or after the command ended.
    fn evicted(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
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
