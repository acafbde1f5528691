//! The attempt's records in the store: the start record that reserves its number, and
//! the end record that says how it ended.

use std::time::{Duration, Instant};

use super::{deadlines, Phase, RunConfig, Supervisor, Timing};
use crate::attempt::{self, Attempt, EndRecord, Ending, NodeStart, StartRecord};
use crate::manifest::Part;
use crate::process::Exit;
use crate::restore::Restored;

/// Write the start record, taking the next attempt number, and say who this attempt is.
pub async fn start(cfg: &RunConfig, restored: &Restored, started: f64, node: Option<NodeStart>) -> anyhow::Result<Attempt> {
    let host = attempt::hostname();
    let record = StartRecord {
        format: 1,
        run_id: cfg.run.to_string(),
        attempt: 0,
        host: host.clone(),
        device: cfg.device.clone(),
        device_info: cfg.device_info.clone(),
        started,
        restored_seq: restored.found.as_ref().map(|(m, _)| m.seq),
        skipped_damaged: restored.skipped.iter().map(|s| s.0).collect(),
        restore_seconds: restored.seconds,
        vacate_window_seconds: cfg.vacate_window.as_secs_f64(),
        vacate_window_source: cfg.window_source.clone(),
        htcondor: cfg.job_ids.clone(),
        baton_version: env!("CARGO_PKG_VERSION").into(),
        nodes: node.clone(),
    };
    let number = attempt::reserve(&cfg.store, &cfg.run, record).await?;
    tracing::info!(
        "run {} attempt {number} on {host}, device {}; vacate window {:.0} s from {}",
        cfg.run,
        cfg.device,
        cfg.vacate_window.as_secs_f64(),
        cfg.window_source
    );
    Ok(Attempt {
        run: cfg.run.clone(),
        number,
        host: host.clone(),
        device: cfg.device.clone(),
        device_info: cfg.device_info.clone(),
        htcondor: cfg.job_ids.clone(),
        writer: format!("{host}:{}:{}", std::process::id(), (started * 1e6) as u64),
        // Parts only on several nodes: a single-node attempt writes whole manifests.
        part: cfg.nodes.as_ref().zip(node.and_then(|n| n.generation)).map(|(nc, generation)| Part {
            node: nc.topology.node,
            nodes: nc.topology.nodes,
            generation,
        }),
    })
}

/// Write the end record, giving up after `limit`.
async fn write_end(cfg: &RunConfig, record: &EndRecord, limit: Duration) {
    let Ok(body) = serde_json::to_vec_pretty(record) else { return };
    match tokio::time::timeout(limit, cfg.store.put_attempt_end(&cfg.run, record.attempt, body.into())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("could not write the attempt record: {e}"),
        Err(_) => tracing::warn!("no time left to write the attempt record"),
    }
}

impl Supervisor {
    /// Record how the attempt ended, taking no more time than the vacate window leaves.
    pub(super) async fn end_record(&self, ending: Ending, exit: Option<Exit>, timing: Option<Timing>, error: Option<String>) {
        let (eviction_signal, evicted_at) = match self.phase {
            Phase::Draining { signal, at, .. } => (Some(signal), Some(at)),
            Phase::Running => (None, None),
        };
        let record = EndRecord {
            format: 1,
            attempt: self.attempt.number,
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
            committed: self.ledger.committed().to_vec(),
            durable: self.ledger.durable().to_vec(),
            eviction_signal,
            evicted_at,
            flush_seconds: timing.map(|t| t.flush_seconds),
            drain_seconds: timing.and_then(|t| t.drain_seconds),
            error,
            // The command's pid is 0 until it is spawned.
            command_started: self.child.as_raw() != 0,
        };
        write_end(&self.cfg, &record, deadlines::record_budget(self.exit_deadline(), Instant::now())).await;
    }
}
