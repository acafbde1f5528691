//! A run's timeline, computed from what happened: the attempt records and checkpoints in
//! the store, plus, under `baton simulate`, what the simulator itself observed (which slot
//! each attempt had, and when it pulled the plug on a hard eviction, which leaves no
//! record). `simulate` reports it, `inspect` shows it for real runs, `advise` measures
//! from it, and `svg` draws it.

pub mod svg;

use serde::Serialize;

use crate::attempt::{EndRecord, Ending, StartRecord};
use crate::manifest::Manifest;
use crate::simulate::schedule::Kind;

/// What the timeline needs of a checkpoint. From a manifest; for the overview of many
/// runs, from the store's listing and the attempts' end records, so that listing a store
/// does not read every manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub seq: u64,
    pub attempt: u64,
    /// When it was committed (Unix seconds).
    pub created: f64,
    pub epoch: Option<u64>,
    pub step: Option<u64>,
    /// Seconds training stood still for it: baton's capture, plus the trainer's save when
    /// it reports one (`save_seconds`); 0 when unknown.
    pub cost: f64,
}

/// The metadata key a trainer may set on a commit (`baton commit --meta
/// save_seconds=1.8`) to say how long writing the checkpoint files took it; baton only
/// sees its own capture.
pub const SAVE_SECONDS_META: &str = "save_seconds";

/// The trainer's own save time, when it reported one.
pub fn trainer_save_seconds(m: &Manifest) -> Option<f64> {
    m.meta.get(SAVE_SECONDS_META).and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0)
}

impl From<&Manifest> for Point {
    fn from(m: &Manifest) -> Point {
        let cost = m.sizes.capture_seconds.max(0.0) + trainer_save_seconds(m).unwrap_or(0.0);
        Point { seq: m.seq, attempt: m.attempt, created: m.created, epoch: m.epoch, step: m.step, cost }
    }
}

/// What the simulator saw of one attempt.
#[derive(Debug, Clone)]
pub struct Observed {
    pub attempt: u64,
    pub slot: String,
    /// When the simulator started the attempt's `baton run` (Unix seconds).
    pub spawned_at: f64,
    /// The eviction applied to this attempt, and when (Unix seconds).
    pub eviction: Option<(Kind, f64)>,
    /// When the attempt's process was gone (Unix seconds).
    pub gone_at: f64,
    /// On several nodes: the attempt was not evicted but stopped because another node was
    /// (it saved the same step, or its peer vanished): its work since the last checkpoint
    /// is lost like an evicted attempt's, but it is no eviction of its own.
    pub peer_lost: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: u64,
    /// On several nodes (`simulate --nodes`): which node the attempt was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    pub slot: String,
    pub device: String,
    /// Seconds since the first attempt started.
    pub start: f64,
    pub duration: f64,
    /// Seconds from the start until the eviction signal (or the exit): how long the
    /// attempt was exposed to eviction.
    pub running_seconds: f64,
    pub ending: String,
    pub restored_seq: Option<u64>,
    pub restored_epoch: Option<u64>,
    pub committed: Vec<u64>,
    /// Seconds of training this attempt did after its last durable checkpoint, lost to
    /// its eviction and redone by the next attempt.
    pub work_lost: f64,
    /// Evicted, and a checkpoint was committed after the signal (the trainer saved on it),
    /// so the interval between checkpoints did not matter to this eviction.
    pub saved_on_eviction: bool,
    pub restore_seconds: f64,
    pub flush_seconds: Option<f64>,
    /// Seconds since the first attempt started.
    pub evicted_at: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub attempts: usize,
    pub evictions: usize,
    pub soft: usize,
    pub hard: usize,
    pub wall_seconds: f64,
    pub useful_seconds: f64,
    pub goodput: f64,
    pub work_lost_seconds: f64,
    pub work_lost_per_eviction: f64,
    pub restore_seconds: f64,
    pub flush_seconds: f64,
    pub logical_bytes: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
}

pub struct AttemptRecords {
    pub start: StartRecord,
    pub end: Option<EndRecord>,
}

