//! `baton simulate --nodes N`: a run on several nodes, evicted one node at a time.
//!
//! Every node is its own `baton run --nodes N --node-rank K` on its own simulated slot,
//! as the jobs of `queue N` or a DAG are (docs/htcondor.md, section 6). Each eviction of
//! the schedule hits one node, drawn from the seed; the other nodes react as they would
//! on a pool: their trainers stop at the same step (the evicted node's stop flag is
//! all-reduced) or fail when their peer vanishes, their batons flush and exit, and the
//! simulator starts every node that exited on a new slot, as `max_retries` or a DAG's
//! `RETRY` would. The nodes meet again through the store's rendezvous.

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::launch::{clear_slot, kill_family, spawn_baton};
use super::schedule::Kind;
use super::{evict, slots, verify, Options, Outcome, Reference, Report, Simulation};
use crate::attempt;
use crate::identity::RunId;
use crate::nodes;
use crate::store::Store;
use crate::timeline::{self, AttemptRecords, AttemptRow, Observed, Point, Totals};

/// The flags that make a `baton run` node `node` of `nodes`. Every node runs on this
/// machine, so node 0 publishes the loopback address (a routed address may not exist in
/// a sandbox without a network).
fn node_flags(nodes: u32, node: u32) -> Vec<String> {
    ["--nodes", &nodes.to_string(), "--node-rank", &node.to_string(), "--master-addr", "127.0.0.1"].map(String::from).to_vec()
}

/// One node's `baton run` while it runs.
struct Live {
    child: Child,
    dir: PathBuf,
    slot: String,
    spawned_at: f64,
    eviction: Option<(Kind, f64)>,
    kill_at: Option<Instant>,
}

/// What the simulator saw of every node: per node, the totals the report prints.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTotals {
    pub node: u32,
    pub attempts: usize,
    pub evictions: usize,
    pub soft: usize,
    pub hard: usize,
    /// Seconds of training of this node that were kept (not lost to an eviction).
    pub useful_seconds: f64,
    pub work_lost_seconds: f64,
}

/// The run's checkpoints in parts: complete ones (every node's part durable and
/// consistent) and incomplete ones (never restored).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointCounts {
    pub complete: usize,
    pub incomplete: usize,
}

