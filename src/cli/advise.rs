//! `baton advise`: how often a run should checkpoint, from its own records.

use super::StoreArg;
use baton::error::{usage, ErrorKind, Failure};
use baton::format::seconds;
use baton::identity::RunId;
use baton::interval::{self, Advice};

/// Recommend a checkpoint interval for a run, from its own evictions and checkpoint costs.
#[derive(clap::Args)]
#[command(
    long_about = "Recommend a checkpoint interval for RUN from its own records: how long its attempts ran \
before they were evicted, which evictions lost work (no checkpoint after the signal), how long \
checkpoints, restores and uploads took. Prints the eviction rate with its confidence interval (exact \
Poisson, from k evictions in T of running), the interval that maximises the expected goodput (Daly's \
model for exponential evictions; Young's and Daly's formulas beside it), the range of intervals that \
follows from the rate's interval, and the expected goodput at the current and the recommended interval. \
The model and its limits: docs/interval.md.",
    after_help = "Examples:\n  baton advise RUN\n  baton advise RUN --confidence 0.95 --json\n  \
baton advise RUN --checkpoint-cost 45s    the trainer's save takes longer than baton's capture shows\n\
A trainer that reports its own save time (baton commit --meta save_seconds=12.5) is costed in full."
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    #[arg(value_parser = super::parse_run_id)]
    run: RunId,
    /// Confidence of the interval on the eviction rate, between 0.5 and 0.999.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.9, value_parser = parse_confidence)]
    confidence: f64,
    /// What one checkpoint costs training, e.g. 30s [default: measured: baton's capture,
    /// plus the trainer's `save_seconds` when it reports it].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    checkpoint_cost: Option<std::time::Duration>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn parse_confidence(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s}: not a number"))?;
    if !(0.5..=0.999).contains(&v) {
        return Err(format!("{s}: must be between 0.5 and 0.999"));
    }
    Ok(v)
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let (records, manifests) = interval::load(&store, &a.run).await?;
    if records.is_empty() && manifests.is_empty() {
        return Err(usage(format!("no run {} in {}; `baton inspect` lists the runs", a.run, store.url())));
    }
    let (rows, totals, _) = interval::timeline_of(&records, &manifests);
    let advice = interval::advise(&rows, &totals, &manifests, a.confidence, a.checkpoint_cost.map(|d| d.as_secs_f64()))
        .map_err(|e| Failure::new(ErrorKind::Usage, format!("run {}: {e}", a.run)))?;
    if a.json {
        let mut v = serde_json::to_value(&advice)?;
        v["run_id"] = a.run.to_string().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("run {} in {}", a.run, store.url());
        print(&advice);
    }
    Ok(0)
}

/// "one every 3.1 s" for a rate per second.
fn every(rate: f64) -> String {
    if rate <= 0.0 {
        "none".into()
    } else {
        format!("one every {}", seconds(1.0 / rate))
    }
}

pub fn print(a: &Advice) {
    let m = &a.measured;
    let pct = (a.confidence * 100.0).round();
    println!(
        "  evictions        {} in {} of running over {} attempt(s): {}; {} lost work, {} saved on the signal",
        m.evictions,
        seconds(m.running_seconds),
        m.attempts,
        every(a.eviction_rate.per_second),
        m.lossy_evictions,
        m.evictions - m.lossy_evictions
    );
    let r = &a.lossy_rate;
    println!(
        "  lossy rate       {} ({pct}% interval: {} to {})",
        every(r.per_second),
        every(r.high),
        if r.low > 0.0 { every(r.low) } else { "none".into() }
    );
    println!(
        "  costs            checkpoint {} ({}), restore {}, upload {}",
        seconds(a.costs.checkpoint),
        match (a.costs.checkpoint != m.checkpoint_seconds.unwrap_or(f64::NAN), m.includes_trainer_save) {
            (true, _) => "given",
            (false, true) => "capture + the trainer's save_seconds",
            (false, false) => "baton's capture only",
        },
        seconds(a.costs.restart),
        seconds(a.costs.upload)
    );
    match (m.interval_seconds, a.goodput_current) {
        (Some(i), Some(g)) => println!(
            "  interval now     {} (median, from {} checkpoints): expected goodput {:.1}%",
            seconds(i),
            m.periodic_checkpoints,
            g * 100.0
        ),
        _ => println!("  interval now     unknown (fewer than two periodic checkpoints in any attempt)"),
    }
    let (lo, hi) = a.range_seconds;
    println!(
        "  recommended      {}{} ({pct}% range {} to {}): expected goodput {:.1}%",
        seconds(a.recommended_seconds),
        if m.lossy_evictions == 0 { " or longer" } else { "" },
        seconds(lo),
        hi.map(seconds).unwrap_or_else(|| "unbounded".into()),
        a.goodput_recommended * 100.0
    );
    if let (Some(y), Some(d)) = (a.young_seconds, a.daly_seconds) {
        println!("  closed forms     Young {}, Daly {}", seconds(y), seconds(d));
    }
    println!("  measured goodput {:.1}% (useful training over the attempts' wall time)", a.goodput_measured * 100.0);
    if m.lossy_evictions == 0 {
        println!("  no eviction has lost work yet: the interval only guards against kills without warning, so the advice is the shortest interval the evidence can justify");
    } else if m.lossy_evictions < 5 {
        println!("  only {} eviction(s) lost work: the range is wide, and narrows as evictions accumulate", m.lossy_evictions);
    }
    if !m.includes_trainer_save && a.costs.checkpoint == m.checkpoint_seconds.unwrap_or(f64::NAN) {
        println!("  the trainer does not report save_seconds: the cost misses its own save time (add --checkpoint-cost, or commit with --meta save_seconds=...)");
    }
}
