//! Simulated execute slots, presented to `baton run` exactly as HTCondor presents a
//! real one: a scratch directory, machine and job ad files in the old ClassAd format
//! (one `Name = value` per line, byte-sorted), and the GPU environment variables.

use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct SlotType {
    pub name: &'static str,
    /// `None` for a CPU-only slot.
    pub gpu: Option<Gpu>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub device_name: &'static str,
    pub global_memory_mb: u32,
    pub capability: f64,
    pub driver_version: f64,
}

const fn gpu(name: &'static str, device_name: &'static str, mem: u32, cap: f64) -> SlotType {
    SlotType { name, gpu: Some(Gpu { device_name, global_memory_mb: mem, capability: cap, driver_version: 12.4 }) }
}

/// Slot types seen in CHTC / OSPool GPU pools (names as condor_gpu_discovery reports them).
pub const CATALOG: &[SlotType] = &[
    gpu("a100-40gb", "NVIDIA A100-SXM4-40GB", 40536, 8.0),
    gpu("a100-80gb", "NVIDIA A100-SXM4-80GB", 81051, 8.0),
    gpu("h100-80gb", "NVIDIA H100 80GB HBM3", 81559, 9.0),
    gpu("h200-141gb", "NVIDIA H200", 143771, 9.0),
    gpu("l40s-48gb", "NVIDIA L40S", 46068, 8.9),
    gpu("l40-48gb", "NVIDIA L40", 46068, 8.9),
    gpu("a40-48gb", "NVIDIA A40", 45634, 8.6),
    gpu("v100-32gb", "Tesla V100-SXM2-32GB", 32501, 7.0),
    gpu("t4-16gb", "Tesla T4", 14931, 7.5),
    gpu("rtx2080ti-11gb", "NVIDIA GeForce RTX 2080 Ti", 11012, 7.5),
    SlotType { name: "cpu", gpu: None },
];

pub fn parse_list(s: &str) -> Result<Vec<SlotType>, String> {
    let names: Vec<&str> = s.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Err(format!("the slot list is empty; choose from: {}", known()));
    }
    names
        .iter()
        .map(|n| {
            CATALOG
                .iter()
                .find(|t| t.name.eq_ignore_ascii_case(n))
                .cloned()
                .ok_or_else(|| format!("unknown slot type {n:?}; choose from: {}", known()))
        })
        .collect()
}

