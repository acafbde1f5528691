//! `baton simulate`: a local preemption simulation of a real training command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::StoreArg;
use baton::error::{usage, ErrorKind, ExitCode, Failure};
use baton::simulate::{self, schedule, slots, Schedule};
use baton::store::StoreUrl;

/// Evict a real training command at random moments on simulated slots and report the cost.
#[derive(clap::Args)]
#[command(
    long_about = "Run COMMAND under the real `baton run`, evict it on a schedule, restart it on a new \
simulated HTCondor slot each time (empty scratch directory, machine and job ads, CUDA_VISIBLE_DEVICES), \
until it completes. Then report, from the attempt records and manifests in the store: per attempt the \
slot, device, timing, how it ended, what it restored and committed, work lost, flush and restore \
seconds; and the totals: wall time, useful time, goodput, work lost per eviction, bytes.",
    after_help = "Examples:\n  baton simulate --evictions 3 --mean-interval 20s --slots a100-40gb,t4-16gb,cpu --verify -- python3 train.py\n  \
baton simulate --trace evictions.txt --timeline run.svg -- ./train.sh\n  \
baton simulate --interval-sweep 0.5s,1s,2s,4s --mean-interval 20s --hard-fraction 1 --seed 7 -- python3 train.py\n\
A trace file has one eviction per line: `<seconds since start> [soft|hard]`, e.g. `30 soft` or `2m hard`.\n\
Slot types: a100-40gb, a100-80gb, h100-80gb, h200-141gb, l40s-48gb, l40-48gb, a40-48gb, v100-32gb, t4-16gb, rtx2080ti-11gb, cpu."
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    /// How many evictions (each after an exponential wait of mean --mean-interval).
    /// Without it, evictions keep coming until the command completes.
    #[arg(long, value_name = "N", conflicts_with = "trace")]
    evictions: Option<usize>,
    /// Mean running time between evictions (exponential inter-arrival, like real preemption).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_interval)]
    mean_interval: Duration,
    /// Eviction times from a file instead: `<seconds since start> [soft|hard]` per line.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Fraction of generated evictions that are hard (SIGKILL with no warning, a lost machine).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    hard_fraction: f64,
    /// Seed for the schedule and the slot draw [default: time-based, printed].
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Slot types to draw each attempt from.
    #[arg(long, value_name = "LIST", default_value = "a100-40gb,t4-16gb,l40s-48gb,cpu", value_parser = slots::parse_list)]
    slots: std::vec::Vec<slots::SlotType>,
    /// Time from the soft kill to SIGKILL (published as the slot's MachineMaxVacateTime).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    vacate_window: Duration,
    /// Also run the command once uninterrupted and compare the final checkpoints and digests.
    #[arg(long)]
    verify: bool,
    /// Write the run as an SVG picture.
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,
    /// Where slot directories and logs go [default: ./baton-sim/<run id>].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Use this run id instead of the one derived from the simulated job ad.
    #[arg(long, value_name = "ID", value_parser = super::parse_run_id)]
    run_id: Option<baton::identity::RunId>,
    /// Stop after this many attempts.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_attempts: u64,
    /// Passed to `baton run` as --checkpoint-exit-code.
    #[arg(long, value_name = "CODE")]
    checkpoint_exit_code: Option<i32>,
    /// Run the command once per checkpoint interval in LIST (e.g. 0.5s,1s,2s,4s), each
    /// under the same eviction schedule and slots, with BATON_CHECKPOINT_INTERVAL set to
    /// the interval in seconds (the trainer must honour it), and show the measured goodput
    /// against the interval beside what `baton advise` recommends from each run's records.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_interval, conflicts_with_all = ["verify", "timeline"])]
    interval_sweep: Vec<Duration>,
    /// Run on N nodes: a `baton run --nodes N --node-rank K` per node, each on its own
    /// slot, every eviction hitting one node drawn from the seed; the nodes that exit are
    /// started again on new slots.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: u32,
    /// Print the eviction schedule as JSON and exit without running anything.
    #[arg(long)]
    plan_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The training command.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("{s}: the interval must be positive"));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{s}: {e} (write e.g. 30s or 2m)"))?;
    if d.is_zero() {
        return Err(format!("{s}: the interval must be positive"));
    }
    Ok(d)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s}: not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s}: must be between 0 and 1"));
    }
    Ok(v)
}

const MISSING_COMMAND: &str = "baton simulate needs a command after `--`, for example: baton simulate --evictions 3 -- python3 train.py";

/// The most nodes `simulate` starts: each is a `baton run` and a command on this machine.
const MAX_NODES: u32 = 64;

impl Args {
    /// What is wrong with the command line that clap cannot see, for `--parse-only` too.
    pub fn problem(&self) -> Option<String> {
        self.nodes_problem().or_else(|| self.command.is_empty().then(|| MISSING_COMMAND.to_string()))
    }

