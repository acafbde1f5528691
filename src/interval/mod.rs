//! How often to checkpoint: what a run's own records say about its evictions and its
//! checkpoint costs (`measure`), and the interval that follows, with the expected goodput
//! and how far the few evictions seen let one trust it (`advise`). `baton advise` shows
//! it; `baton inspect RUN` gives its one-line summary.

pub mod model;

use serde::Serialize;

use crate::attempt::Records;
use crate::identity::RunId;
use crate::manifest::{Manifest, Reason};
use crate::store::Store;
use crate::timeline::{self, AttemptRecords, AttemptRow, Point};
use model::{Costs, Rate};

pub use crate::timeline::SAVE_SECONDS_META;

/// What the records of one run say.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub attempts: usize,
    /// Seconds the attempts ran, from their start to the eviction signal or the exit:
    /// the time in which evictions could strike.
    pub running_seconds: f64,
    pub evictions: u64,
    /// Evictions after which no checkpoint was committed: hard kills, and soft ones the
    /// trainer did not save on. Only these lose the work since the last checkpoint, so
    /// only these make the interval matter.
    pub lossy_evictions: u64,
    pub work_lost_seconds: f64,
    /// Checkpoints committed while training (not on eviction, not the final one).
    pub periodic_checkpoints: usize,
    /// Median seconds training stopped for a checkpoint: baton's capture, plus the
    /// trainer's own save when it reports `save_seconds`.
    pub checkpoint_seconds: Option<f64>,
    /// Whether `checkpoint_seconds` includes the trainer's save (else baton saw only its capture).
    pub includes_trainer_save: bool,
    /// Median seconds of training between two periodic checkpoints of one attempt.
    pub interval_seconds: Option<f64>,
    pub restore_seconds: f64,
    pub upload_seconds: f64,
    /// Mean seconds from the signal to the end of an attempt that saved on its eviction.
    pub saved_eviction_seconds: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) })
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The rows of a run's timeline from its records and manifests (as `inspect` shows them).
pub fn timeline_of(records: &[Records], manifests: &[Manifest]) -> (Vec<AttemptRow>, timeline::Totals, f64) {
    let attempts: Vec<AttemptRecords> =
        records.iter().filter_map(|r| Some(AttemptRecords { start: r.start.clone()?, end: r.end.clone() })).collect();
    let points: Vec<Point> = manifests.iter().map(Point::from).collect();
    let (rows, mut totals) = timeline::compute(&[], &attempts, &points);
    totals.add_sizes(manifests);
    let t0 = attempts.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
    (rows, totals, t0)
}

pub fn measure(rows: &[AttemptRow], manifests: &[Manifest]) -> Measured {
    let periodic: Vec<&Manifest> = manifests.iter().filter(|m| matches!(m.reason, Reason::Commit | Reason::CheckpointExit)).collect();
    let trainer_save =
        |m: &Manifest| m.meta.get(SAVE_SECONDS_META).and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0);
    let includes_trainer_save = !periodic.is_empty() && periodic.iter().all(|m| trainer_save(m).is_some());
    // Without periodic checkpoints, the eviction and final ones still show what a
    // capture costs.
    let costed: Vec<&Manifest> = if periodic.is_empty() { manifests.iter().collect() } else { periodic.clone() };
    let checkpoint_seconds = median(costed.iter().map(|m| m.sizes.capture_seconds + trainer_save(m).unwrap_or(0.0)).collect());
    let mut gaps = Vec::new();
    for r in rows {
        let mut times: Vec<f64> = periodic.iter().filter(|m| m.attempt == r.attempt).map(|m| m.created).collect();
        times.sort_by(f64::total_cmp);
        gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
    }
    // Two commits are an interval of training and one checkpoint apart.
    let interval_seconds = median(gaps).map(|g| (g - checkpoint_seconds.unwrap_or(0.0)).max(0.0));
    let evicted: Vec<&AttemptRow> = rows.iter().filter(|r| r.evicted_at.is_some()).collect();
    let saved: Vec<f64> = evicted.iter().filter(|r| r.saved_on_eviction).map(|r| (r.duration - r.running_seconds).max(0.0)).collect();
    let restores: Vec<f64> = rows.iter().filter(|r| r.restored_seq.is_some()).map(|r| r.restore_seconds).collect();
    Measured {
        attempts: rows.len(),
        running_seconds: rows.iter().map(|r| r.running_seconds).sum(),
        evictions: evicted.len() as u64,
        lossy_evictions: evicted.iter().filter(|r| !r.saved_on_eviction).count() as u64,
        work_lost_seconds: rows.iter().map(|r| r.work_lost).sum(),
        periodic_checkpoints: periodic.len(),
        checkpoint_seconds,
        includes_trainer_save,
        interval_seconds,
        restore_seconds: mean(&restores),
        upload_seconds: median(costed.iter().map(|m| m.sizes.upload_seconds).collect()).unwrap_or(0.0),
        saved_eviction_seconds: mean(&saved),
    }
}

