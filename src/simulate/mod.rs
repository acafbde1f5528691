//! `baton simulate`: run a real training command under the real `baton run`, evict it
//! on a schedule (soft: the scheduler's signal then SIGKILL at the end of the vacate
//! window; hard: SIGKILL, no warning), restart it on a new simulated slot each time,
//! and report what preemption cost, from the records the runs left in the store.

pub mod report;
pub mod schedule;
pub mod slots;
pub mod timeline;

use serde::Serialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt::{self, EndRecord, StartRecord};
use crate::identity::RunId;
use crate::manifest::Manifest;
use crate::restore::load_manifest;
use crate::store::Store;
use report::{AttemptRecords, AttemptRow, Observed, Totals};
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
}

/// Tells the user what is happening: a spinner on a terminal, plain lines in a log file.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress { bar }
    }
    fn line(&self, msg: String) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
    fn status(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn kill_family(root: u32) {
    let family = crate::process::descendants(root as i32);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(root as i32), nix::sys::signal::Signal::SIGKILL);
    for pid in family {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

fn spawn_baton(
    opts: &Options,
    store_url: &str,
    extra: &[String],
    env: &[(String, String)],
    dir: &Path,
) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run").args(["--store", store_url]).args(&opts.run_args).args(extra).arg("--").args(&opts.command);
    for k in [
        "BATON_RUN_ID",
        "BATON_SOCKET",
        "BATON_STORE",
        "_CONDOR_JOB_AD",
        "_CONDOR_MACHINE_AD",
        "_CONDOR_SCRATCH_DIR",
        "CUDA_VISIBLE_DEVICES",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // Its own group, so a Ctrl-C at the terminal reaches only the simulator, which decides.
    cmd.process_group(0);
    cmd.stdout(std::fs::File::create(dir.join("stdout.log"))?);
    cmd.stderr(std::fs::File::create(dir.join("baton.log"))?);
    Ok(cmd.spawn()?)
}

/// What an evicted attempt's slot keeps: the logs and ads, for the report and for people.
const SLOT_KEEPS: [&str; 4] = ["baton.log", "stdout.log", ".job.ad", ".machine.ad"];

/// Empty a slot the job has left, as HTCondor's starter deletes the scratch directory
/// of a job that leaves a slot. Besides keeping the disk from filling with stale
/// checkpoints, this spares the disk writing back (for nobody) the trainer's last save,
/// which would otherwise compete with the next attempt's restore and flushes.
fn clear_slot(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if SLOT_KEEPS.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        let path = e.path();
        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

fn digest_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().rev().find(|l| l.to_ascii_lowercase().contains("digest")).map(|l| l.trim().to_string())
}

async fn latest(store: &Store, run: &RunId) -> anyhow::Result<Manifest> {
    let seq = store.list_manifests(run).await?.last().copied().ok_or_else(|| anyhow::anyhow!("run {run} has no checkpoint"))?;
    Ok(load_manifest(store, run, seq).await?)
}

/// Compare the final checkpoints file by file, and the printed digests.
fn compare(sim: &Manifest, reference: &Manifest, sim_out: &Path, ref_out: &Path) -> (bool, String) {
    let mut a: Vec<_> = sim.files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect();
    let mut b: Vec<_> = reference.files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect();
    a.sort();
    b.sort();
    for (path, hash) in &b {
        match a.iter().find(|(p, _)| p == path) {
            None => return (false, format!("FAIL: {path} is in the uninterrupted run's final checkpoint but not in the simulated one")),
            Some((_, h)) if h != hash => {
                return (
                    false,
                    format!("FAIL: first differing file {path}: sha256 {}… after evictions, {}… uninterrupted", &h[..16], &hash[..16]),
                )
            }
            _ => {}
        }
    }
    if let Some((path, _)) = a.iter().find(|(p, _)| !b.iter().any(|(q, _)| q == p)) {
        return (false, format!("FAIL: {path} is in the simulated run's final checkpoint but not in the uninterrupted one"));
    }
    match (digest_line(sim_out), digest_line(ref_out)) {
        (Some(x), Some(y)) if x != y => (false, format!("FAIL: the final output differs: {x:?} after evictions, {y:?} uninterrupted")),
        (Some(x), Some(_)) => (true, format!("PASS: {} files identical to the uninterrupted run, and the same {x:?}", b.len())),
        (None, Some(y)) => (false, format!("FAIL: the uninterrupted run printed {y:?}, the simulated run printed no digest")),
        _ => (true, format!("PASS: {} files identical to the uninterrupted run", b.len())),
    }
}

pub async fn simulate(opts: Options) -> anyhow::Result<Report> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let progress = Progress::new();
    std::fs::create_dir_all(&opts.work_dir)?;
    let submitted = attempt::now() as u64;
    let mut rng = schedule::Rng::new(opts.seed);
    let job = JobIdentity { cluster: 1000 + opts.seed % 100_000, submitted };
    let run = match &opts.run_id {
        Some(r) => r.clone(),
        None => crate::identity::from_global_job_id(&job.global_job_id()).ok_or_else(|| anyhow::anyhow!("cannot derive a run id"))?,
    };

    // The uninterrupted reference, first, so its duration is known.
    let mut reference = None;
    if opts.verify {
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
        let mut child = spawn_baton(&opts, &store_dir.display().to_string(), &extra, &[], &dir)?;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if interrupted.load(Ordering::SeqCst) {
                kill_family(child.id());
                anyhow::bail!("interrupted");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !status.success() {
            anyhow::bail!("the uninterrupted reference run failed ({status}); see {}", dir.join("baton.log").display());
        }
        reference = Some((Store::open(&crate::store::StoreUrl::Dir(store_dir))?, t.elapsed().as_secs_f64(), dir.join("stdout.log")));
    }

    let start = Instant::now();
    let mut next_event = 0usize;
    let mut observed = Vec::new();
    let mut failure = None;
    let mut completed = false;
    let mut last_stdout = PathBuf::new();
    let mut evictions = 0;
    let mut last_seen_attempt = 0;
    // Slots being emptied in the background, so the next attempt starts at once.
    let mut clearing = Vec::new();
    for n in 1..=opts.max_attempts {
        let slot = &opts.slots[rng.below(opts.slots.len())];
        let dir = opts.work_dir.join(format!("slot-{n:03}-{}", slot.name));
        let _ = std::fs::remove_dir_all(&dir);
        let materialized = slots::materialize(slot, n, rng.next_u64(), &dir, &job, opts.vacate_window)?;
        let mut env = materialized.env;
        if let Some(r) = &opts.run_id {
            env.push(("BATON_RUN_ID".into(), r.to_string()));
        }
        let attempt_start = Instant::now();
        let spawned_at = attempt::now();
        let planned = opts.schedule.events.get(next_event).map(|e| {
            let at = if opts.schedule.per_attempt {
                let prev = next_event.checked_sub(1).map(|i| opts.schedule.events[i].at).unwrap_or(0.0);
                e.at - prev
            } else {
                (e.at - start.elapsed().as_secs_f64()).max(0.0)
            };
            (at, e.kind)
        });
        progress.line(format!(
            "simulate: attempt {n} on {} ({}) at {:.1} s{}",
            slot.name,
            slot.device(),
            start.elapsed().as_secs_f64(),
            planned.map(|(at, k)| format!("; {k:?} eviction planned in {at:.1} s").to_lowercase()).unwrap_or_default()
        ));
        let mut child = spawn_baton(&opts, &opts.store_url, &[], &env, &dir)?;
        let mut eviction: Option<(Kind, f64)> = None;
        let mut kill_at: Option<Instant> = None;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if interrupted.load(Ordering::SeqCst) {
                kill_family(child.id());
                let _ = child.wait();
                progress.finish();
                anyhow::bail!("interrupted; the slots are in {}", opts.work_dir.display());
            }
            if let (None, Some((at, kind))) = (eviction, planned) {
                if attempt_start.elapsed().as_secs_f64() >= at {
                    match kind {
                        Kind::Soft => {
                            // The starter signals the top process only.
                            let _ =
                                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
                            kill_at = Some(Instant::now() + Duration::from_secs_f64(opts.vacate_window));
                        }
                        Kind::Hard => kill_family(child.id()),
                    }
                    eviction = Some((kind, attempt::now()));
                    next_event += 1;
                    evictions += 1;
                    progress
                        .line(format!("simulate: attempt {n}: {kind:?} eviction at {:.1} s", start.elapsed().as_secs_f64()).to_lowercase());
                }
            }
            if kill_at.is_some_and(|d| Instant::now() >= d) {
                progress.line(format!("simulate: attempt {n}: vacate window over, SIGKILL to the whole family"));
                kill_family(child.id());
                kill_at = None;
            }
            progress.status(format!("attempt {n} on {} · {:.1} s · {evictions} eviction(s)", slot.name, start.elapsed().as_secs_f64()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        last_seen_attempt = n;
        last_stdout = dir.join("stdout.log");
        observed.push(Observed { attempt: 0, slot: slot.name.to_string(), spawned_at, eviction, gone_at: attempt::now() });
        match (eviction, status.code()) {
            (Some(_), _) => {
                clearing.push(std::thread::spawn(move || clear_slot(&dir)));
                continue;
            }
            (None, Some(0)) => {
                completed = true;
                break;
            }
            (None, _) => {
                failure = Some(format!(
                    "the command failed on attempt {n} ({status}) without being evicted; see {}",
                    dir.join("baton.log").display()
                ));
                break;
            }
        }
    }
    progress.finish();
    for c in clearing {
        let _ = c.join();
    }
    if !completed && failure.is_none() {
        failure = Some(format!(
            "gave up after {last_seen_attempt} attempts: evictions come faster than the command makes progress (raise --mean-interval or --max-attempts)"
        ));
    }

    // The report comes from the store: attempt records and manifests. Records are
    // matched to what the simulator saw by time (an attempt killed before it could
    // write its start record has none).
    let mut records = Vec::new();
    for (n, has_end) in opts.store.list_attempts(&run).await? {
        let Ok(bytes) = opts.store.get_attempt(&run, n, false).await else { continue };
        let Ok(start): Result<StartRecord, _> = serde_json::from_slice(&bytes) else { continue };
        let Some(o) = observed.iter_mut().find(|o| o.spawned_at - 1.0 <= start.started && start.started <= o.gone_at) else { continue };
        o.attempt = n;
        let end: Option<EndRecord> =
            if has_end { opts.store.get_attempt(&run, n, true).await.ok().and_then(|b| serde_json::from_slice(&b).ok()) } else { None };
        records.push(AttemptRecords { start, end });
    }
    let mut manifests = Vec::new();
    for seq in opts.store.list_manifests(&run).await? {
        if let Ok(m) = load_manifest(&opts.store, &run, seq).await {
            manifests.push(m);
        }
    }
    let (rows, totals) = report::compute(&observed, &records, &manifests);
    let verify = match reference {
        Some((ref_store, secs, ref_out)) if completed => {
            let reference_run = RunId::parse("reference").map_err(anyhow::Error::msg)?;
            let (pass, message) =
                compare(&latest(&opts.store, &run).await?, &latest(&ref_store, &reference_run).await?, &last_stdout, &ref_out);
            Some(VerifyOutcome { pass, message, reference_seconds: secs })
        }
        Some((_, secs, _)) => {
            Some(VerifyOutcome { pass: false, message: "FAIL: the simulated run did not complete".into(), reference_seconds: secs })
        }
        None => None,
    };
    let t0 = records.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
    let svg = timeline::svg(&format!("baton simulate: run {run}"), t0, &rows, &manifests, &totals);
    Ok(Report {
        run_id: run.to_string(),
        seed: opts.seed,
        store: opts.store.url().to_string(),
        work_dir: opts.work_dir.display().to_string(),
        completed,
        failure,
        attempts: rows,
        totals,
        verify,
        schedule: opts.schedule,
        svg,
    })
}
