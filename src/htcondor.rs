//! What baton reads from an HTCondor sandbox: the job and machine ad files named by
//! `_CONDOR_JOB_AD` / `_CONDOR_MACHINE_AD` (old-style: one `Name = value` per line),
//! and the scratch directory. Ads are snapshots taken at job start; they are read once.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::classad::{self, LineError};

/// One ClassAd as baton reads it: attribute names are case-insensitive; values are
/// parsed by [`crate::classad`] and simple expressions (`10 * 60`) evaluated.
#[derive(Debug, Clone, Default)]
pub struct Ad {
    inner: classad::Ad,
}

/// Ads are small (a slot ad is a few KiB); a file beyond this is damaged, and only
/// its first part is read.
const MAX_AD_BYTES: u64 = 16 << 20;

/// At most this many bad lines are logged per file; a file of junk would flood the log.
const MAX_WARNED_LINES: usize = 10;

/// The job's identity in the HTCondor pool, recorded in manifests and attempt records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIds {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_job_starts: Option<i64>,
}

impl JobIds {
    pub fn is_empty(&self) -> bool {
        self == &JobIds::default()
    }
}

/// An ad file that could be read, and what was wrong in it.
#[derive(Debug)]
pub struct ReadAd {
    pub ad: Ad,
    pub errors: Vec<LineError>,
    /// The file was larger than the limit and was cut there.
    pub truncated: bool,
}

impl Ad {
    /// Parse an ad's text; lines with errors are left out (see [`Ad::read_checked`]).
    #[cfg(test)]
    pub fn parse(text: &str) -> Ad {
        Ad { inner: classad::Ad::parse(text).0 }
    }

    /// Read an ad file (at most 16 MiB of it), returning the per-line errors.
    pub fn read_checked(path: &Path) -> std::io::Result<ReadAd> {
        use std::io::Read;
        let mut buf = Vec::new();
        std::fs::File::open(path)?.take(MAX_AD_BYTES + 1).read_to_end(&mut buf)?;
        let truncated = buf.len() as u64 > MAX_AD_BYTES;
        if truncated {
            // Cut at the last whole line so that no half line is misread.
            let keep = buf[..MAX_AD_BYTES as usize].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            buf.truncate(keep);
        }
        let (inner, errors) = classad::Ad::parse_bytes(&buf);
        Ok(ReadAd { ad: Ad { inner }, errors, truncated })
    }

    /// The parsed ad, for values beyond the getters below (lists, nested ads).
    pub fn classad(&self) -> &classad::Ad {
        &self.inner
    }

    /// A string value (`"..."`; `\"` is the only escape HTCondor writes).
    pub fn string(&self, name: &str) -> Option<String> {
        self.inner.string(name)
    }

    /// An integer, or an integer expression such as `10 * 60`, which is how pools
    /// commonly write `MachineMaxVacateTime`.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.inner.int(name)
    }

    /// A real or an integer (or an arithmetic expression of them), as a real.
    pub fn real(&self, name: &str) -> Option<f64> {
        self.inner.real(name)
    }
}

fn warn_bad_lines(file: &str, r: &ReadAd) {
    if r.truncated {
        tracing::warn!("{file} is larger than {} MiB; only its first {} MiB were read", MAX_AD_BYTES >> 20, MAX_AD_BYTES >> 20);
    }
    for e in r.errors.iter().take(MAX_WARNED_LINES) {
        tracing::warn!("{file} {e}; that line is ignored");
    }
    if r.errors.len() > MAX_WARNED_LINES {
        tracing::warn!("{file}: {} more lines could not be read and are ignored", r.errors.len() - MAX_WARNED_LINES);
    }
}

/// Why a job ad gives no run id (mirrors [`Sandbox::run_id`]), or `None` when it does.
fn run_id_problem(job: &Ad) -> Option<String> {
    if let Some(g) = job.string("GlobalJobId") {
        return match crate::identity::from_global_job_id(&g) {
            Some(_) => None,
            None => Some(format!("has a GlobalJobId {g:?} that does not make a valid run id")),
        };
    }
    match (job.int("ClusterId"), job.int("ProcId")) {
        (Some(_), Some(_)) => None,
        _ => Some("has neither a GlobalJobId string nor integer ClusterId and ProcId".into()),
    }
}