/// The recommendation, and what it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    pub measured: Measured,
    pub confidence: f64,
    /// All evictions per second of running.
    pub eviction_rate: Rate,
    /// Evictions that lost work, per second of running: the rate the interval answers to.
    pub lossy_rate: Rate,
    pub costs: Costs,
    /// The interval that maximises the expected goodput at the measured lossy rate; when
    /// no eviction has lost work yet, the one for the high end of its interval (the
    /// shortest the data can justify; longer is fine while evictions stay saved).
    pub recommended_seconds: f64,
    /// The best interval at the high and low ends of the lossy rate's interval. No upper
    /// end when no eviction lost work: then there is no evidence the interval matters.
    pub range_seconds: (f64, Option<f64>),
    /// The closed forms for comparison (at the measured lossy rate, when there is one).
    pub young_seconds: Option<f64>,
    pub daly_seconds: Option<f64>,
    pub goodput_recommended: f64,
    pub goodput_current: Option<f64>,
    /// The run's measured goodput: useful training over slot time.
    pub goodput_measured: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdviceError {
    #[error("the run has no attempt records with a running time, so there is nothing to measure evictions against")]
    NoRunningTime,
    #[error("the run has no checkpoint, so the checkpoint cost is unknown; give it (e.g. --checkpoint-cost 30s)")]
    NoCheckpointCost,
}

/// `checkpoint_cost` overrides the measured cost (which misses whatever the trainer spends
/// writing its files when it does not report `save_seconds`).
pub fn advise(
    rows: &[AttemptRow],
    totals: &timeline::Totals,
    manifests: &[Manifest],
    confidence: f64,
    checkpoint_cost: Option<f64>,
) -> Result<Advice, AdviceError> {
    let measured = measure(rows, manifests);
    if measured.running_seconds <= 0.0 {
        return Err(AdviceError::NoRunningTime);
    }
    let c = checkpoint_cost.or(measured.checkpoint_seconds).ok_or(AdviceError::NoCheckpointCost)?;
    let costs = Costs {
        checkpoint: c,
        restart: measured.restore_seconds,
        upload: measured.upload_seconds,
        saved_eviction: measured.saved_eviction_seconds,
    };
    let t = measured.running_seconds;
    let eviction_rate = model::poisson_rate(measured.evictions, t, confidence);
    let lossy_rate = model::poisson_rate(measured.lossy_evictions, t, confidence);
    let saved = (measured.evictions - measured.lossy_evictions) as f64 / t;
    let best = |rate: f64| model::best_interval(&costs, rate, saved);
    // `high` is finite and positive for any count, so this always has an answer.
    let shortest = best(lossy_rate.high).unwrap_or(f64::INFINITY);
    let (recommended, at_rate) = match best(lossy_rate.per_second) {
        Some(b) => (b, lossy_rate.per_second),
        None => (shortest, lossy_rate.high),
    };
    let m = (lossy_rate.per_second > 0.0).then(|| 1.0 / lossy_rate.per_second);
    Ok(Advice {
        confidence,
        eviction_rate,
        lossy_rate,
        recommended_seconds: recommended,
        range_seconds: (shortest, best(lossy_rate.low)),
        young_seconds: m.map(|m| model::young(c, m)),
        daly_seconds: m.map(|m| model::daly(c, m)),
        goodput_recommended: model::goodput(recommended, &costs, at_rate, saved),
        goodput_current: measured.interval_seconds.map(|i| model::goodput(i, &costs, at_rate, saved)),
        goodput_measured: totals.goodput,
        costs,
        measured,
    })
}