/// Rows and totals. `records` are every attempt of the run with a start record, oldest
/// first; `points` every checkpoint of the run in the store. Bytes are not counted here
/// (`Totals::add_sizes`), so that an overview can build a timeline without the manifests.
pub fn compute(observed: &[Observed], records: &[AttemptRecords], points: &[Point]) -> (Vec<AttemptRow>, Totals) {
    let t0 = records.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
    let t0 = if t0.is_finite() { t0 } else { observed.iter().map(|o| o.spawned_at).fold(f64::INFINITY, f64::min) };
    let mut rows = Vec::new();
    let mut totals = Totals::default();
    let mut last_end = t0;
    for (i, rec) in records.iter().enumerate() {
        let s = &rec.start;
        let obs = observed.iter().find(|o| o.attempt == s.attempt);
        let mine: Vec<&Point> = points.iter().filter(|m| m.attempt == s.attempt).collect();
        let train_start = s.started + s.restore_seconds;
        let last_sign_of_life = mine.iter().map(|m| m.created).fold(train_start, f64::max);
        // An attempt of a real run that left no end record but was followed by another
        // was killed without warning (SIGKILL at the end of the vacate window, a lost
        // machine). When is not recorded: the next start is the latest it can have been.
        let next_start = records.get(i + 1).map(|r| r.start.started).filter(|_| rec.end.is_none() && obs.is_none());
        // When training stopped: the eviction signal (or the plug pulled), else the
        // command's exit (the end record's time less the final flush).
        let (stopped, end) = match (&rec.end, obs.and_then(|o| o.eviction)) {
            (Some(e), _) if e.evicted_at.is_some() => (e.evicted_at.unwrap_or(e.ended), e.ended),
            (Some(e), _) => (e.ended - e.flush_seconds.unwrap_or(0.0), e.ended),
            (None, Some((_, at))) => (at, obs.map(|o| o.gone_at).unwrap_or(at)),
            (None, None) => {
                let gone = obs.map(|o| o.gone_at).or(next_start).unwrap_or(last_sign_of_life);
                (gone, gone)
            }
        };
        let unwarned = rec.end.is_none() && next_start.is_some();
        let evicted = rec.end.as_ref().is_some_and(|e| e.ending == Ending::Evicted)
            || (rec.end.is_none() && obs.is_some_and(|o| o.eviction.is_some()))
            || unwarned;
        let last_save = mine.iter().map(|m| m.created).fold(train_start, f64::max);
        let peer_lost = !evicted && obs.is_some_and(|o| o.peer_lost);
        let work_lost = if evicted || peer_lost { (stopped - last_save).max(0.0) } else { 0.0 };
        // Time spent writing the checkpoints made while training is not training.
        let saving: f64 = mine.iter().filter(|m| m.created <= stopped).map(|m| m.cost).sum();
        let useful = ((stopped - train_start) - work_lost - saving).max(0.0);
        let restored_epoch = s.restored_seq.and_then(|seq| points.iter().find(|m| m.seq == seq)).and_then(|m| m.epoch);
        let ending = match (&rec.end, obs.and_then(|o| o.eviction)) {
            (_, Some((Kind::Hard, _))) => "hard-evicted".to_string(),
            (Some(e), Some((Kind::Soft, _))) if e.ending == Ending::Evicted => "evicted".to_string(),
            (Some(_), _) if peer_lost => "peer-stopped".to_string(),
            (Some(e), _) => e.ending.to_string(),
            (None, _) if unwarned => "killed (no record)".to_string(),
            (None, _) => "lost (no record)".to_string(),
        };
        let hard = matches!(obs.and_then(|o| o.eviction), Some((Kind::Hard, _))) || unwarned;
        if evicted {
            totals.evictions += 1;
            match hard {
                true => totals.hard += 1,
                false => totals.soft += 1,
            }
        }
        totals.useful_seconds += useful;
        totals.work_lost_seconds += work_lost;
        totals.restore_seconds += s.restore_seconds;
        let flush = rec.end.as_ref().and_then(|e| e.flush_seconds);
        totals.flush_seconds += flush.unwrap_or(0.0);
        last_end = last_end.max(end);
        rows.push(AttemptRow {
            attempt: s.attempt,
            node: None,
            slot: obs.map(|o| o.slot.clone()).unwrap_or_else(|| s.host.clone()),
            device: s.device.clone(),
            start: s.started - t0,
            duration: end - s.started,
            running_seconds: (stopped - s.started).max(0.0),
            ending,
            restored_seq: s.restored_seq,
            restored_epoch,
            committed: mine.iter().map(|m| m.seq).collect(),
            work_lost,
            saved_on_eviction: evicted && mine.iter().any(|m| m.created >= stopped),
            restore_seconds: s.restore_seconds,
            flush_seconds: flush,
            evicted_at: if evicted { Some(stopped - t0) } else { None },
        });
    }
    // An attempt the simulator evicted before its `baton run` wrote a start record (a hard
    // eviction right after the previous attempt's slow exit, say) still happened: it
    // counts as an attempt and an eviction, with no training in it.
    for o in observed.iter().filter(|o| !records.iter().any(|r| r.start.attempt == o.attempt)) {
        let Some((kind, at)) = o.eviction else { continue };
        totals.evictions += 1;
        match kind {
            Kind::Hard => totals.hard += 1,
            Kind::Soft => totals.soft += 1,
        }
        last_end = last_end.max(o.gone_at);
        rows.push(AttemptRow {
            attempt: 0,
            node: None,
            slot: o.slot.clone(),
            device: String::new(),
            start: o.spawned_at - t0,
            duration: (o.gone_at - o.spawned_at).max(0.0),
            running_seconds: (at - o.spawned_at).max(0.0),
            ending: format!("{} before it started (no record)", if kind == Kind::Hard { "hard-evicted" } else { "evicted" }),
            restored_seq: None,
            restored_epoch: None,
            committed: Vec::new(),
            work_lost: 0.0,
            saved_on_eviction: false,
            restore_seconds: 0.0,
            flush_seconds: None,
            evicted_at: Some(at - t0),
        });
    }
    rows.sort_by(|a, b| a.start.total_cmp(&b.start));
    totals.attempts = rows.len();
    totals.wall_seconds = if rows.is_empty() { 0.0 } else { last_end - t0 };
    totals.goodput = if totals.wall_seconds > 0.0 { totals.useful_seconds / totals.wall_seconds } else { 0.0 };
    totals.work_lost_per_eviction = if totals.evictions > 0 { totals.work_lost_seconds / totals.evictions as f64 } else { 0.0 };
    (rows, totals)
}