    /// A node count `simulate` cannot run, or a combination it does not support.
    fn nodes_problem(&self) -> Option<String> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Some(format!("--nodes {}: a run has 1 to {MAX_NODES} nodes", self.nodes));
        }
        if self.nodes > 1 && !self.interval_sweep.is_empty() {
            return Some("--interval-sweep runs on one node only; leave out --nodes".into());
        }
        None
    }
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    if let Some(p) = a.nodes_problem() {
        return Err(usage(p));
    }
    let seed = a.seed.unwrap_or_else(|| baton::attempt::now().to_bits() ^ std::process::id() as u64);
    let schedule = match &a.trace {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| usage(format!("{}: cannot read the trace: {e}", path.display())))?;
            let text = String::from_utf8(text).map_err(|_| usage(format!("{}: not a trace (not text)", path.display())))?;
            let events = schedule::parse_trace(&text).map_err(|e| usage(format!("{}: not a trace: {e}", path.display())))?;
            Schedule { per_attempt: false, events }
        }
        None => {
            Schedule { per_attempt: true, events: schedule::generate(seed, a.evictions, a.mean_interval.as_secs_f64(), a.hard_fraction) }
        }
    };
    if a.plan_only {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "seed": seed, "schedule": schedule }))?);
        return Ok(0);
    }
    if let Some(p) = a.problem() {
        return Err(usage(p));
    }
    if a.vacate_window < Duration::from_secs(2) {
        return Err(usage("--vacate-window must be at least 2s"));
    }
    // `baton run` is started from the simulator's directory with a slot's scratch
    // directory elsewhere: a relative store path must not change meaning.
    let url = a.store.url()?;
    let store_url = match &url {
        StoreUrl::Dir(p) => StoreUrl::Dir(std::path::absolute(p)?).to_string(),
        other => other.to_string(),
    };
    let store = a.store.open()?;
    let work_dir = a.work_dir.unwrap_or_else(|| PathBuf::from("baton-sim").join(format!("seed-{seed}")));
    let mut run_args = vec![];
    if let Some(t) = a.store.token_file()? {
        run_args.extend(["--token-file".to_string(), t.display().to_string()]);
    }
    if let Some(c) = a.checkpoint_exit_code {
        run_args.extend(["--checkpoint-exit-code".to_string(), c.to_string()]);
    }
    tracing::info!("simulate: seed {seed} (rerun the same schedule with --seed {seed}), work directory {}", work_dir.display());
    let options = simulate::Options {
        store_url,
        store,
        command: a.command,
        schedule,
        slots: a.slots,
        vacate_window: a.vacate_window.as_secs_f64(),
        verify: a.verify,
        work_dir,
        seed,
        run_id: a.run_id,
        max_attempts: a.max_attempts,
        run_args,
        command_env: vec![],
        nodes: a.nodes,
    };
    if !a.interval_sweep.is_empty() {
        return sweep(options, &a.interval_sweep, a.json).await;
    }
    let report = simulate::simulate(options).await?;
    if let Some(path) = &a.timeline {
        std::fs::write(path, &report.svg).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
        if let Some(path) = &a.timeline {
            println!("timeline: {}", path.display());
        }
    }
    if let Some(f) = &report.failure {
        return Err(Failure::new(ErrorKind::Checkpoint, f.clone()).into());
    }
    Ok(match &report.verify {
        Some(v) if !v.pass => ExitCode::Damaged as i32,
        _ => 0,
    })
}

fn print_report(r: &simulate::Report) {
    println!("run {} (seed {}), store {}", r.run_id, r.seed, r.store);
    // A NODE column only on several nodes: a single-node report reads as it always has.
    let multi = !r.nodes.is_empty();
    let node_col = |n: &str| if multi { format!("{n:>4} ") } else { String::new() };
    println!(
        "\n{:>3} {}{:<15} {:<24} {:>7} {:>7} {:<16} {:>9} {:>10} {:>8} {:>8} {:>8}",
        "#",
        node_col("NODE"),
        "SLOT",
        "DEVICE",
        "START",
        "SECONDS",
        "ENDING",
        "RESTORED",
        "COMMITTED",
        "LOST",
        "FLUSH",
        "RESTORE"
    );
    for a in &r.attempts {
        println!(
            "{:>3} {}{:<15} {:<24} {:>7.1} {:>7.1} {:<16} {:>9} {:>10} {:>8.1} {:>8} {:>8.2}",
            a.attempt,
            node_col(&a.node.map(|n| n.to_string()).unwrap_or_default()),
            a.slot,
            a.device,
            a.start,
            a.duration,
            a.ending,
            match (a.restored_seq, a.restored_epoch) {
                (Some(s), Some(e)) => format!("{s} (e{e})"),
                (Some(s), None) => s.to_string(),
                _ => "-".into(),
            },
            a.committed.len(),
            a.work_lost,
            a.flush_seconds.map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into()),
            a.restore_seconds
        );
    }
    let t = &r.totals;
    println!(
        "\nwall {:.1} s, useful {:.1} s, goodput {:.1}%; {} eviction(s) ({} soft, {} hard), {:.1} s of work lost per eviction",
        t.wall_seconds,
        t.useful_seconds,
        t.goodput * 100.0,
        t.evictions,
        t.soft,
        t.hard,
        t.work_lost_per_eviction
    );
    println!(
        "restore {:.2} s, flush {:.2} s in all; {} logical, {} new, {} uploaded",
        t.restore_seconds,
        t.flush_seconds,
        baton::format::bytes_short(t.logical_bytes),
        baton::format::bytes_short(t.new_bytes),
        baton::format::bytes_short(t.stored_bytes)
    );
    for n in &r.nodes {
        println!(
            "node {}: {} attempt(s), {} eviction(s) ({} soft, {} hard), useful {:.1} s, {:.1} s of work lost",
            n.node, n.attempts, n.evictions, n.soft, n.hard, n.useful_seconds, n.work_lost_seconds
        );
    }
    if let Some(c) = &r.checkpoints {
        println!("checkpoints: {} complete (every node's part durable), {} incomplete (never restored)", c.complete, c.incomplete);
    }
    if let Some(f) = &r.failure {
        println!("\n{f}");
    }
    if let Some(v) = &r.verify {
        println!("\nverify: {} (uninterrupted run took {:.1} s)", v.message, v.reference_seconds);
    }
}