/// The parts of the HTCondor job environment baton uses.
#[derive(Debug, Default)]
pub struct Sandbox {
    pub job: Option<Ad>,
    pub job_path: Option<PathBuf>,
    pub machine: Option<Ad>,
    pub scratch: Option<PathBuf>,
}

/// What baton falls back on when an ad is missing, for the warning.
fn without(var: &str) -> &'static str {
    match var {
        "_CONDOR_JOB_AD" => {
            "baton continues without the job ad: the run id must come from --run-id or BATON_RUN_ID, and the checkpoint exit code from --checkpoint-exit-code"
        }
        _ => {
            "baton continues without the machine ad: the device comes from CUDA_VISIBLE_DEVICES and nvidia-smi (else cpu), and the vacate window from the job ad, --vacate-window or the 30 s default"
        }
    }
}

/// The ad in the file the variable names, with a warning (naming both) when the
/// variable is set but the file cannot be used.
fn read_named(var: &str) -> Option<(Ad, PathBuf)> {
    let path = PathBuf::from(std::env::var_os(var)?);
    if path.as_os_str().is_empty() {
        tracing::warn!("{var} is set but empty; {}", without(var));
        return None;
    }
    match Ad::read_checked(&path) {
        Ok(r) => {
            warn_bad_lines(&format!("{var} file {}", path.display()), &r);
            Some((r.ad, path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{var} names {}, which does not exist; {}", path.display(), without(var));
            None
        }
        Err(e) => {
            tracing::warn!("{var} names {}, which cannot be read ({e}); {}", path.display(), without(var));
            None
        }
    }
}

impl Sandbox {
    /// Read the sandbox HTCondor describes in the environment. Problems are warnings:
    /// outside HTCondor, or with a damaged ad, baton still runs on its flags.
    pub fn from_env() -> Sandbox {
        let job = read_named("_CONDOR_JOB_AD");
        Sandbox {
            job_path: job.as_ref().map(|(_, p)| p.clone()),
            job: job.map(|(ad, _)| ad),
            machine: read_named("_CONDOR_MACHINE_AD").map(|(ad, _)| ad),
            scratch: std::env::var_os("_CONDOR_SCRATCH_DIR").filter(|s| !s.is_empty()).map(PathBuf::from),
        }
    }

    /// Why the job ad cannot name the run, naming the file and the attributes; `None`
    /// when it can or when there is no job ad. Only said when baton needs the ad for the
    /// run id (not when `--run-id` or `BATON_RUN_ID` gives one).
    pub fn run_id_problem(&self) -> Option<String> {
        let (job, path) = (self.job.as_ref()?, self.job_path.as_ref()?);
        run_id_problem(job).map(|p| format!("the job ad {} (_CONDOR_JOB_AD) {p}", path.display()))
    }

    pub fn job_ids(&self) -> JobIds {
        let Some(job) = &self.job else { return Default::default() };
        JobIds {
            global_job_id: job.string("GlobalJobId"),
            cluster_id: job.int("ClusterId"),
            proc_id: job.int("ProcId"),
            num_job_starts: job.int("NumJobStarts"),
        }
    }

    /// The run id HTCondor implies: stable across every start of the same job.
    pub fn run_id(&self) -> Option<crate::identity::RunId> {
        let job = self.job.as_ref()?;
        if let Some(g) = job.string("GlobalJobId") {
            return crate::identity::from_global_job_id(&g);
        }
        let (c, p) = (job.int("ClusterId")?, job.int("ProcId")?);
        crate::identity::RunId::parse(&format!("job-{c}.{p}")).ok()
    }

    /// The vacate window from the ads, and which attribute gave it. `JobMaxVacateTime`
    /// can only lower the machine's window.
    pub fn vacate_window(&self) -> Option<(f64, &'static str)> {
        let machine = self.machine.as_ref().and_then(|m| m.real("MachineMaxVacateTime"));
        let job = self.job.as_ref().and_then(|j| j.real("JobMaxVacateTime"));
        match (job, machine) {
            (Some(j), Some(m)) if m < j => Some((m, "machine ad MachineMaxVacateTime")),
            (Some(j), _) => Some((j, "job ad JobMaxVacateTime")),
            (None, Some(m)) => Some((m, "machine ad MachineMaxVacateTime")),
            (None, None) => None,
        }
    }

    pub fn checkpoint_exit_code(&self) -> Option<i32> {
        self.job.as_ref()?.int("SuccessCheckpointExitCode").and_then(|c| i32::try_from(c).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_values_baton_needs() {
        let ad = Ad::parse(
            "ClusterId = 1234\nGlobalJobId = \"ap1#1234.0#17\"\nMachineMaxVacateTime = 10 * 60\nGPUs_DeviceName = \"Tesla \\\"T4\\\"\"\nGPUs_Capability = 7.5\njunk line\n",
        );
        assert_eq!(ad.int("clusterid"), Some(1234));
        assert_eq!(ad.string("GlobalJobId").as_deref(), Some("ap1#1234.0#17"));
        assert_eq!(ad.int("MachineMaxVacateTime"), Some(600));
        assert_eq!(ad.string("GPUs_DeviceName").as_deref(), Some("Tesla \"T4\""));
        assert_eq!(ad.real("GPUs_Capability"), Some(7.5));
        assert_eq!(ad.string("ClusterId"), None);
    }

    #[test]
    fn job_window_only_lowers_the_machine_window() {
        let sb = Sandbox {
            job: Some(Ad::parse("JobMaxVacateTime = 900")),
            machine: Some(Ad::parse("MachineMaxVacateTime = 600")),
            scratch: None,
            job_path: None,
        };
        assert_eq!(sb.vacate_window().unwrap().0, 600.0);
        let sb = Sandbox { job: Some(Ad::parse("JobMaxVacateTime = 30")), ..sb };
        assert_eq!(sb.vacate_window().unwrap().0, 30.0);
    }

    #[test]
    fn a_damaged_file_still_gives_its_good_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".machine.ad");
        std::fs::write(
            &p,
            b"GPUs = 1\n\xff\xfe junk\nGPUs_DeviceName = \"Tesla T4\nGPUs_DeviceName = \"NVIDIA L40\"\nMachineMaxVacateTime = 10 * 60\n",
        )
        .unwrap();
        let r = Ad::read_checked(&p).unwrap();
        assert_eq!(r.ad.string("GPUs_DeviceName").as_deref(), Some("NVIDIA L40"));
        assert_eq!(r.ad.int("MachineMaxVacateTime"), Some(600));
        assert_eq!(r.errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 3]);
        assert!(!r.truncated);
        assert!(Ad::read_checked(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn an_oversized_file_is_cut_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".job.ad");
        let filler = format!("Filler = \"{}\"\n", "x".repeat(1000));
        let mut text = String::from("ClusterId = 7\n");
        while text.len() as u64 <= MAX_AD_BYTES + 4096 {
            text.push_str(&filler);
        }
        text.push_str("ProcId = 3\n");
        std::fs::write(&p, &text).unwrap();
        let r = Ad::read_checked(&p).unwrap();
        assert!(r.truncated);
        assert!(r.errors.is_empty(), "{:?}", r.errors.first());
        assert_eq!(r.ad.int("ClusterId"), Some(7));
        assert_eq!(r.ad.int("ProcId"), None, "beyond the limit");
    }

    #[test]
    fn run_id_problems_are_named() {
        let problem = |t: &str| run_id_problem(&Ad::parse(t));
        assert_eq!(problem("GlobalJobId = \"ap1#1.0#17\""), None);
        assert_eq!(problem("ClusterId = 1\nProcId = 0"), None);
        assert_eq!(problem("GlobalJobId = undefined\nClusterId = 1\nProcId = 0"), None);
        assert!(problem("ClusterId = 1").unwrap().contains("neither"));
        assert!(problem("Owner = \"me\"").unwrap().contains("GlobalJobId"));
        assert!(problem(&format!("GlobalJobId = \"{}\"", "x".repeat(300))).unwrap().contains("valid run id"));
        // And run_id agrees.
        let sb = |t: &str| Sandbox { job: Some(Ad::parse(t)), ..Default::default() };
        assert_eq!(sb("GlobalJobId = undefined\nClusterId = 1\nProcId = 0").run_id().unwrap().as_str(), "job-1.0");
        assert!(sb("ClusterId = 1").run_id().is_none());
    }
}
