//! One start of a run on one slot: who it is (`Attempt`), and the records it leaves in
//! the store so that `inspect` can draw the run's timeline.

use serde::{Deserialize, Serialize};

use crate::htcondor::JobIds;
use crate::identity::RunId;
use crate::store::{PutOutcome, Store};

/// Everything a manifest or attempt record says about where it was written.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub run: RunId,
    pub number: u64,
    pub host: String,
    pub device: String,
    pub device_info: Option<crate::device::DeviceInfo>,
    pub htcondor: JobIds,
    /// Unique per process; lets a manifest read-back tell two writers apart.
    pub writer: String,
    /// On a run on several nodes: the part of each checkpoint this attempt writes.
    pub part: Option<crate::manifest::Part>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRecord {
    pub format: u32,
    pub run_id: String,
    pub attempt: u64,
    pub host: String,
    pub device: String,
    /// The device's details, when baton detected it (absent with `--device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<crate::device::DeviceInfo>,
    pub started: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_damaged: Vec<u64>,
    pub restore_seconds: f64,
    pub vacate_window_seconds: f64,
    pub vacate_window_source: String,
    #[serde(default, skip_serializing_if = "JobIds::is_empty")]
    pub htcondor: JobIds,
    pub baton_version: String,
    /// On a run on several nodes: which node this attempt is, how the nodes met, and
    /// the world size of the checkpoint it restored (a change of size shows here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeStart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStart {
    pub node: u32,
    pub nodes: u32,
    /// The rendezvous generation this attempt published (node 0) or joined, and the
    /// address in it (none for a single-node attempt: it records the world size only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_port: Option<u16>,
    /// How many nodes wrote the checkpoint restored (1: a single-node manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_nodes: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// The command exited 0 and the final checkpoint is durable.
    Completed,
    /// The command exited with a non-zero code (not the checkpoint code).
    Failed,
    /// The command died from a signal baton did not forward.
    Killed,
    /// baton received an eviction signal.
    Evicted,
    /// baton itself failed (store unreachable, capture failed).
    BatonError,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndRecord {
    pub format: u32,
    pub attempt: u64,
    pub ended: f64,
    pub ending: Ending,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Seqs captured during this attempt, and which of them became durable.
    pub committed: Vec<u64>,
    pub durable: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_signal: Option<i32>,
    /// When the eviction signal arrived (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_seconds: Option<f64>,
    /// Seconds from the eviction signal until the command had exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the command was started: false when the attempt ended before it (evicted
    /// while restoring, or the command could not be spawned). On several nodes such an
    /// attempt has not used its rendezvous generation (`nodes::choose_generation`).
    /// Written only when false; records without it (older versions) count as started.
    #[serde(default = "started", skip_serializing_if = "started_again")]
    pub command_started: bool,
}

fn started() -> bool {
    true
}

fn started_again(b: &bool) -> bool {
    *b
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ending::Completed => "completed",
            Ending::Failed => "failed",
            Ending::Killed => "killed",
            Ending::Evicted => "evicted",
            Ending::BatonError => "baton-error",
        })
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

/// Take the next free attempt number by writing its start record create-only.
pub async fn reserve(store: &Store, run: &RunId, mut record: StartRecord) -> anyhow::Result<u64> {
    let existing = store.list_attempts(run).await?;
    let first = existing.last().map(|(n, _)| n + 1).unwrap_or(1);
    for n in first..first + 16 {
        record.attempt = n;
        let body = serde_json::to_vec_pretty(&record)?;
        if store.put_attempt_start(run, n, body.into()).await? == PutOutcome::Created {
            return Ok(n);
        }
    }
    anyhow::bail!("could not reserve an attempt number for run {run}: too many concurrent starts")
}

/// Both records of one attempt, as far as they could be read (a record that is missing
/// or does not parse is `None`: an attempt that died without a word, or damage).
#[derive(Debug, Clone, Serialize)]
pub struct Records {
    pub attempt: u64,
    pub start: Option<StartRecord>,
    pub end: Option<EndRecord>,
}

/// Every attempt of a run, oldest first.
pub async fn load_all(store: &Store, run: &RunId) -> crate::store::Result<Vec<Records>> {
    let mut out = Vec::new();
    for (n, has_end) in store.list_attempts(run).await? {
        let start = store.get_attempt(run, n, false).await.ok().and_then(|b| serde_json::from_slice(&b).ok());
        let end = match has_end {
            true => store.get_attempt(run, n, true).await.ok().and_then(|b| serde_json::from_slice(&b).ok()),
            false => None,
        };
        out.push(Records { attempt: n, start, end });
    }
    Ok(out)
}

/// Records for tests elsewhere (the timeline, the interval advice).
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    pub fn start(n: u64, started: f64, restore: f64, restored: Option<u64>) -> StartRecord {
        StartRecord {
            format: 1,
            run_id: "r".into(),
            attempt: n,
            host: "h".into(),
            device: "cpu".into(),
            device_info: None,
            started,
            restored_seq: restored,
            skipped_damaged: vec![],
            restore_seconds: restore,
            vacate_window_seconds: 30.0,
            vacate_window_source: "test".into(),
            htcondor: crate::htcondor::JobIds::default(),
            baton_version: "t".into(),
            nodes: None,
        }
    }

    pub fn end(n: u64, ended: f64, ending: Ending, evicted_at: Option<f64>, flush: f64) -> EndRecord {
        EndRecord {
            format: 1,
            attempt: n,
            ended,
            ending,
            exit_code: Some(0),
            signal: None,
            committed: vec![],
            durable: vec![],
            eviction_signal: evicted_at.map(|_| 15),
            evicted_at,
            flush_seconds: Some(flush),
            drain_seconds: None,
            error: None,
            command_started: true,
        }
    }
}