impl Totals {
    /// Add what the checkpoints in `manifests` brought to the store.
    pub fn add_sizes(&mut self, manifests: &[Manifest]) {
        for m in manifests {
            self.logical_bytes += m.sizes.logical_bytes;
            self.new_bytes += m.sizes.new_bytes;
            self.stored_bytes += m.sizes.stored_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::htcondor::JobIds;
    use crate::manifest::{Reason, Sizes, FORMAT};

    use crate::attempt::samples::{end, start};

    fn manifest(seq: u64, attempt: u64, created: f64, epoch: u64) -> Manifest {
        Manifest {
            format: FORMAT,
            run_id: "r".into(),
            seq,
            created,
            reason: Reason::Commit,
            attempt,
            epoch: Some(epoch),
            step: None,
            meta: Default::default(),
            host: "h".into(),
            device: "cpu".into(),
            device_info: None,
            htcondor: JobIds::default(),
            writer: "w".into(),
            files: vec![],
            sizes: Sizes { logical_bytes: 100, new_bytes: 60, stored_bytes: 50, ..Default::default() },
            part: None,
        }
    }

    /// Worked by hand:
    /// attempt 1: starts at 100, restores for 1 s (trains from 101), saves at 111 and 121,
    ///   soft eviction at 126, flushed and gone at 128: lost 126-121 = 5, useful 25-5 = 20.
    /// attempt 2: starts 128.5, restores 2 s (130.5), saves at 135, hard-killed at 140 (no
    ///   end record): lost 140-135 = 5, useful 9.5-5 = 4.5.
    /// attempt 3: starts 141, restores 1 s (142), exits at 158, final flush 2 s, ends 160:
    ///   useful 16.
    /// wall 160-100 = 60, useful 40.5, goodput 0.675, lost per eviction 10/2 = 5.
    #[test]
    fn matches_a_hand_computed_case() {
        let records = vec![
            AttemptRecords { start: start(1, 100.0, 1.0, None), end: Some(end(1, 128.0, Ending::Evicted, Some(126.0), 1.5)) },
            AttemptRecords { start: start(2, 128.5, 2.0, Some(2)), end: None },
            AttemptRecords { start: start(3, 141.0, 1.0, Some(3)), end: Some(end(3, 160.0, Ending::Completed, None, 2.0)) },
        ];
        let observed = vec![
            Observed {
                attempt: 1,
                slot: "t4-16gb".into(),
                spawned_at: 99.9,
                eviction: Some((Kind::Soft, 126.0)),
                gone_at: 128.0,
                peer_lost: false,
            },
            Observed {
                attempt: 2,
                slot: "cpu".into(),
                spawned_at: 128.4,
                eviction: Some((Kind::Hard, 140.0)),
                gone_at: 140.1,
                peer_lost: false,
            },
            Observed { attempt: 3, slot: "a100-40gb".into(), spawned_at: 140.9, eviction: None, gone_at: 160.0, peer_lost: false },
        ];
        let manifests = vec![manifest(1, 1, 111.0, 1), manifest(2, 1, 121.0, 2), manifest(3, 2, 135.0, 3), manifest(4, 3, 159.0, 5)];
        let points: Vec<Point> = manifests.iter().map(Point::from).collect();
        let (rows, mut t) = compute(&observed, &records, &points);
        t.add_sizes(&manifests);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(rows[0].work_lost, 5.0), "{}", rows[0].work_lost);
        assert!(close(rows[1].work_lost, 5.0), "{}", rows[1].work_lost);
        assert!(close(rows[2].work_lost, 0.0));
        assert!(close(t.wall_seconds, 60.0));
        assert!(close(t.useful_seconds, 40.5), "{}", t.useful_seconds);
        assert!(close(t.goodput, 0.675), "{}", t.goodput);
        assert!(close(t.work_lost_per_eviction, 5.0));
        assert_eq!((t.evictions, t.soft, t.hard), (2, 1, 1));
        assert_eq!(rows[1].ending, "hard-evicted");
        assert_eq!(rows[1].restored_epoch, Some(2));
        assert_eq!(rows[0].committed, vec![1, 2]);
        assert_eq!(t.stored_bytes, 200);
        // Time spent saving is not training: checkpoint 2 stopped training for 0.5 s of
        // capture and the 1.0 s the trainer says its save took.
        let mut costly = manifests.clone();
        costly[1].sizes.capture_seconds = 0.5;
        costly[1].meta.insert(SAVE_SECONDS_META.into(), "1.0".into());
        let points: Vec<Point> = costly.iter().map(Point::from).collect();
        let (_, t) = compute(&observed, &records, &points);
        assert!(close(t.useful_seconds, 39.0), "{}", t.useful_seconds);
    }

    /// The simulator pulled the plug on an attempt before its `baton run` wrote a start
    /// record (the previous attempt took long to leave, so the trace's next eviction was
    /// already due): the report still counts that attempt and its hard eviction.
    #[test]
    fn an_attempt_evicted_before_it_left_a_record_still_counts() {
        let records = vec![
            AttemptRecords { start: start(1, 100.0, 1.0, None), end: Some(end(1, 128.0, Ending::Evicted, Some(126.0), 1.5)) },
            AttemptRecords { start: start(2, 128.6, 1.0, Some(2)), end: Some(end(2, 150.0, Ending::Completed, None, 0.5)) },
        ];
        let observed = vec![
            Observed {
                attempt: 1,
                slot: "cpu".into(),
                spawned_at: 99.9,
                eviction: Some((Kind::Soft, 126.0)),
                gone_at: 128.0,
                peer_lost: false,
            },
            Observed {
                attempt: 0,
                slot: "cpu".into(),
                spawned_at: 128.1,
                eviction: Some((Kind::Hard, 128.2)),
                gone_at: 128.3,
                peer_lost: false,
            },
            Observed { attempt: 2, slot: "cpu".into(), spawned_at: 128.5, eviction: None, gone_at: 150.0, peer_lost: false },
        ];
        let points = vec![Point::from(&manifest(1, 1, 111.0, 1)), Point::from(&manifest(2, 2, 149.0, 3))];
        let (rows, t) = compute(&observed, &records, &points);
        assert_eq!((t.attempts, t.evictions, t.soft, t.hard), (3, 2, 1, 1), "{t:?}");
        assert_eq!(rows.iter().map(|r| r.attempt).collect::<Vec<_>>(), vec![1, 0, 2]);
        assert!(rows[1].ending.contains("hard-evicted before it started"), "{}", rows[1].ending);
        assert!((t.wall_seconds - 50.0).abs() < 1e-9, "{}", t.wall_seconds);
    }
}