#[derive(serde::Serialize)]
struct SweepPoint {
    interval_seconds: f64,
    run_id: String,
    completed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
    totals: baton::timeline::Totals,
    /// What `baton advise` makes of this run's records.
    #[serde(skip_serializing_if = "Option::is_none")]
    advice: Option<baton::interval::Advice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advice_error: Option<String>,
}

/// One simulation per interval, under the same schedule and slot draw (the same seed), so
/// that the intervals are compared on the same evictions.
async fn sweep(base: simulate::Options, intervals: &[Duration], json: bool) -> anyhow::Result<i32> {
    let base_id = match &base.run_id {
        Some(r) => r.to_string(),
        None => format!("sweep-{}", base.seed),
    };
    let mut points = Vec::new();
    for interval in intervals {
        let secs = interval.as_secs_f64();
        let label = format!("every-{}", humantime::format_duration(*interval));
        let run = baton::identity::RunId::parse(&format!("{base_id}-{label}")).map_err(usage)?;
        tracing::info!("simulate: interval sweep: checkpoint every {secs} s as run {run}");
        let options = simulate::Options {
            store_url: base.store_url.clone(),
            store: base.store.clone(),
            command: base.command.clone(),
            schedule: base.schedule.clone(),
            slots: base.slots.clone(),
            vacate_window: base.vacate_window,
            verify: false,
            work_dir: base.work_dir.join(&label),
            seed: base.seed,
            run_id: Some(run.clone()),
            max_attempts: base.max_attempts,
            run_args: base.run_args.clone(),
            command_env: vec![("BATON_CHECKPOINT_INTERVAL".into(), secs.to_string())],
            nodes: base.nodes,
        };
        let report = simulate::simulate(options).await?;
        let (records, manifests) = baton::interval::load(&base.store, &run).await?;
        let (rows, totals, _) = baton::interval::timeline_of(&records, &manifests);
        let (advice, advice_error) = match baton::interval::advise(&rows, &totals, &manifests, 0.9, None) {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e.to_string())),
        };
        points.push(SweepPoint {
            interval_seconds: secs,
            run_id: run.to_string(),
            completed: report.completed,
            failure: report.failure,
            totals: report.totals,
            advice,
            advice_error,
        });
    }
    let best = points.iter().filter(|p| p.completed).max_by(|a, b| a.totals.goodput.total_cmp(&b.totals.goodput));
    let best_interval = best.map(|p| p.interval_seconds);
    if json {
        let v =
            serde_json::json!({ "seed": base.seed, "store": base.store.url(), "points": points, "best_interval_seconds": best_interval });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("interval sweep (seed {}), store {}", base.seed, base.store.url());
    println!(
        "\n{:>10} {:<40} {:>9} {:>8} {:>9} {:>8} {:>8} {:>12}",
        "INTERVAL", "RUN", "COMPLETED", "ATTEMPTS", "EVICTIONS", "LOST/EV", "GOODPUT", "ADVISED"
    );
    for p in &points {
        let t = &p.totals;
        println!(
            "{:>10} {:<40} {:>9} {:>8} {:>9} {:>8.1} {:>7.1}% {:>12}",
            baton::format::seconds(p.interval_seconds),
            p.run_id,
            if p.completed { "yes" } else { "no" },
            t.attempts,
            t.evictions,
            t.work_lost_per_eviction,
            t.goodput * 100.0,
            p.advice.as_ref().map(|a| baton::format::seconds(a.recommended_seconds)).unwrap_or_else(|| "-".into())
        );
    }
    match best_interval {
        Some(b) => {
            println!("\nbest measured interval: {} (the ADVISED column is `baton advise` on each run's records)", baton::format::seconds(b))
        }
        None => println!("\nno run completed: evictions come faster than the command makes progress at every interval"),
    }
    Ok(0)
}
