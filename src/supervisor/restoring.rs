//! Restoring, before the command starts: the newest intact checkpoint of the run, put into
//! the checkpoint directory. On several nodes, node 0 restores the newest complete
//! checkpoint and publishes its address; the other nodes wait for it and restore exactly
//! the checkpoint node 0 restored (`nodes`).

use signal_hook_tokio::Signals;
use std::path::Path;
use std::time::{Duration, Instant};

use super::RunConfig;
use crate::attempt::NodeStart;
use crate::error::{ErrorKind, Failure};
use crate::format;
use crate::nodes::{self, Rendezvous};
use crate::restore::{self, Restored};
use crate::store::KnownChunks;

/// What the start of the command needs from the restore (and the rendezvous).
pub struct Prepared {
    pub restored: Restored,
    /// The seq the first commit takes.
    pub next_seq: u64,
    /// This node in a run on several nodes, or a single-node attempt that restored a
    /// checkpoint written by several (the world size changed).
    pub node: Option<NodeStart>,
}

pub enum Start {
    Ready(Box<Prepared>),
    /// An eviction signal arrived while waiting for node 0: nothing was started.
    Evicted(i32),
}

/// How often a waiting node looks for node 0's address, and says it still waits.
const POLL: Duration = Duration::from_secs(1);
const SAY_EVERY: Duration = Duration::from_secs(30);

pub async fn prepare(cfg: &RunConfig, state_dir: &Path, known: &KnownChunks, signals: &mut Signals) -> anyhow::Result<Start> {
    let concurrency = restore::CONCURRENCY.max(cfg.upload.concurrency);
    let Some(nc) = &cfg.nodes else {
        let restored = nodes::restore_newest(&cfg.store, &cfg.run, state_dir, concurrency, known).await?;
        let next_seq = nodes::next_seq(&cfg.store, &cfg.run).await?;
        let restored_nodes = restored_nodes(&restored);
        place(cfg, state_dir, &restored)?;
        // A single-node attempt records the world size only when it changed.
        let node = restored_nodes.filter(|&n| n != 1).map(|n| NodeStart {
            node: 0,
            nodes: 1,
            generation: None,
            master_addr: None,
            master_port: None,
            restored_nodes: Some(n),
        });
        return Ok(Start::Ready(Box::new(Prepared { restored, next_seq, node })));
    };
    let topo = nc.topology;
    let (restored, r) = if topo.node == 0 {
        let restored = nodes::restore_newest(&cfg.store, &cfg.run, state_dir, concurrency, known).await?;
        let next_seq = nodes::next_seq(&cfg.store, &cfg.run).await?;
        let addr = nc.master_addr.clone().unwrap_or_else(nodes::reachable_addr);
        let port = match nc.master_port {
            Some(p) => p,
            None => nodes::free_port(&addr).map_err(|e| anyhow::anyhow!("cannot find a free port on {addr} for the rendezvous: {e}"))?,
        };
        let record = Rendezvous {
            format: 1,
            run_id: cfg.run.to_string(),
            generation: 0,
            addr,
            port,
            nodes: topo.nodes,
            restored_seq: restored.found.as_ref().map(|(m, _)| m.seq),
            next_seq,
            published: crate::attempt::now(),
            host: crate::attempt::hostname(),
            writer: format!("{}:{}", crate::attempt::hostname(), std::process::id()),
        };
        let r = nodes::publish(&cfg.store, &cfg.run, record).await?;
        tracing::info!(
            "node 0 of {}: published rendezvous generation {} of run {}: {}:{} (restored {}, next checkpoint {})",
            topo.nodes,
            r.generation,
            cfg.run,
            r.addr,
            r.port,
            r.restored_seq.map_or("nothing".into(), |s| format!("checkpoint {s}")),
            r.next_seq
        );
        (restored, r)
    } else {
        let r = match wait(cfg, topo, nc.timeout, signals).await? {
            Ok(r) => r,
            Err(sig) => return Ok(Start::Evicted(sig)),
        };
        let restored = match r.restored_seq {
            Some(seq) => nodes::restore_exactly(&cfg.store, &cfg.run, seq, state_dir, concurrency, known).await?,
            None => Restored::default(),
        };
        (restored, r)
    };
    let restored_nodes = restored_nodes(&restored);
    place(cfg, state_dir, &restored)?;
    if restored_nodes.is_some_and(|n| n != topo.nodes) {
        tracing::info!(
            "the world size changed: checkpoint written by {} node(s), restored onto {}",
            restored_nodes.unwrap_or(1),
            topo.nodes
        );
    }
    let node = NodeStart {
        node: topo.node,
        nodes: topo.nodes,
        generation: Some(r.generation),
        master_addr: Some(r.addr.clone()),
        master_port: Some(r.port),
        restored_nodes,
    };
    Ok(Start::Ready(Box::new(Prepared { restored, next_seq: r.next_seq, node: Some(node) })))
}

