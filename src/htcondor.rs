//! What baton reads from an HTCondor sandbox: the job and machine ad files named by
//! `_CONDOR_JOB_AD` / `_CONDOR_MACHINE_AD` (old-style: one `Name = value` per line),
//! and the scratch directory. Ads are snapshots taken at job start; they are read once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One ClassAd: attribute names are case-insensitive, values kept as written.
#[derive(Debug, Clone, Default)]
pub struct Ad {
    attrs: BTreeMap<String, String>,
}

const MAX_AD_BYTES: u64 = 16 << 20;

impl Ad {
    pub fn parse(text: &str) -> Ad {
        let mut attrs = BTreeMap::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once('=') else { continue };
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            attrs.insert(name.to_ascii_lowercase(), value.trim().to_string());
        }
        Ad { attrs }
    }

    pub fn read(path: &Path) -> std::io::Result<Ad> {
        use std::io::Read;
        let mut buf = Vec::new();
        std::fs::File::open(path)?.take(MAX_AD_BYTES).read_to_end(&mut buf)?;
        Ok(Ad::parse(&String::from_utf8_lossy(&buf)))
    }

    pub fn raw(&self, name: &str) -> Option<&str> {
        self.attrs.get(&name.to_ascii_lowercase()).map(|s| s.as_str())
    }

    /// A string literal (`"..."`, with `\"` the only escape HTCondor writes).
    pub fn string(&self, name: &str) -> Option<String> {
        let v = self.raw(name)?;
        let inner = v.strip_prefix('"')?.strip_suffix('"')?;
        Some(inner.replace("\\\"", "\""))
    }

    /// An integer literal, or a product/sum of integer literals such as `10 * 60`,
    /// which is how pools commonly write `MachineMaxVacateTime`.
    pub fn int(&self, name: &str) -> Option<i64> {
        eval_int(self.raw(name)?)
    }

    pub fn real(&self, name: &str) -> Option<f64> {
        let v = self.raw(name)?;
        v.parse::<f64>().ok().or_else(|| eval_int(v).map(|i| i as f64))
    }
}

fn eval_int(expr: &str) -> Option<i64> {
    let expr = expr.trim();
    if let Ok(v) = expr.parse::<i64>() {
        return Some(v);
    }
    if let Some((a, b)) = expr.split_once('+') {
        return eval_int(a)?.checked_add(eval_int(b)?);
    }
    if let Some((a, b)) = expr.split_once('*') {
        return eval_int(a)?.checked_mul(eval_int(b)?);
    }
    None
}

/// The parts of the HTCondor job environment baton uses.
#[derive(Debug, Default)]
pub struct Sandbox {
    pub job: Option<Ad>,
    pub machine: Option<Ad>,
    pub scratch: Option<PathBuf>,
}

fn read_named(var: &str) -> Option<Ad> {
    let path = std::env::var_os(var)?;
    match Ad::read(Path::new(&path)) {
        Ok(ad) => Some(ad),
        Err(e) => {
            tracing::warn!("{var} names {}, which cannot be read ({e}); continuing without it", Path::new(&path).display());
            None
        }
    }
}

impl Sandbox {
    pub fn from_env() -> Sandbox {
        Sandbox {
            job: read_named("_CONDOR_JOB_AD"),
            machine: read_named("_CONDOR_MACHINE_AD"),
            scratch: std::env::var_os("_CONDOR_SCRATCH_DIR").map(PathBuf::from),
        }
    }

    pub fn job_ids(&self) -> crate::manifest::JobIds {
        let Some(job) = &self.job else { return Default::default() };
        crate::manifest::JobIds {
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
        };
        assert_eq!(sb.vacate_window().unwrap().0, 600.0);
        let sb = Sandbox { job: Some(Ad::parse("JobMaxVacateTime = 30")), ..sb };
        assert_eq!(sb.vacate_window().unwrap().0, 30.0);
    }
}
