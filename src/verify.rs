//! Verification: read every chunk of a checkpoint back and check it against the
//! manifest through restore's own read pipeline, discarding the bytes.

use futures::StreamExt;
use serde::Serialize;

use crate::data::DatasetName;

use crate::error::{Classify, ErrorKind};
use crate::identity::RunId;
use crate::restore::{check_file, load_manifest};
use crate::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub run: String,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checkpoints: usize,
    pub files: usize,
    pub chunks: usize,
    pub bytes: u64,
    pub damaged: Vec<Damage>,
    /// Checkpoints of runs on several nodes that some node's part is missing from (a node
    /// lost before it uploaded, or still uploading): never restored, and not damage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<Damage>,
    /// Dataset versions checked, and what is damaged in them.
    pub dataset_versions: usize,
    pub damaged_datasets: Vec<DataDamage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataDamage {
    pub dataset: String,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub problem: String,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.damaged.is_empty() && self.damaged_datasets.is_empty()
    }
}

/// Check version `version` of dataset `name` as a pull would, adding what is damaged to
/// `report`. An error only when the store could not be asked.
pub async fn dataset(store: &Store, name: &DatasetName, version: u64, concurrency: usize, report: &mut Report) -> anyhow::Result<()> {
    report.dataset_versions += 1;
    let damage = |file: Option<String>, problem: String| DataDamage { dataset: name.to_string(), version, file, problem };
    let m = match crate::data::load(store, name, version).await {
        Ok(m) => m,
        Err(e) if e.kind() != ErrorKind::Integrity => return Err(e.into()),
        Err(e) => {
            report.damaged_datasets.push(damage(None, format!("manifest: {e}")));
            return Ok(());
        }
    };
    // Files at once: a dataset of many small files is bound by round trips.
    let checks = futures::stream::iter(&m.files)
        .map(|f| async move { (f, check_file(store, version, f, concurrency).await) })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    for (f, result) in checks {
        report.files += 1;
        report.chunks += f.chunks.len();
        match result {
            Ok(()) => report.bytes += f.size,
            Err(e) if e.kind() != ErrorKind::Integrity => return Err(e.into()),
            Err(crate::restore::RestoreError::File { detail, .. }) => report.damaged_datasets.push(damage(Some(f.path.clone()), detail)),
            Err(e) => report.damaged_datasets.push(damage(Some(f.path.clone()), e.to_string())),
        }
    }
    Ok(())
}

/// Check checkpoint `seq` of `run`, adding what is damaged to `report`. An error is
/// returned only when the store could not be asked, which says nothing about the data.
pub async fn checkpoint(store: &Store, run: &RunId, seq: u64, concurrency: usize, report: &mut Report) -> anyhow::Result<()> {
    report.checkpoints += 1;
    let m = match load_manifest(store, run, seq).await {
        Ok(m) => m,
        Err(e) if e.kind() != ErrorKind::Integrity => return Err(e.into()),
        Err(e) => {
            report.damaged.push(Damage {
                run: run.to_string(),
                seq,
                file: None,
                problem: format!("manifest: {}", crate::error::chain(&e)),
            });
            return Ok(());
        }
    };
    files(store, run, seq, &m, concurrency, report).await
}

/// Check every file of `m` (a checkpoint or one node's part of it).
async fn files(
    store: &Store,
    run: &RunId,
    seq: u64,
    m: &crate::manifest::Manifest,
    concurrency: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    for f in &m.files {
        report.files += 1;
        report.chunks += f.chunks.len();
        match check_file(store, seq, f, concurrency).await {
            Ok(()) => report.bytes += f.size,
            Err(e) if e.kind() != ErrorKind::Integrity => return Err(e.into()),
            Err(crate::restore::RestoreError::File { detail, .. }) => {
                report.damaged.push(Damage { run: run.to_string(), seq, file: Some(f.path.clone()), problem: detail })
            }
            Err(e) => report.damaged.push(Damage { run: run.to_string(), seq, file: Some(f.path.clone()), problem: e.to_string() }),
        }
    }
    Ok(())
}

/// Check checkpoint `seq` of a run on several nodes: every part listed (`nodes`), each
/// part's files, and whether the parts make a complete checkpoint (`nodes::complete`).
pub async fn parts(store: &Store, run: &RunId, seq: u64, nodes: &[u32], concurrency: usize, report: &mut Report) -> anyhow::Result<()> {
    report.checkpoints += 1;
    let read = crate::nodes::read_parts(store, run, seq, nodes).await?;
    let mut damaged = false;
    for (node, part) in &read {
        match part {
            Ok(m) => {
                let before = report.damaged.len();
                files(store, run, seq, m, concurrency, report).await?;
                for d in &mut report.damaged[before..] {
                    d.file = d.file.take().map(|f| format!("{f} (node {node}'s part)"));
                }
                damaged |= report.damaged.len() > before;
            }
            Err(e) => {
                damaged = true;
                report.damaged.push(Damage { run: run.to_string(), seq, file: None, problem: format!("node {node}'s part: {e}") });
            }
        }
    }
    if let (Err(why), false) = (crate::nodes::complete(seq, &read), damaged) {
        let d = Damage { run: run.to_string(), seq, file: None, problem: why };
        match d.problem.starts_with("incomplete") {
            true => report.incomplete.push(d),
            false => report.damaged.push(d),
        }
    }
    Ok(())
}
