//! `baton inspect`: what is in a store, a run, or a checkpoint.

use serde::Serialize;

use super::StoreArg;
use anyhow::Context;
use baton::attempt::Records;
use baton::error::{ErrorKind, Failure};
use baton::format;
use baton::identity::RunId;
use baton::interval::Advice;
use baton::manifest::Manifest;
use baton::restore::load_manifest;
use baton::store::Store;
use baton::timeline::Point;

/// Show the runs in a store, the checkpoints and attempts of a run, or one checkpoint's files.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  baton inspect                      every run: progress, attempts, evictions, goodput, devices, bytes\n  \
baton inspect RUN                  checkpoints and attempts of RUN, and the interval advice\n  \
baton inspect RUN --timeline r.svg the run's timeline as a picture\n  \
baton inspect RUN 7 --json         files of checkpoint 7, as JSON\n\
With no RUN, the store's datasets are listed after the runs (`baton data list --json` for JSON)."
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    #[arg(value_parser = super::parse_run_id)]
    run: Option<RunId>,
    /// A checkpoint seq of RUN.
    checkpoint: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Draw RUN's timeline (attempts on their devices, evictions, restores, flushes,
    /// progress) into this SVG file, as `baton simulate --timeline` does.
    #[arg(long, value_name = "FILE.svg", requires = "run", conflicts_with = "checkpoint")]
    timeline: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct CheckpointRow {
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<Manifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct RunDetail {
    run_id: String,
    checkpoints: Vec<CheckpointRow>,
    /// Checkpoints of runs on several nodes: the parts each has, and whether complete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    parts: Vec<baton::nodes::PartsRow>,
    attempts: Vec<Records>,
    /// What `baton advise RUN` says, at its default confidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    advice: Option<Advice>,
}

/// `baton advise`'s default, so the line here and its output agree.
const ADVICE_CONFIDENCE: f64 = 0.9;

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    match (a.run, a.checkpoint) {
        (None, _) => list_runs(&store, a.json).await,
        (Some(run), None) => show_run(&store, &run, a.json, a.timeline.as_deref()).await,
        (Some(run), Some(seq)) => show_checkpoint(&store, &run, seq, a.json).await,
    }
}

async fn list_runs(store: &Store, json: bool) -> anyhow::Result<i32> {
    let (out, _) = baton::overview::overview(store).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    let datasets = baton::data::summaries(store).await?;
    if out.is_empty() {
        println!("no runs in {}", store.url());
    } else {
        println!(
            "{:<40} {:>11} {:>6} {:>5} {:>7} {:>5} {:>8} {:>9} {:>7} {:>8} {:>8}  DEVICES",
            "RUN", "CHECKPOINTS", "LATEST", "EPOCH", "STEP", "NODES", "ATTEMPTS", "EVICTIONS", "GOODPUT", "STORED", "SHARED"
        );
        for r in &out {
            println!(
                "{:<40} {:>11} {:>6} {:>5} {:>7} {:>5} {:>8} {:>9} {:>7} {:>8} {:>8}  {}",
                r.run_id,
                r.checkpoints,
                opt(r.latest_seq),
                match (r.epoch, r.latest_reason) {
                    (None, Some(baton::manifest::Reason::Final)) => "final".into(),
                    (e, _) => opt(e),
                },
                opt(r.step),
                r.nodes,
                r.attempts,
                r.evictions,
                r.goodput.map(|g| format!("{:.1}%", g * 100.0)).unwrap_or_else(|| "-".into()),
                format::bytes_short(r.stored_bytes),
                format::bytes_short(r.shared_bytes),
                r.devices.join(",")
            );
            if let Some(e) = &r.latest_error {
                println!("{:<40} DAMAGED: {e}", "");
            }
            if r.incomplete_checkpoints > 0 {
                println!(
                    "{:<40} INCOMPLETE: {} checkpoint(s) in parts miss a node's part or fail the check (`baton inspect {}` lists them)",
                    "", r.incomplete_checkpoints, r.run_id
                );
            }
        }
    }
    if !datasets.is_empty() {
        println!();
        super::data::print_datasets(store, &datasets);
    }
    Ok(0)
}