/// A run's attempt records and its manifests that can be read (a damaged manifest is
/// left out: `inspect` and `verify` report it), read a few at a time.
pub async fn load(store: &Store, run: &RunId) -> crate::store::Result<(Vec<Records>, Vec<Manifest>)> {
    use futures::StreamExt;
    let records = crate::attempt::load_all(store, run).await?;
    let seqs = store.list_manifests(run).await?;
    let manifests: Vec<Manifest> = futures::stream::iter(seqs)
        .map(|seq| async move { crate::restore::load_manifest(store, run, seq).await.ok() })
        .buffered(16)
        .filter_map(|m| async move { m })
        .collect()
        .await;
    Ok((records, manifests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::{EndRecord, Ending, StartRecord};
    use crate::htcondor::JobIds;
    use crate::manifest::{Sizes, FORMAT};

    fn start(n: u64, started: f64, restore: f64, restored: Option<u64>) -> Option<StartRecord> {
        Some(crate::attempt::samples::start(n, started, restore, restored))
    }

    fn end(n: u64, ended: f64, ending: Ending, evicted_at: Option<f64>) -> Option<EndRecord> {
        Some(crate::attempt::samples::end(n, ended, ending, evicted_at, 0.5))
    }

    fn manifest(seq: u64, attempt: u64, created: f64, reason: Reason, save: Option<&str>) -> Manifest {
        Manifest {
            format: FORMAT,
            run_id: "r".into(),
            seq,
            created,
            reason,
            attempt,
            epoch: Some(seq),
            step: None,
            meta: save.map(|s| [(SAVE_SECONDS_META.to_string(), s.to_string())].into()).unwrap_or_default(),
            host: "h".into(),
            device: "cpu".into(),
            device_info: None,
            htcondor: JobIds::default(),
            writer: "w".into(),
            files: vec![],
            sizes: Sizes { capture_seconds: 0.5, upload_seconds: 1.0, ..Default::default() },
            part: None,
        }
    }

    /// Worked by hand. Attempt 1 starts at 0, commits every 12 s from 10 (training 10 s,
    /// then a 2 s checkpoint: 0.5 s capture + 1.5 s save), is killed without a record and
    /// attempt 2 starts at 40: running 40 s, one lossy eviction, lost 40 - 34 = 6 s.
    /// Attempt 2 restores 2 s, commits at 50, gets SIGTERM at 60, saves at 61 and ends at
    /// 63: running 20 s, a saved eviction costing 3 s. Attempt 3 restores 2 s and exits at
    /// 100 (running 37 s, flush 0.5 s).
    #[test]
    fn measures_a_hand_computed_run_and_advises_from_it() {
        use Reason::*;
        let records = vec![
            Records { attempt: 1, start: start(1, 0.0, 0.0, None), end: None },
            Records { attempt: 2, start: start(2, 40.0, 2.0, Some(3)), end: end(2, 63.0, Ending::Evicted, Some(60.0)) },
            Records { attempt: 3, start: start(3, 63.0, 2.0, Some(5)), end: end(3, 100.5, Ending::Completed, None) },
        ];
        let manifests = vec![
            manifest(1, 1, 10.0, Commit, Some("1.5")),
            manifest(2, 1, 22.0, Commit, Some("1.5")),
            manifest(3, 1, 34.0, Commit, Some("1.5")),
            manifest(4, 2, 50.0, Commit, Some("1.5")),
            manifest(5, 2, 61.0, Eviction, None),
            manifest(6, 3, 100.0, Final, None),
        ];
        let (rows, totals, t0) = timeline_of(&records, &manifests);
        assert_eq!(t0, 0.0);
        let m = measure(&rows, &manifests);
        assert_eq!((m.attempts, m.evictions, m.lossy_evictions, m.periodic_checkpoints), (3, 2, 1, 4));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(m.running_seconds, 40.0 + 20.0 + 37.0), "{m:?}");
        assert!(close(m.work_lost_seconds, 6.0), "{m:?}");
        assert_eq!(m.checkpoint_seconds, Some(2.0));
        assert!(m.includes_trainer_save);
        assert_eq!(m.interval_seconds, Some(10.0));
        assert!(close(m.restore_seconds, 2.0) && close(m.upload_seconds, 1.0) && close(m.saved_eviction_seconds, 3.0), "{m:?}");

        let a = advise(&rows, &totals, &manifests, 0.9, None).unwrap();
        assert!(close(a.lossy_rate.per_second, 1.0 / 97.0) && close(a.eviction_rate.per_second, 2.0 / 97.0));
        let costs = Costs { checkpoint: 2.0, restart: 2.0, upload: 1.0, saved_eviction: 3.0 };
        assert_eq!(a.costs, costs);
        let saved = 1.0 / 97.0;
        assert!(close(a.recommended_seconds, model::best_interval(&costs, 1.0 / 97.0, saved).unwrap()));
        // The range comes from the rate's interval: the high rate gives the short end.
        assert!(a.range_seconds.0 < a.recommended_seconds && a.recommended_seconds < a.range_seconds.1.unwrap());
        assert!(close(a.range_seconds.0, model::best_interval(&costs, a.lossy_rate.high, saved).unwrap()));
        assert!(close(a.young_seconds.unwrap(), (2.0f64 * 2.0 * 97.0).sqrt()));
        assert!(a.goodput_recommended >= a.goodput_current.unwrap());
        // A cost given by hand replaces the measured one.
        let dear = advise(&rows, &totals, &manifests, 0.9, Some(20.0)).unwrap();
        assert!(dear.recommended_seconds > 2.0 * a.recommended_seconds);

        // Without the lossy eviction (attempt 1 saved too), no evidence the interval
        // matters: the advice is the shortest interval the rate's high end justifies.
        let mut saved_all = manifests.clone();
        saved_all.push(manifest(7, 1, 40.0, Eviction, None));
        let records = vec![
            Records { attempt: 1, start: start(1, 0.0, 0.0, None), end: end(1, 40.5, Ending::Evicted, Some(39.0)) },
            records[1].clone(),
            records[2].clone(),
        ];
        let (rows, totals, _) = timeline_of(&records, &saved_all);
        let a = advise(&rows, &totals, &saved_all, 0.9, None).unwrap();
        assert_eq!((a.measured.evictions, a.measured.lossy_evictions), (2, 0));
        assert_eq!(a.range_seconds.1, None);
        assert!(close(a.recommended_seconds, a.range_seconds.0));
        assert!(a.young_seconds.is_none());
    }
}