impl Simulation<'_> {
    /// Start node `node`'s `baton run` on a new slot: the `n`th slot of the simulation,
    /// the node's `starts`th start (each node is a job of its own, with its own
    /// NumJobStarts).
    fn spawn_node(&mut self, node: u32, n: u64, starts: u64) -> anyhow::Result<Live> {
        let opts = self.opts;
        let slot = &opts.slots[self.rng.below(opts.slots.len())];
        let dir = opts.work_dir.join(format!("slot-{n:03}-node{node}-{}", slot.name));
        let _ = std::fs::remove_dir_all(&dir);
        let materialized = slots::materialize(slot, starts, self.rng.next_u64(), &dir, &self.job, opts.vacate_window)?;
        let mut env = materialized.env;
        env.extend(opts.command_env.iter().cloned());
        if let Some(r) = &opts.run_id {
            env.push(("BATON_RUN_ID".into(), r.to_string()));
        }
        self.progress.line(format!(
            "simulate: node {node}: attempt on {} ({}) at {:.1} s",
            slot.name,
            slot.device(),
            self.start.elapsed().as_secs_f64()
        ));
        let child = spawn_baton(opts, &opts.store_url, &node_flags(opts.nodes, node), &env, &dir)?;
        Ok(Live { child, dir, slot: slot.name.to_string(), spawned_at: attempt::now(), eviction: None, kill_at: None })
    }

    /// Whether the next eviction of the schedule is due. A trace's times count from the
    /// start of the simulation; a generated schedule's gaps count running time, from the
    /// moment every node was running again after the previous eviction (`clock`).
    fn due(&self, clock: Instant) -> Option<Kind> {
        let events = &self.opts.schedule.events;
        let e = events.get(self.next_event)?;
        let due = if self.opts.schedule.per_attempt {
            let prev = self.next_event.checked_sub(1).map(|i| events[i].at).unwrap_or(0.0);
            clock.elapsed().as_secs_f64() >= e.at - prev
        } else {
            self.start.elapsed().as_secs_f64() >= e.at
        };
        due.then_some(e.kind)
    }

    /// Every node runs until the command completes on all of them, fails on its own, or
    /// a node reaches `max_attempts`. A node that exits after an eviction, or with an
    /// error after another node was disrupted (its peer was evicted or left), is started
    /// again on a new slot; one that exits with an error while no other node was
    /// disrupted failed on its own, which ends the simulation as on one node.
    pub(super) async fn run_nodes(&mut self) -> anyhow::Result<Outcome> {
        let opts = self.opts;
        let count = opts.nodes as usize;
        let mut out = Outcome::default();
        let mut live: Vec<Option<Live>> = (0..count).map(|_| None).collect();
        let mut done = vec![false; count];
        let mut attempts = vec![0u64; count];
        let mut spawns = 0u64;
        let mut clearing = Vec::new();
        // When the last eviction was applied or a node exited with an error: a node's
        // error exit after that, by an attempt started before it, is its peer's doing.
        let mut disrupted: Option<f64> = None;
        // The running clock of a generated schedule (`due`): none while a node is down.
        let mut clock: Option<Instant> = None;
        'sim: loop {
            for k in 0..count {
                if live[k].is_some() || done[k] {
                    continue;
                }
                if attempts[k] >= opts.max_attempts {
                    out.failure = Some(format!(
                        "gave up after {} attempts of node {k}: evictions come faster than the command makes progress (raise --mean-interval or --max-attempts)",
                        attempts[k]
                    ));
                    break 'sim;
                }
                attempts[k] += 1;
                spawns += 1;
                live[k] = Some(self.spawn_node(k as u32, spawns, attempts[k])?);
            }
            if self.interrupted.load(Ordering::SeqCst) {
                stop_all(&mut live);
                self.progress.finish();
                anyhow::bail!("interrupted; the slots are in {}", opts.work_dir.display());
            }
            for k in 0..count {
                let Some(l) = live[k].as_mut() else { continue };
                let Some(status) = l.child.try_wait()? else { continue };
                let Some(l) = live[k].take() else { continue };
                let now = attempt::now();
                let peer = l.eviction.is_none() && status.code() != Some(0) && disrupted.is_some_and(|t| t >= l.spawned_at);
                out.observed.push(Observed {
                    attempt: 0,
                    slot: l.slot.clone(),
                    spawned_at: l.spawned_at,
                    eviction: l.eviction,
                    gone_at: now,
                    peer_lost: peer,
                });
                out.nodes.push(k as u32);
                if status.code() == Some(0) {
                    done[k] = true;
                    if k == 0 {
                        out.last_stdout = l.dir.join("stdout.log");
                    }
                    continue;
                }
                if l.eviction.is_none() && !peer {
                    out.failure = Some(format!(
                        "node {k} failed ({status}) without being evicted, and no other node was; see {}",
                        l.dir.join("baton.log").display()
                    ));
                    break 'sim;
                }
                if l.eviction.is_none() {
                    self.progress.line(format!("simulate: node {k} stopped ({status}) after its peer's eviction; starting it again"));
                    disrupted = Some(now);
                }
                let dir = l.dir;
                clearing.push(std::thread::spawn(move || clear_slot(&dir)));
                // A node that already completed must run again too: the others cannot
                // meet without node 0, and a checkpoint needs every node's part.
                done.iter_mut().for_each(|d| *d = false);
            }
            if done.iter().all(|d| *d) {
                out.completed = true;
                break;
            }
            let all_up = live.iter().all(|l| l.as_ref().is_some_and(|l| l.eviction.is_none()));
            match (all_up, clock) {
                (true, None) => clock = Some(Instant::now()),
                (false, _) => clock = None,
                _ => {}
            }
            // Evict only while every node runs and none is being evicted or has finished:
            // an eviction must hit a node that can react, and a node that completed is gone.
            if let (true, Some(c)) = (all_up, clock) {
                if let Some(kind) = self.due(c) {
                    let k = self.rng.below(count);
                    if let Some(l) = live[k].as_mut() {
                        l.kill_at = evict(l.child.id(), kind, opts.vacate_window);
                        let at = attempt::now();
                        l.eviction = Some((kind, at));
                        disrupted = Some(at);
                        self.next_event += 1;
                        self.evictions += 1;
                        clock = None;
                        self.progress.line(
                            format!("simulate: node {k}: {kind:?} eviction at {:.1} s", self.start.elapsed().as_secs_f64()).to_lowercase(),
                        );
                    }
                }
            }
            for (k, l) in live.iter_mut().enumerate() {
                let Some(l) = l.as_mut() else { continue };
                if l.kill_at.is_some_and(|d| Instant::now() >= d) {
                    self.progress.line(format!("simulate: node {k}: vacate window over, SIGKILL to the whole family"));
                    kill_family(l.child.id());
                    l.kill_at = None;
                }
            }
            self.progress.status(format!(
                "{} node(s) · {:.1} s · {} eviction(s)",
                count,
                self.start.elapsed().as_secs_f64(),
                self.evictions
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_all(&mut live);
        self.progress.finish();
        for c in clearing {
            let _ = c.join();
        }
        Ok(out)
    }
}

/// Kill every node still running (the simulation is over) and reap it.
fn stop_all(live: &mut [Option<Live>]) {
    for l in live.iter_mut().filter_map(Option::take) {
        let mut l = l;
        kill_family(l.child.id());
        let _ = l.child.wait();
    }
}

/// The command once on every node, uninterrupted, into a store of its own.
pub(super) async fn reference_run(
    opts: &Options,
    progress: &super::progress::Progress,
    interrupted: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Reference> {
    let base = opts.work_dir.join("reference");
    let _ = std::fs::remove_dir_all(&base);
    let store_dir = opts.work_dir.join("reference-store");
    let _ = std::fs::remove_dir_all(&store_dir);
    progress.line(format!(
        "simulate: --verify: running the command once uninterrupted on {} nodes (store {})",
        opts.nodes,
        store_dir.display()
    ));
    progress.status("uninterrupted reference run".into());
    let t = Instant::now();
    let mut children = Vec::new();
    for k in 0..opts.nodes {
        let dir = base.join(format!("node{k}"));
        std::fs::create_dir_all(&dir)?;
        let mut extra = vec!["--run-id".into(), "reference".into(), "--dir".into(), dir.join("checkpoint").display().to_string()];
        extra.extend(["--device".into(), "reference".into()]);
        extra.extend(node_flags(opts.nodes, k));
        children.push((spawn_baton(opts, &store_dir.display().to_string(), &extra, &[], &dir)?, dir));
    }
    let mut failed = None;
    for (child, dir) in &mut children {
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if interrupted.load(Ordering::SeqCst) {
                for (c, _) in &mut children {
                    kill_family(c.id());
                    let _ = c.wait();
                }
                anyhow::bail!("interrupted");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !status.success() && failed.is_none() {
            failed = Some(format!("({status}); see {}", dir.join("baton.log").display()));
        }
    }
    if let Some(f) = failed {
        anyhow::bail!("the uninterrupted reference run on {} nodes failed {f}", opts.nodes);
    }
    Ok(Reference {
        store: Store::open(&crate::store::StoreUrl::Dir(store_dir))?,
        seconds: t.elapsed().as_secs_f64(),
        stdout: base.join("node0").join("stdout.log"),
    })
}

/// The newest complete checkpoint of a run in parts, as one manifest.
async fn latest_complete(store: &Store, run: &RunId) -> anyhow::Result<crate::manifest::Manifest> {
    let rows = nodes::parts_rows(store, run).await?;
    let row = rows.iter().rev().find(|r| r.complete).ok_or_else(|| anyhow::anyhow!("run {run} has no complete checkpoint"))?;
    Ok(nodes::load_checkpoint(store, run, row.seq, Some(&row.present)).await?)
}

/// The first record of a timeline: where `timeline::compute` puts its zero.
fn origin(observed: &[Observed], records: &[AttemptRecords]) -> f64 {
    let t0 = records.iter().map(|r| r.start.started).fold(f64::INFINITY, f64::min);
    if t0.is_finite() {
        t0
    } else {
        observed.iter().map(|o| o.spawned_at).fold(f64::INFINITY, f64::min)
    }
}

/// Which of the simulator's slots (`observed`, of `nodes`) the attempt of `node` whose
/// start record says `started` ran in. A start record is written after its `baton run`
/// was spawned, so it is the node's latest slot spawned before the record. A second of
/// slack (as on one node) lets the next slot's window reach back over a short attempt's
/// record too, so the slots spawned before the record come first.
fn slot_of(observed: &[Observed], nodes: &[u32], node: u32, started: f64) -> Option<usize> {
    observed
        .iter()
        .zip(nodes)
        .enumerate()
        .filter(|(_, (o, &n))| n == node && o.spawned_at - 1.0 <= started && started <= o.gone_at)
        // Spawned before the record: the latest; else (slack) the earliest after it.
        .max_by_key(|(_, (o, _))| {
            let before = o.spawned_at <= started;
            (before, ordered(if before { o.spawned_at } else { -o.spawned_at }))
        })
        .map(|(i, _)| i)
}

/// An f64 that sorts (times here are finite).
fn ordered(x: f64) -> i64 {
    (x * 1e6) as i64
}

/// The report of a run on several nodes: each node's attempts are a timeline of their
/// own (matched to what the simulator saw of that node), put on one clock; checkpoints
/// count only when complete.
pub(super) async fn report(opts: Options, run: RunId, outcome: &mut Outcome, reference: Option<Reference>) -> anyhow::Result<Report> {
    let count = opts.nodes as usize;
    let mut records: Vec<Vec<AttemptRecords>> = (0..count).map(|_| Vec::new()).collect();
    for r in attempt::load_all(&opts.store, &run).await? {
        let Some(start) = r.start else { continue };
        let Some(node) = start.nodes.as_ref().map(|n| n.node as usize).filter(|&n| n < count) else { continue };
        let Some(i) = slot_of(&outcome.observed, &outcome.nodes, node as u32, start.started) else { continue };
        let o = &mut outcome.observed[i];
        o.attempt = r.attempt;
        records[node].push(AttemptRecords { start, end: r.end });
    }
    let mut points: Vec<Vec<Point>> = (0..count).map(|_| Vec::new()).collect();
    let mut parts = Vec::new();
    let mut counts = CheckpointCounts { complete: 0, incomplete: 0 };
    for row in nodes::parts_rows(&opts.store, &run).await? {
        match row.complete {
            true => counts.complete += 1,
            false => counts.incomplete += 1,
        }
        for (node, part) in nodes::read_parts(&opts.store, &run, row.seq, &row.present).await? {
            let Ok(m) = part else { continue };
            // Work counts as saved only by a checkpoint that can be restored.
            if row.complete && (node as usize) < count {
                points[node as usize].push(Point::from(&m));
            }
            parts.push(m);
        }
    }
    let per_node: Vec<Vec<Observed>> = (0..count)
        .map(|k| outcome.observed.iter().zip(&outcome.nodes).filter(|(_, &n)| n as usize == k).map(|(o, _)| o.clone()).collect())
        .collect();
    let t0 = (0..count).map(|k| origin(&per_node[k], &records[k])).fold(f64::INFINITY, f64::min);
    let mut rows: Vec<AttemptRow> = Vec::new();
    let mut totals = Totals::default();
    let mut node_totals = Vec::new();
    let mut last_end = t0;
    for k in 0..count {
        let (mut r, t) = timeline::compute(&per_node[k], &records[k], &points[k]);
        let shift = origin(&per_node[k], &records[k]) - t0;
        let shift = if shift.is_finite() { shift } else { 0.0 };
        for row in &mut r {
            row.node = Some(k as u32);
            row.start += shift;
            row.evicted_at = row.evicted_at.map(|e| e + shift);
        }
        last_end = last_end.max(t0 + shift + t.wall_seconds);
        totals.attempts += t.attempts;
        totals.evictions += t.evictions;
        totals.soft += t.soft;
        totals.hard += t.hard;
        totals.useful_seconds += t.useful_seconds / count as f64;
        totals.work_lost_seconds += t.work_lost_seconds;
        totals.restore_seconds += t.restore_seconds;
        totals.flush_seconds += t.flush_seconds;
        node_totals.push(NodeTotals {
            node: k as u32,
            attempts: t.attempts,
            evictions: t.evictions,
            soft: t.soft,
            hard: t.hard,
            useful_seconds: t.useful_seconds,
            work_lost_seconds: t.work_lost_seconds,
        });
        rows.extend(r);
    }
    rows.sort_by(|a, b| a.start.total_cmp(&b.start));
    totals.wall_seconds = if rows.is_empty() { 0.0 } else { last_end - t0 };
    totals.goodput = if totals.wall_seconds > 0.0 { totals.useful_seconds / totals.wall_seconds } else { 0.0 };
    totals.work_lost_per_eviction = if totals.evictions > 0 { totals.work_lost_seconds / totals.evictions as f64 } else { 0.0 };
    totals.add_sizes(&parts);
    let verify = verify::verdict(reference.as_ref(), outcome, &opts.store, &run, |s, r| Box::pin(latest_complete(s, r))).await?;
    let all_points: Vec<Point> = points.into_iter().flatten().collect();
    let svg = timeline::svg::svg(&format!("baton simulate: run {run} on {count} nodes"), t0, &rows, &all_points, &totals);
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
        nodes: node_totals,
        checkpoints: Some(counts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(spawned_at: f64, gone_at: f64) -> Observed {
        Observed { attempt: 0, slot: "cpu".into(), spawned_at, eviction: None, gone_at, peer_lost: false }
    }

    #[test]
    fn a_short_attempt_s_record_goes_to_its_own_slot_not_the_next() {
        // Node 0 ran 10.0-10.4 (killed 0.2 s after its record), then 10.5-20; node 1 beside it.
        let observed = [slot(10.0, 10.4), slot(10.0, 30.0), slot(10.5, 20.0)];
        let nodes = [0, 1, 0];
        assert_eq!(slot_of(&observed, &nodes, 0, 10.2), Some(0));
        assert_eq!(slot_of(&observed, &nodes, 0, 10.6), Some(2));
        assert_eq!(slot_of(&observed, &nodes, 1, 10.2), Some(1));
        // A record a moment before its spawn (clock slack) still finds its slot.
        assert_eq!(slot_of(&observed, &nodes, 0, 9.5), Some(0));
        assert_eq!(slot_of(&observed, &nodes, 1, 40.0), None);
    }
}