async fn show_run(store: &Store, run: &RunId, json: bool, svg: Option<&std::path::Path>) -> anyhow::Result<i32> {
    let seqs = store.list_manifests(run).await?;
    let attempts = baton::attempt::load_all(store, run).await?;
    let parts = baton::nodes::parts_rows(store, run).await?;
    if seqs.is_empty() && attempts.is_empty() && parts.is_empty() {
        return Err(Failure::new(ErrorKind::Usage, format!("no run {run} in {}; `baton inspect` lists the runs", store.url())).into());
    }
    let mut checkpoints = Vec::new();
    for seq in seqs {
        match load_manifest(store, run, seq).await {
            Ok(m) => checkpoints.push(CheckpointRow { seq, manifest: Some(m), error: None }),
            Err(e) => checkpoints.push(CheckpointRow { seq, manifest: None, error: Some(baton::error::chain(&e)) }),
        }
    }
    let manifests: Vec<Manifest> = checkpoints.iter().filter_map(|c| c.manifest.clone()).collect();
    let (rows, totals, t0) = baton::interval::timeline_of(&attempts, &manifests);
    if let Some(path) = svg {
        let points: Vec<Point> = manifests.iter().map(Point::from).collect();
        let picture = baton::timeline::svg::svg(&format!("baton inspect: run {run}"), t0, &rows, &points, &totals);
        std::fs::write(path, picture).with_context(|| format!("cannot write the timeline to {}", path.display()))?;
    }
    let advice = baton::interval::advise(&rows, &totals, &manifests, ADVICE_CONFIDENCE, None);
    let detail = RunDetail { run_id: run.to_string(), checkpoints, parts, attempts, advice: advice.as_ref().ok().cloned() };
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(0);
    }
    println!("run {run} in {}", store.url());
    println!(
        "\n{:>5} {:>6} {:>7} {:<16} {:<20} {:<24} {:>9} {:>9} {:>9}",
        "SEQ", "EPOCH", "STEP", "REASON", "TIME", "DEVICE", "LOGICAL", "NEW", "STORED"
    );
    for c in &detail.checkpoints {
        match &c.manifest {
            Some(m) => println!(
                "{:>5} {:>6} {:>7} {:<16} {:<20} {:<24} {:>9} {:>9} {:>9}",
                m.seq,
                opt(m.epoch),
                opt(m.step),
                m.reason.to_string(),
                format::time(m.created),
                m.device,
                format::bytes_short(m.sizes.logical_bytes),
                format::bytes_short(m.sizes.new_bytes),
                format::bytes_short(m.sizes.stored_bytes)
            ),
            None => println!("{:>5} DAMAGED: {}", c.seq, c.error.as_deref().unwrap_or("")),
        }
    }
    if !detail.parts.is_empty() {
        println!("\ncheckpoints of several nodes, in parts:");
        println!("{:>5} {:>6} {:>7} {:>5} {:>10} {:<12} STATE", "SEQ", "EPOCH", "STEP", "NODES", "GENERATION", "PARTS");
        for p in &detail.parts {
            let present = p.present.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let state = match &p.problem {
                None => "complete".to_string(),
                Some(why) => format!("NOT RESTORABLE: {why}"),
            };
            println!(
                "{:>5} {:>6} {:>7} {:>5} {:>10} {:<12} {state}",
                p.seq,
                opt(p.epoch),
                opt(p.step),
                opt(p.nodes),
                opt(p.generation),
                present
            );
        }
    }
    println!(
        "\n{:>7} {:<20} {:<20} {:<24} {:>8} {:<12} {:>6} COMMITTED/DURABLE",
        "ATTEMPT", "HOST", "STARTED", "DEVICE", "RESTORED", "ENDING", "STATUS"
    );
    for a in &detail.attempts {
        let (host, started, device, restored) = match &a.start {
            Some(s) => (
                match &s.nodes {
                    Some(n) => format!("{} (node {}/{})", s.host, n.node, n.nodes),
                    None => s.host.clone(),
                },
                format::time(s.started),
                s.device.clone(),
                match s.nodes.as_ref().and_then(|n| n.restored_nodes.map(|r| (r, n.nodes))) {
                    Some((r, n)) if r != n => format!("{} ({r}->{n} nodes)", opt(s.restored_seq)),
                    _ => opt(s.restored_seq),
                },
            ),
            None => ("?".into(), "?".into(), "?".into(), "?".into()),
        };
        let (ending, status, commits) = match &a.end {
            Some(e) => (
                e.ending.to_string(),
                e.exit_code.map(|c| c.to_string()).or(e.signal.map(|s| format!("sig{s}"))).unwrap_or_else(|| "-".into()),
                format!("{:?}/{:?}", e.committed, e.durable),
            ),
            None => ("no record".into(), "-".into(), "-".into()),
        };
        println!("{:>7} {:<20} {:<20} {:<24} {:>8} {:<12} {:>6} {}", a.attempt, host, started, device, restored, ending, status, commits);
    }
    match &advice {
        Ok(a) => println!("\n{}", advice_line(a)),
        Err(e) => println!("\ninterval advice: none ({e})"),
    }
    if let Some(path) = svg {
        println!("timeline: {}", path.display());
    }
    Ok(0)
}