/// The node count of the restored checkpoint (1: a single-node manifest).
fn restored_nodes(restored: &Restored) -> Option<u32> {
    restored.found.as_ref().map(|(m, _)| m.part.map_or(1, |p| p.nodes))
}

/// Wait for a generation of node 0's address this node may join, until `timeout`; an
/// eviction signal ends the wait (`Err(signal)`).
async fn wait(cfg: &RunConfig, topo: nodes::Topology, timeout: Duration, signals: &mut Signals) -> anyhow::Result<Result<Rendezvous, i32>> {
    let start = Instant::now();
    tracing::info!(
        "node {} of {}: waiting up to {:.0} s for node 0 to publish its address for run {} in {}",
        topo.node,
        topo.nodes,
        timeout.as_secs_f64(),
        cfg.run,
        cfg.store.url()
    );
    let mut said = Instant::now();
    let mut last_why = String::new();
    loop {
        if let Some(sig) = super::events::eviction_pending(signals) {
            tracing::warn!("eviction signal {sig} arrived while waiting for node 0; not starting the command");
            return Ok(Err(sig));
        }
        match nodes::look(&cfg.store, &cfg.run, topo).await? {
            Ok(r) => {
                tracing::info!(
                    "node {} of {}: joining rendezvous generation {} ({}:{}) after {:.1} s",
                    topo.node,
                    topo.nodes,
                    r.generation,
                    r.addr,
                    r.port,
                    start.elapsed().as_secs_f64()
                );
                return Ok(Ok(r));
            }
            Err(why) => {
                if said.elapsed() >= SAY_EVERY || (why != last_why && !last_why.is_empty()) {
                    tracing::info!("still waiting for node 0 ({:.0} s): {why}", start.elapsed().as_secs_f64());
                    said = Instant::now();
                }
                last_why = why;
            }
        }
        if start.elapsed() >= timeout {
            return Err(Failure::new(
                ErrorKind::Rendezvous,
                format!(
                    "node 0 did not publish an address within {:.0} s; is node 0 running? (run {}, store {}; {last_why})",
                    timeout.as_secs_f64(),
                    cfg.run,
                    cfg.store.url()
                ),
            )
            .into());
        }
        tokio::time::sleep(POLL.min(timeout.saturating_sub(start.elapsed())).max(Duration::from_millis(50))).await;
    }
}

/// Put the restored checkpoint in the checkpoint directory, or make an empty one for a
/// fresh start.
fn place(cfg: &RunConfig, state_dir: &Path, restored: &Restored) -> anyhow::Result<()> {
    match &restored.found {
        Some((m, tmp)) => {
            // Whatever was in the checkpoint directory is moved aside, never deleted.
            restore::put_in_place(tmp, &cfg.dir, Some(&state_dir.join("displaced")))?;
            tracing::info!(
                "restored {} of run {} into {} ({}, written on {}{}) in {:.2} s",
                format::checkpoint(m),
                cfg.run,
                cfg.dir.display(),
                format::bytes(m.logical_bytes()),
                m.device,
                m.part.map(|p| format!(", all {} nodes' parts", p.nodes)).unwrap_or_default(),
                restored.seconds
            );
        }
        None => {
            std::fs::create_dir_all(&cfg.dir)?;
            tracing::info!("no checkpoint of run {} in {}: fresh start", cfg.run, cfg.store.url());
        }
    }
    Ok(())
}
