//! `baton simulate`: run a real training command under the real `baton run`, evict it
//! on a schedule (soft: the scheduler's signal then SIGKILL at the end of the vacate
//! window; hard: SIGKILL, no warning), restart it on a new simulated slot each time,
//! and report what preemption cost, from the records the runs left in the store.

mod launch;
mod nodes;
mod progress;
pub mod schedule;
pub mod slots;
mod verify;

use serde::Serialize;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt;
use crate::identity::RunId;
use crate::restore::load_manifest;
use crate::store::Store;
use crate::timeline::{self, AttemptRecords, AttemptRow, Observed, Point, Totals};
use launch::{clear_slot, kill_family, spawn_baton};
use progress::Progress;
use schedule::{Eviction, Kind};
use slots::{JobIdentity, SlotType};

pub struct Options {
    /// The store URL as `baton run` should be given it.
    pub store_url: String,
    pub store: Store,
    pub command: Vec<OsString>,
    pub schedule: Schedule,
    pub slots: Vec<SlotType>,
    pub vacate_window: f64,
    pub verify: bool,
    pub work_dir: PathBuf,
    pub seed: u64,
    pub run_id: Option<RunId>,
    pub max_attempts: u64,
    /// Extra flags for every `baton run` (e.g. --checkpoint-exit-code 85).
    pub run_args: Vec<String>,
    /// Extra environment for every attempt (an interval sweep's BATON_CHECKPOINT_INTERVAL).
    pub command_env: Vec<(String, String)>,
    /// Nodes of the run (`--nodes`): 1 is a single-node run, above 1 a `baton run --nodes
    /// N --node-rank K` per node, evicted one node at a time (`nodes.rs`).
    pub nodes: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Generated schedules are cumulative running time: attempt k is evicted after
    /// `events[k].at - events[k-1].at` seconds of running (exponential inter-arrival is
    /// memoryless, so this is a Poisson process over running time). Trace times are
    /// seconds since the simulation started.
    pub per_attempt: bool,
    pub events: Vec<Eviction>,
}

#[derive(Debug, Serialize)]
pub struct VerifyOutcome {
    pub pass: bool,
    pub message: String,
    pub reference_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub seed: u64,
    pub store: String,
    pub work_dir: String,
    pub completed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub attempts: Vec<AttemptRow>,
    pub totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyOutcome>,
    pub schedule: Schedule,
    #[serde(skip)]
    pub svg: String,
    /// On several nodes: each node's attempts, evictions and useful time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<nodes::NodeTotals>,
    /// On several nodes: how many checkpoints are complete, and how many are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<nodes::CheckpointCounts>,
}

/// Where the uninterrupted reference run left its results.
struct Reference {
    store: Store,
    seconds: f64,
    stdout: PathBuf,
}