fn known() -> String {
    CATALOG.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

impl SlotType {
    pub fn device(&self) -> &str {
        self.gpu.as_ref().map(|g| g.device_name).unwrap_or("cpu")
    }
}

/// A real printed by ClassAds: `%.16G`, with `.0` when it looks integral.
fn real(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// The ads are kept for the tests and the work directory; `baton run` reads the files.
pub struct Slot {
    pub machine_ad: String,
    pub job_ad: String,
    pub env: Vec<(String, String)>,
}

/// Build the ads and environment for attempt `n` of a simulated job.
pub fn materialize(t: &SlotType, n: u64, uuid_seed: u64, dir: &Path, job: &JobIdentity, vacate_window: f64) -> std::io::Result<Slot> {
    let mut machine = vec![
        format!("Cpus = 4"),
        format!("MachineMaxVacateTime = {}", vacate_window.round() as i64),
        format!("Memory = 32768"),
        format!("Name = {}", quote(&format!("slot1_1@sim-{}-{n}.baton.local", t.name))),
        format!("OpSys = \"LINUX\""),
    ];
    let mut env = vec![("_CONDOR_SCRATCH_DIR".to_string(), dir.display().to_string())];
    match &t.gpu {
        Some(g) => {
            let uuid = format!("{:016x}{:016x}", uuid_seed, uuid_seed.rotate_left(17) ^ n);
            let short = &uuid[..8];
            let id = format!("GPU-{short}");
            let device_uuid = format!("{}-{}-{}-{}-{}", &uuid[..8], &uuid[8..12], &uuid[12..16], &uuid[16..20], &uuid[20..32]);
            machine.extend([
                format!("AssignedGPUs = {}", quote(&id)),
                format!("AvailableGPUs = {{ GPUs_GPU_{short} }}"),
                "GPUs = 1".to_string(),
                format!("GPUs_Capability = {}", real(g.capability)),
                format!("GPUs_DeviceName = {}", quote(g.device_name)),
                format!("GPUs_DriverVersion = {}", real(g.driver_version)),
                format!(
                    "GPUs_GPU_{short} = [ Id = {}; Capability = {}; DeviceName = {}; DeviceUuid = {}; GlobalMemoryMb = {} ]",
                    quote(&id),
                    real(g.capability),
                    quote(g.device_name),
                    quote(&device_uuid),
                    g.global_memory_mb
                ),
                format!("GPUs_GlobalMemoryMb = {}", g.global_memory_mb),
            ]);
            for var in ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "_CONDOR_AssignedGPUs"] {
                env.push((var.to_string(), id.clone()));
            }
            env.push(("GPU_DEVICE_ORDINAL".into(), "0".into()));
        }
        None => {
            machine.push("GPUs = 0".into());
            env.push(("CUDA_VISIBLE_DEVICES".into(), String::new()));
        }
    }
    machine.sort();
    let mut jobad = [
        format!("ClusterId = {}", job.cluster),
        format!("GlobalJobId = {}", quote(&job.global_job_id())),
        format!("NumJobStarts = {n}"),
        "ProcId = 0".to_string(),
        "WantFTOnCheckpoint = false".to_string(),
    ];
    jobad.sort();
    let machine_ad = machine.join("\n") + "\n";
    let job_ad = jobad.join("\n") + "\n";
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(".machine.ad"), &machine_ad)?;
    std::fs::write(dir.join(".job.ad"), &job_ad)?;
    env.push(("_CONDOR_MACHINE_AD".into(), dir.join(".machine.ad").display().to_string()));
    env.push(("_CONDOR_JOB_AD".into(), dir.join(".job.ad").display().to_string()));
    Ok(Slot { machine_ad, job_ad, env })
}

/// The simulated job: one cluster id and submit time for all its attempts, so that
/// the run id baton derives from the job ad is the same on every slot.
#[derive(Debug, Clone)]
pub struct JobIdentity {
    pub cluster: u64,
    pub submitted: u64,
}

impl JobIdentity {
    pub fn global_job_id(&self) -> String {
        format!("sim.baton.local#{}.0#{}", self.cluster, self.submitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::htcondor::Ad;

    #[test]
    fn slot_lists_parse_and_errors_name_the_choices() {
        let s = parse_list("a100-40gb, t4-16gb,cpu").unwrap();
        assert_eq!(s.iter().map(|t| t.name).collect::<Vec<_>>(), ["a100-40gb", "t4-16gb", "cpu"]);
        assert!(parse_list("").unwrap_err().contains("empty"));
        assert!(parse_list(" , ").unwrap_err().contains("empty"));
        let e = parse_list("a100-40gb,tpu-v4").unwrap_err();
        assert!(e.contains("\"tpu-v4\"") && e.contains("l40s-48gb"), "{e}");
    }

    #[test]
    fn generated_ads_read_back_as_htcondor_would_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobIdentity { cluster: 42, submitted: 1700000000 };
        let t = parse_list("t4-16gb").unwrap().remove(0);
        let slot = materialize(&t, 3, 99, dir.path(), &job, 120.0).unwrap();
        let m = Ad::parse(&slot.machine_ad);
        assert_eq!(m.string("GPUs_DeviceName").as_deref(), Some("Tesla T4"));
        assert_eq!(m.int("GPUs_GlobalMemoryMb"), Some(14931));
        assert_eq!(m.real("GPUs_Capability"), Some(7.5));
        assert_eq!(m.int("MachineMaxVacateTime"), Some(120));
        let lines: Vec<_> = slot.machine_ad.lines().collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted, "ad files are byte-sorted");
        let j = Ad::parse(&slot.job_ad);
        assert_eq!(j.string("GlobalJobId").as_deref(), Some("sim.baton.local#42.0#1700000000"));
        assert_eq!(j.int("NumJobStarts"), Some(3));
        let cuda = slot.env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES").unwrap();
        assert!(cuda.1.starts_with("GPU-"));
    }
}