async fn show_checkpoint(store: &Store, run: &RunId, seq: u64, json: bool) -> anyhow::Result<i32> {
    // A checkpoint of several nodes: each node's part, as it is stored.
    if let (Some(nodes), false) = (store.list_parts(run).await?.remove(&seq), store.list_manifests(run).await?.contains(&seq)) {
        let parts = baton::nodes::read_parts(store, run, seq, &nodes).await?;
        let verdict = baton::nodes::complete(seq, &parts);
        if json {
            let v: Vec<serde_json::Value> = parts
                .iter()
                .map(|(n, p)| match p {
                    Ok(m) => serde_json::json!({"node": n, "manifest": m}),
                    Err(e) => serde_json::json!({"node": n, "error": e}),
                })
                .collect();
            let out = serde_json::json!({"seq": seq, "complete": verdict.is_ok(), "problem": verdict.err(), "parts": v});
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(0);
        }
        println!("run {run} checkpoint {seq}: {}", verdict.err().unwrap_or_else(|| "complete".into()));
        for (n, p) in &parts {
            match p {
                Ok(m) => {
                    println!(
                        "\nnode {n}'s part: attempt {}, on {} ({}), epoch {} step {}",
                        m.attempt,
                        m.host,
                        m.device,
                        opt(m.epoch),
                        opt(m.step)
                    );
                    for f in &m.files {
                        println!("{:>10} {:>6o} {:>6}  {:<64}  {}", f.size, f.mode, f.chunks.len(), f.sha256, f.path);
                    }
                }
                Err(e) => println!("\nnode {n}'s part: DAMAGED: {e}"),
            }
        }
        return Ok(0);
    }
    let m = load_manifest(store, run, seq).await.map_err(|e| Failure::new(ErrorKind::Permanent, baton::error::chain(&e)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(0);
    }
    println!("run {} checkpoint {} ({}), attempt {}", m.run_id, m.seq, m.reason, m.attempt);
    println!("  created  {}", format::time(m.created));
    println!("  epoch    {}   step {}", opt(m.epoch), opt(m.step));
    for (k, v) in &m.meta {
        println!("  meta     {k}={v}");
    }
    println!("  written  on {} ({})", m.host, m.device);
    if let Some(d) = &m.device_info {
        println!("  device   {}", d.details());
    }
    if let Some(g) = &m.htcondor.global_job_id {
        match m.htcondor.num_job_starts {
            Some(n) => println!("  job      {g} (start {n})"),
            None => println!("  job      {g}"),
        }
    }
    let s = &m.sizes;
    println!(
        "  sizes    {} logical, {} new, {} stored; capture {:.2} s, upload {:.2} s",
        format::bytes_short(s.logical_bytes),
        format::bytes_short(s.new_bytes),
        format::bytes_short(s.stored_bytes),
        s.capture_seconds,
        s.upload_seconds
    );
    println!("\n{:>10} {:>6} {:>6}  {:<64}  PATH", "SIZE", "MODE", "CHUNKS", "SHA256");
    for f in &m.files {
        println!("{:>10} {:>6o} {:>6}  {:<64}  {}", f.size, f.mode, f.chunks.len(), f.sha256, f.path);
    }
    Ok(0)
}

/// The advice in one line; `baton advise RUN` has the whole of it.
fn advice_line(a: &Advice) -> String {
    let s = format::seconds;
    let now = match (a.measured.interval_seconds, a.goodput_current) {
        (Some(i), Some(g)) => format!("now every {} (expected goodput {:.0}%)", s(i), g * 100.0),
        _ => "current interval unknown".into(),
    };
    let range = format!("{} to {}", s(a.range_seconds.0), a.range_seconds.1.map(s).unwrap_or_else(|| "unbounded".into()));
    format!(
        "interval advice: checkpoint every {}{} ({:.0}% range {range}; expected goodput {:.0}%), {now}; {} of {} eviction(s) lost work; see `baton advise`",
        s(a.recommended_seconds),
        if a.measured.lossy_evictions == 0 { " or less often" } else { "" },
        a.confidence * 100.0,
        a.goodput_recommended * 100.0,
        a.measured.lossy_evictions,
        a.measured.evictions,
    )
}