/// Wait for a `baton run` to end, killing its family if the user interrupts us.
async fn wait_or_interrupt(child: &mut std::process::Child, interrupted: &AtomicBool) -> anyhow::Result<std::process::ExitStatus> {
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if interrupted.load(Ordering::SeqCst) {
            kill_family(child.id());
            let _ = child.wait();
            anyhow::bail!("interrupted");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The command once, uninterrupted, into a store of its own: what `--verify` compares with.
async fn reference_run(opts: &Options, progress: &Progress, interrupted: &AtomicBool) -> anyhow::Result<Reference> {
    let dir = opts.work_dir.join("reference");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let store_dir = opts.work_dir.join("reference-store");
    let _ = std::fs::remove_dir_all(&store_dir);
    progress.line(format!("simulate: --verify: running the command once uninterrupted (store {})", store_dir.display()));
    progress.status("uninterrupted reference run".into());
    let t = Instant::now();
    let extra = vec![
        "--run-id".into(),
        "reference".into(),
        "--dir".into(),
        dir.join("checkpoint").display().to_string(),
        "--device".into(),
        "reference".into(),
    ];
    let mut child = spawn_baton(opts, &store_dir.display().to_string(), &extra, &[], &dir)?;
    let status = wait_or_interrupt(&mut child, interrupted).await?;
    if !status.success() {
        anyhow::bail!("the uninterrupted reference run failed ({status}); see {}", dir.join("baton.log").display());
    }
    Ok(Reference {
        store: Store::open(&crate::store::StoreUrl::Dir(store_dir))?,
        seconds: t.elapsed().as_secs_f64(),
        stdout: dir.join("stdout.log"),
    })
}

/// How the sequence of attempts ended.
#[derive(Default)]
struct Outcome {
    observed: Vec<Observed>,
    completed: bool,
    failure: Option<String>,
    /// The output of the last attempt, whose digest line `--verify` compares (on
    /// several nodes, node 0's).
    last_stdout: PathBuf,
    /// On several nodes: the node of each of `observed`.
    nodes: Vec<u32>,
}

/// The simulated job as it moves from slot to slot: the schedule's cursor and what the
/// simulator has seen so far.
struct Simulation<'a> {
    opts: &'a Options,
    progress: &'a Progress,
    interrupted: &'a AtomicBool,
    job: JobIdentity,
    rng: schedule::Rng,
    start: Instant,
    next_event: usize,
    evictions: usize,
}

impl Simulation<'_> {
    /// When (seconds into the attempt) and how the next eviction of the schedule lands.
    fn planned(&self) -> Option<(f64, Kind)> {
        let events = &self.opts.schedule.events;
        let e = events.get(self.next_event)?;
        let at = if self.opts.schedule.per_attempt {
            let prev = self.next_event.checked_sub(1).map(|i| events[i].at).unwrap_or(0.0);
            e.at - prev
        } else {
            (e.at - self.start.elapsed().as_secs_f64()).max(0.0)
        };
        Some((at, e.kind))
    }

    /// Run attempt `n` on a fresh slot until it ends, evicting it on schedule.
    async fn attempt(&mut self, n: u64) -> anyhow::Result<(Observed, std::process::ExitStatus, PathBuf)> {
        let opts = self.opts;
        let slot = &opts.slots[self.rng.below(opts.slots.len())];
        let dir = opts.work_dir.join(format!("slot-{n:03}-{}", slot.name));
        let _ = std::fs::remove_dir_all(&dir);
        let materialized = slots::materialize(slot, n, self.rng.next_u64(), &dir, &self.job, opts.vacate_window)?;
        let mut env = materialized.env;
        env.extend(opts.command_env.iter().cloned());
        if let Some(r) = &opts.run_id {
            env.push(("BATON_RUN_ID".into(), r.to_string()));
        }
        let attempt_start = Instant::now();
        let spawned_at = attempt::now();
        let planned = self.planned();
        self.progress.line(format!(
            "simulate: attempt {n} on {} ({}) at {:.1} s{}",
            slot.name,
            slot.device(),
            self.start.elapsed().as_secs_f64(),
            planned.map(|(at, k)| format!("; {k:?} eviction planned in {at:.1} s").to_lowercase()).unwrap_or_default()
        ));
        let mut child = spawn_baton(opts, &opts.store_url, &[], &env, &dir)?;
        let mut eviction: Option<(Kind, f64)> = None;
        let mut kill_at: Option<Instant> = None;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if self.interrupted.load(Ordering::SeqCst) {
                kill_family(child.id());
                let _ = child.wait();
                self.progress.finish();
                anyhow::bail!("interrupted; the slots are in {}", opts.work_dir.display());
            }
            if let (None, Some((at, kind))) = (eviction, planned) {
                if attempt_start.elapsed().as_secs_f64() >= at {
                    kill_at = evict(child.id(), kind, opts.vacate_window);
                    eviction = Some((kind, attempt::now()));
                    self.next_event += 1;
                    self.evictions += 1;
                    self.progress.line(
                        format!("simulate: attempt {n}: {kind:?} eviction at {:.1} s", self.start.elapsed().as_secs_f64()).to_lowercase(),
                    );
                }
            }
            if kill_at.is_some_and(|d| Instant::now() >= d) {
                self.progress.line(format!("simulate: attempt {n}: vacate window over, SIGKILL to the whole family"));
                kill_family(child.id());
                kill_at = None;
            }
            self.progress.status(format!(
                "attempt {n} on {} · {:.1} s · {} eviction(s)",
                slot.name,
                self.start.elapsed().as_secs_f64(),
                self.evictions
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let observed =
            Observed { attempt: 0, slot: slot.name.to_string(), spawned_at, eviction, gone_at: attempt::now(), peer_lost: false };
        Ok((observed, status, dir))
    }

    /// Attempts on slot after slot until the command finishes, fails on its own, or
    /// `max_attempts` is reached.
    async fn run(&mut self) -> anyhow::Result<Outcome> {
        let mut out = Outcome::default();
        let mut last_seen_attempt = 0;
        // Slots being emptied in the background, so the next attempt starts at once.
        let mut clearing = Vec::new();
        for n in 1..=self.opts.max_attempts {
            let (observed, status, dir) = self.attempt(n).await?;
            last_seen_attempt = n;
            out.last_stdout = dir.join("stdout.log");
            let evicted = observed.eviction.is_some();
            out.observed.push(observed);
            match (evicted, status.code()) {
                (true, _) => clearing.push(std::thread::spawn(move || clear_slot(&dir))),
                (false, Some(0)) => {
                    out.completed = true;
                    break;
                }
                (false, _) => {
                    out.failure = Some(format!(
                        "the command failed on attempt {n} ({status}) without being evicted; see {}",
                        dir.join("baton.log").display()
                    ));
                    break;
                }
            }
        }
        self.progress.finish();
        for c in clearing {
            let _ = c.join();
        }
        if !out.completed && out.failure.is_none() {
            out.failure = Some(format!(
                "gave up after {last_seen_attempt} attempts: evictions come faster than the command makes progress (raise --mean-interval or --max-attempts)"
            ));
        }
        Ok(out)
    }
}

/// Evict the attempt whose `baton run` is `pid`; returns when its family must be killed.
fn evict(pid: u32, kind: Kind, vacate_window: f64) -> Option<Instant> {
    match kind {
        Kind::Soft => {
            // The starter signals the top process only.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            Some(Instant::now() + Duration::from_secs_f64(vacate_window))
        }
        Kind::Hard => {
            kill_family(pid);
            None
        }
    }
}

pub async fn simulate(opts: Options) -> anyhow::Result<Report> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let progress = Progress::new();
    std::fs::create_dir_all(&opts.work_dir)?;
    let job = JobIdentity { cluster: 1000 + opts.seed % 100_000, submitted: attempt::now() as u64 };
    let run = match &opts.run_id {
        Some(r) => r.clone(),
        None => crate::identity::from_global_job_id(&job.global_job_id()).ok_or_else(|| anyhow::anyhow!("cannot derive a run id"))?,
    };
    // The uninterrupted reference goes first, so its duration is known.
    let reference = match (opts.verify, opts.nodes > 1) {
        (true, false) => Some(reference_run(&opts, &progress, &interrupted).await?),
        (true, true) => Some(nodes::reference_run(&opts, &progress, &interrupted).await?),
        (false, _) => None,
    };
    let mut sim = Simulation {
        opts: &opts,
        progress: &progress,
        interrupted: &interrupted,
        job,
        rng: schedule::Rng::new(opts.seed),
        start: Instant::now(),
        next_event: 0,
        evictions: 0,
    };
    if opts.nodes > 1 {
        let mut outcome = sim.run_nodes().await?;
        return nodes::report(opts, run, &mut outcome, reference).await;
    }
    let mut outcome = sim.run().await?;
    report(opts, run, &mut outcome, reference).await
}

/// The report comes from the store: attempt records and manifests. Records are matched
/// to what the simulator saw by time (an attempt killed before it could write its start
/// record has none).
async fn report(opts: Options, run: RunId, outcome: &mut Outcome, reference: Option<Reference>) -> anyhow::Result<Report> {
    let mut records = Vec::new();
    for r in attempt::load_all(&opts.store, &run).await? {
        let Some(start) = r.start else { continue };
        let Some(o) = outcome.observed.iter_mut().find(|o| o.spawned_at - 1.0 <= start.started && start.started <= o.gone_at) else {
            continue;
        };
        o.attempt = r.attempt;
        records.push(AttemptRecords { start, end: r.end });
    }
    let mut manifests = Vec::new();
    for seq in opts.store.list_manifests(&run).await? {
        if let Ok(m) = load_manifest(&opts.store, &run, seq).await {
            manifests.push(m);
        }
    }
    let points: Vec<Point> = manifests.iter().map(Point::from).collect();
    let (rows, mut totals) = timeline::compute(&outcome.observed, &records, &points);
    totals.add_sizes(&manifests);
    let verify = verify::verdict(reference.as_ref(), outcome, &opts.store, &run, |s, r| Box::pin(verify::latest(s, r))).await?;
    let t0 = records.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
    let svg = timeline::svg::svg(&format!("baton simulate: run {run}"), t0, &rows, &points, &totals);
    Ok(Report {
        run_id: run.to_string(),
        seed: opts.seed,
        store: opts.store.url().to_string(),
        work_dir: opts.work_dir.display().to_string(),
        completed: outcome.completed,
        failure: outcome.failure.take(),
        attempts: rows,
        totals,
        verify,
        schedule: opts.schedule,
        svg,
        nodes: Vec::new(),
        checkpoints: None,
    })
}
