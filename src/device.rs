//! Which device this slot gives the trainer. In order:
//! 1. the machine ad's `GPUs_*` summary attributes (what HTCondor assigned);
//! 2. when those are missing (condor_gpu_discovery drops a `GPUs_<prop>` when the
//!    assigned GPUs differ in it), the nested per-GPU ads `GPUs_GPU_<id>` of the GPUs
//!    in `AssignedGPUs` (or `AvailableGPUs`);
//! 3. the `CUDA*` names older pools publish;
//! 4. without ads, `nvidia-smi` for the GPUs in `CUDA_VISIBLE_DEVICES`;
//! 5. else `cpu`.

use std::fmt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::classad::{Ad, Value};
use crate::htcondor::Sandbox;

/// What baton knows about the slot's device. `Display` gives the short name baton
/// records and passes as `BATON_DEVICE` (`NVIDIA A100-SXM4-40GB`, `2x Tesla T4`,
/// `NVIDIA A100-SXM4-40GB + Tesla T4`, `cpu`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The model; for GPUs of different models, their names joined with ` + `.
    pub name: String,
    /// Memory per GPU (the smallest, when they differ).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// CUDA compute capability (the lowest, when they differ).
    #[serde(default)]
    pub capability: Option<f64>,
    /// The highest CUDA version the driver supports (HTCondor's `DriverVersion`).
    #[serde(default)]
    pub driver_version: Option<f64>,
    /// GPUs assigned; 0 for `cpu`.
    pub count: u32,
    /// Where this came from: "machine ad GPUs_*", "machine ad per-GPU ads",
    /// "machine ad CUDA*", "nvidia-smi" or "none".
    pub source: String,
}

/// More GPUs than any slot has: a longer `AssignedGPUs` or `AvailableGPUs` is damaged,
/// and reading it all would copy a nested ad per entry.
const MAX_GPUS: usize = 64;

/// Joins the names of GPUs of different models.
const MIXED: &str = " + ";

impl DeviceInfo {
    fn cpu() -> DeviceInfo {
        DeviceInfo { name: "cpu".into(), memory_mb: None, capability: None, driver_version: None, count: 0, source: "none".into() }
    }
}

impl DeviceInfo {
    /// Memory, capability, driver and source, for `inspect`: `40960 MB, capability 8.0,
    /// CUDA driver 12.2, from machine ad GPUs_*`.
    pub fn details(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.memory_mb {
            parts.push(format!("{m} MB"));
        }
        if let Some(c) = self.capability {
            parts.push(format!("capability {c:.1}"));
        }
        if let Some(d) = self.driver_version {
            parts.push(format!("CUDA driver {d}"));
        }
        parts.push(format!("from {}", self.source));
        parts.join(", ")
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A mixed name already lists every GPU.
        if self.count > 1 && !self.name.contains(MIXED) {
            write!(f, "{}x {}", self.count, self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

pub fn detect_info(sandbox: &Sandbox) -> DeviceInfo {
    if let Some(info) = sandbox.machine.as_ref().and_then(|m| from_machine_ad(m.classad())) {
        return info;
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    if let Some(visible) = visible_gpus(&visible) {
        if let Some(info) = from_nvidia_smi(visible, &mut |args| run_nvidia_smi(args)) {
            return info;
        }
    }
    DeviceInfo::cpu()
}

// ---------------------------------------------------------------------------------
// The machine ad

/// One GPU's properties, from a nested per-GPU ad or the summary attributes.
#[derive(Debug, Default, Clone, PartialEq)]
struct Gpu {
    name: Option<String>,
    memory_mb: Option<u64>,
    capability: Option<f64>,
    driver_version: Option<f64>,
}

impl Gpu {
    /// The properties under `prefix` (`GPUs_`, `CUDA`, or "" in a nested ad).
    fn read(ad: &Ad, prefix: &str) -> Gpu {
        Gpu {
            name: ad.string(&format!("{prefix}DeviceName")),
            memory_mb: ad.real(&format!("{prefix}GlobalMemoryMb")).and_then(megabytes),
            capability: ad.real(&format!("{prefix}Capability")).filter(|c| c.is_finite()),
            driver_version: ad.real(&format!("{prefix}DriverVersion")).filter(|c| c.is_finite()),
        }
    }
}

fn megabytes(v: f64) -> Option<u64> {
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

fn min_of<T: PartialOrd + Copy>(vals: impl Iterator<Item = Option<T>>) -> Option<T> {
    vals.flatten().fold(None, |m, v| match m {
        Some(m) if m <= v => Some(m),
        _ => Some(v),
    })
}

fn from_machine_ad(m: &Ad) -> Option<DeviceInfo> {
    let gpus = m.int("GPUs");
    // `GPUs = 0`: this slot has no GPU, whatever else the machine has.
    if gpus == Some(0) {
        return None;
    }
    let per_gpu = per_gpu_ads(m);
    let count_or = |fallback: usize| -> u32 {
        gpus.or_else(|| m.int("CUDAGPUs")).and_then(|n| u32::try_from(n).ok()).filter(|&n| n > 0).unwrap_or(fallback.max(1) as u32)
    };
    // A property missing from the summary is taken from the per-GPU ads.
    let fill = |summary: Gpu, source: &str, count: u32| -> DeviceInfo {
        DeviceInfo {
            name: summary.name.unwrap_or_default(),
            memory_mb: summary.memory_mb.or_else(|| min_of(per_gpu.iter().map(|g| g.memory_mb))),
            capability: summary.capability.or_else(|| min_of(per_gpu.iter().map(|g| g.capability))),
            driver_version: summary.driver_version.or_else(|| min_of(per_gpu.iter().map(|g| g.driver_version))),
            count,
            source: source.into(),
        }
    };

    let summary = Gpu::read(m, "GPUs_");
    if summary.name.is_some() {
        return Some(fill(summary, "machine ad GPUs_*", count_or(per_gpu.len())));
    }
    let names: Vec<&str> = per_gpu.iter().filter_map(|g| g.name.as_deref()).collect();
    if let Some(first) = names.first() {
        let name = if names.iter().all(|n| n == first) { first.to_string() } else { names.join(MIXED) };
        let summary = Gpu { name: Some(name), ..summary };
        return Some(fill(summary, "machine ad per-GPU ads", per_gpu.len() as u32));
    }
    let cuda = Gpu::read(m, "CUDA");
    if cuda.name.is_some() {
        return Some(fill(cuda, "machine ad CUDA*", count_or(1)));
    }
    None
}

/// The nested ads of the slot's GPUs: those named in `AssignedGPUs`
/// (`"GPU-fd425f30,GPU-..."`, ad `GPUs_GPU_fd425f30`), else the references in
/// `AvailableGPUs` (`{ GPUs_GPU_fd425f30 }`).
fn per_gpu_ads(m: &Ad) -> Vec<Gpu> {
    let mut assigned: Vec<String> = Vec::new();
    for id in m.string("AssignedGPUs").unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if assigned.len() == MAX_GPUS {
            break;
        }
        if !assigned.iter().any(|a| a == id) {
            assigned.push(id.to_string());
        }
    }
    let ads: Vec<Ad> = if !assigned.is_empty() {
        assigned.iter().filter_map(|id| gpu_ad_by_id(m, id)).collect()
    } else {
        m.list("AvailableGPUs")
            .unwrap_or_default()
            .into_iter()
            .take(MAX_GPUS)
            .filter_map(|v| match v {
                Value::Ad(a) => Some(a),
                Value::String(id) => gpu_ad_by_id(m, &id),
                _ => None,
            })
            .collect()
    };
    ads.iter().map(|a| Gpu::read(a, "")).collect()
}

fn gpu_ad_by_id(m: &Ad, id: &str) -> Option<Ad> {
    if let Some(ad) = m.ad(&format!("GPUs_{}", id.replace('-', "_"))) {
        return Some(ad);
    }
    // Not under the usual name: any nested GPU ad whose `Id` it is.
    m.iter().find_map(|a| {
        let ad = a.value.as_ad()?;
        let gpu_named = a.name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("GPUs_"));
        (gpu_named && ad.string("Id").as_deref() == Some(id)).then(|| ad.clone())
    })
}

// ---------------------------------------------------------------------------------
// nvidia-smi

/// The GPU ids in `CUDA_VISIBLE_DEVICES`, or `None` when it hides every GPU.
fn visible_gpus(v: &str) -> Option<&str> {
    let v = v.trim();
    let hidden = v.is_empty() || v == "-1" || v.eq_ignore_ascii_case("none") || v.eq_ignore_ascii_case("NoDevFiles");
    (!hidden).then_some(v)
}

const SMI_FIELDS: &str = "name,memory.total,compute_cap,driver_version";

/// Ask nvidia-smi about the visible GPUs. `run` runs it with the given arguments and
/// returns its output when it succeeds.
fn from_nvidia_smi(visible: &str, run: &mut dyn FnMut(&[String]) -> Option<String>) -> Option<DeviceInfo> {
    let format = "--format=csv,noheader,nounits".to_string();
    let direct = run(&[format!("--query-gpu={SMI_FIELDS}"), format.clone(), "-i".into(), visible.into()]);
    let mut rows: Vec<Gpu> = direct.as_deref().map(|out| out.lines().filter_map(|l| smi_row(&fields(l))).collect()).unwrap_or_default();
    if rows.is_empty() {
        // `-i` takes indices and full UUIDs; HTCondor hands out short UUIDs
        // (GPU-fd425f30), which CUDA accepts as prefixes but `-i` may refuse:
        // list every GPU and match by index or UUID prefix.
        let wanted: Vec<&str> = visible.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let all = run(&[format!("--query-gpu=index,uuid,{SMI_FIELDS}"), format])?;
        let listed: Vec<Vec<&str>> = all.lines().map(fields).filter(|f| f.len() >= 3).collect();
        for w in &wanted {
            let hit = listed.iter().find(|f| f[0] == *w || (w.len() > 4 && f[1].get(..w.len()).is_some_and(|p| p.eq_ignore_ascii_case(w))));
            if let Some(row) = hit.and_then(|f| smi_row(&f[2..])) {
                rows.push(row);
            }
        }
    }
    let first = rows.first()?.name.clone()?;
    let same = rows.iter().all(|r| r.name.as_deref() == Some(first.as_str()));
    let name = if same { first } else { rows.iter().filter_map(|r| r.name.as_deref()).collect::<Vec<_>>().join(MIXED) };
    Some(DeviceInfo {
        name,
        memory_mb: min_of(rows.iter().map(|r| r.memory_mb)),
        capability: min_of(rows.iter().map(|r| r.capability)),
        driver_version: None,
        count: rows.len() as u32,
        source: "nvidia-smi".into(),
    })
}

fn fields(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

/// One row of `name, memory.total, compute_cap, driver_version`. nvidia-smi's
/// driver_version is the kernel driver's (`550.54.15`), not the CUDA version the
/// machine ad's DriverVersion gives (`12.4`), so it is not reported as one.
fn smi_row(f: &[&str]) -> Option<Gpu> {
    let name = f.first().filter(|n| !n.is_empty() && !n.starts_with('['))?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(Gpu {
        name: Some(name.to_string()),
        memory_mb: num(1).and_then(megabytes),
        capability: num(2).filter(|c| c.is_finite()),
        driver_version: None,
    })
}

/// A hung driver must not hang the job's start.
const SMI_TIMEOUT: Duration = Duration::from_secs(10);

fn run_nvidia_smi(args: &[String]) -> Option<String> {
    let mut child = Command::new("nvidia-smi").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(1 << 20).read_to_end(&mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < SMI_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                tracing::warn!("nvidia-smi did not answer within {} s; not using it", SMI_TIMEOUT.as_secs());
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let out = reader.join().ok()?;
    status.success().then(|| String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(text: &str) -> Option<DeviceInfo> {
        let (ad, errs) = Ad::parse(text);
        assert!(errs.is_empty(), "{errs:?}");
        from_machine_ad(&ad)
    }

    #[test]
    fn summary_attributes_come_first() {
        let d = machine(concat!(
            "AssignedGPUs = \"GPU-fd425f30\"\n",
            "GPUs = 1\n",
            "GPUs_Capability = 8.0\n",
            "GPUs_DeviceName = \"NVIDIA A100-SXM4-40GB\"\n",
            "GPUs_DriverVersion = 12.4\n",
            "GPUs_GPU_fd425f30 = [ Id = \"GPU-fd425f30\"; Capability = 8.0; DeviceName = \"NVIDIA A100-SXM4-40GB\"; GlobalMemoryMb = 40536 ]\n",
            "GPUs_GlobalMemoryMb = 40536\n",
        ))
        .unwrap();
        assert_eq!(
            d,
            DeviceInfo {
                name: "NVIDIA A100-SXM4-40GB".into(),
                memory_mb: Some(40536),
                capability: Some(8.0),
                driver_version: Some(12.4),
                count: 1,
                source: "machine ad GPUs_*".into()
            }
        );
        assert_eq!(d.to_string(), "NVIDIA A100-SXM4-40GB");
        let two = machine("GPUs = 2\nGPUs_DeviceName = \"Tesla T4\"\n").unwrap();
        assert_eq!(two.to_string(), "2x Tesla T4");
        assert_eq!((two.count, two.memory_mb), (2, None));
    }

    #[test]
    fn different_gpus_are_read_from_their_nested_ads() {
        let text = concat!(
            "AssignedGPUs = \"GPU-fd425f30,GPU-0b1c2d3e\"\n",
            "AvailableGPUs = { GPUs_GPU_fd425f30,GPUs_GPU_0b1c2d3e }\n",
            "GPUs = 2\n",
            "GPUs_DriverVersion = 12.4\n",
            "GPUs_GPU_0b1c2d3e = [ Id = \"GPU-0b1c2d3e\"; Capability = 7.5; DeviceName = \"Tesla T4\"; GlobalMemoryMb = 14931 ]\n",
            "GPUs_GPU_fd425f30 = [ Id = \"GPU-fd425f30\"; Capability = 8.0; DeviceName = \"NVIDIA A100-SXM4-40GB\"; GlobalMemoryMb = 40536 ]\n",
        );
        let d = machine(text).unwrap();
        assert_eq!(d.name, "NVIDIA A100-SXM4-40GB + Tesla T4");
        assert_eq!(d.to_string(), "NVIDIA A100-SXM4-40GB + Tesla T4");
        assert_eq!((d.count, d.memory_mb, d.capability, d.driver_version), (2, Some(14931), Some(7.5), Some(12.4)));
        assert_eq!(d.source, "machine ad per-GPU ads");
        // Without AssignedGPUs, the references in AvailableGPUs are followed.
        let no_assigned: String = text.lines().filter(|l| !l.starts_with("AssignedGPUs")).map(|l| format!("{l}\n")).collect();
        assert_eq!(machine(&no_assigned).unwrap().name, "NVIDIA A100-SXM4-40GB + Tesla T4");
        // Nested ads under another name are found by their Id.
        let renamed = "AssignedGPUs = \"GPU-aa\"\nGPUs_Other = [ Id = \"GPU-aa\"; DeviceName = \"NVIDIA L40\" ]\n";
        assert_eq!(machine(renamed).unwrap().to_string(), "NVIDIA L40");
        // Two of the same model whose summary vanished for another property.
        let same = "AssignedGPUs = \"GPU-a,GPU-b\"\nGPUs_GPU_a = [ DeviceName = \"Tesla T4\"; GlobalMemoryMb = 15000 ]\nGPUs_GPU_b = [ DeviceName = \"Tesla T4\"; GlobalMemoryMb = 14931 ]\n";
        let d = machine(same).unwrap();
        assert_eq!((d.to_string(), d.memory_mb), ("2x Tesla T4".into(), Some(14931)));
    }

    #[test]
    fn a_damaged_gpu_list_is_read_once_per_gpu() {
        // Found with the classad fuzz target, which asks for the device: 100,000 mentions
        // of one GPU in 200 KB of ad copied its nested ad once per mention (gigabytes).
        let ids = vec!["GPU-x"; 1000].join(",");
        let d = machine(&format!("AssignedGPUs = \"{ids}\"\nGPUs_GPU_x = [ Id = \"GPU-x\"; DeviceName = \"Tesla T4\" ]\n")).unwrap();
        assert_eq!((d.to_string(), d.count), ("Tesla T4".into(), 1));
        // Distinct GPUs past any real slot: the first MAX_GPUS are read, from either list.
        let names: Vec<String> = (0..1000).map(|i| format!("GPU-{i}")).collect();
        let ads: String = (0..1000).map(|i| format!("GPUs_GPU_{i} = [ Id = \"GPU-{i}\"; DeviceName = \"Tesla T4\" ]\n")).collect();
        let d = machine(&format!("AssignedGPUs = \"{}\"\n{ads}", names.join(","))).unwrap();
        assert_eq!(d.count, MAX_GPUS as u32);
        let refs: Vec<String> = (0..1000).map(|i| format!("GPUs_GPU_{i}")).collect();
        let d = machine(&format!("AvailableGPUs = {{ {} }}\n{ads}", refs.join(","))).unwrap();
        assert_eq!(d.count, MAX_GPUS as u32);
    }

    #[test]
    fn older_pools_use_cuda_names() {
        let d = machine("CUDACapability = 7.0\nCUDADeviceName = \"Tesla V100-SXM2-32GB\"\nCUDADriverVersion = 11.2\nCUDAGlobalMemoryMb = 32501\nGPUs = 2\n").unwrap();
        assert_eq!(
            (d.to_string().as_str(), d.memory_mb, d.capability, d.driver_version, d.source.as_str()),
            ("2x Tesla V100-SXM2-32GB", Some(32501), Some(7.0), Some(11.2), "machine ad CUDA*")
        );
    }

    #[test]
    fn a_slot_without_gpus_has_no_device_from_the_ad() {
        assert_eq!(machine("GPUs = 0\nGPUs_DeviceName = \"Tesla T4\"\n"), None);
        assert_eq!(machine("Cpus = 4\n"), None);
    }

    #[test]
    fn nvidia_smi_output_is_read() {
        assert_eq!(visible_gpus(" "), None);
        assert_eq!(visible_gpus("-1"), None);
        assert_eq!(visible_gpus("GPU-fd425f30"), Some("GPU-fd425f30"));
        let mut calls = Vec::new();
        let d = from_nvidia_smi("0,1", &mut |args| {
            calls.push(args.to_vec());
            Some("NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\nNVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n".into())
        })
        .unwrap();
        assert_eq!(calls, [["--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader,nounits", "-i", "0,1"]]);
        assert_eq!(
            (d.to_string().as_str(), d.memory_mb, d.capability, d.driver_version),
            ("2x NVIDIA H100 80GB HBM3", Some(81559), Some(9.0), None)
        );
        // Short UUIDs that -i refuses: every GPU is listed and matched by UUID prefix.
        let d = from_nvidia_smi("GPU-fd425f30", &mut |args| match args.len() {
            4 => None,
            _ => Some(
                "0, GPU-0b1c2d3e-0000-0000-0000-000000000000, Tesla T4, 15360, 7.5, 550.54.15\n1, GPU-fd425f30-3936-73ad-2528-bd8348d2f942, NVIDIA L40S, 46068, 8.9, 550.54.15\n"
                    .into(),
            ),
        })
        .unwrap();
        assert_eq!((d.to_string().as_str(), d.count, d.source.as_str()), ("NVIDIA L40S", 1, "nvidia-smi"));
        let d = from_nvidia_smi("0,1", &mut |args| match args.len() {
            4 => Some(String::new()),
            _ => Some("0, GPU-0b, Tesla T4, [N/A], [N/A], 550\n1, GPU-fd, NVIDIA L40S, 46068, 8.9, 550\n".into()),
        })
        .unwrap();
        assert_eq!((d.to_string().as_str(), d.memory_mb, d.capability), ("Tesla T4 + NVIDIA L40S", Some(46068), Some(8.9)));
        assert_eq!(from_nvidia_smi("0", &mut |_| None), None);
        assert_eq!(from_nvidia_smi("7", &mut |a| (a.len() == 2).then(|| "0, GPU-0b, Tesla T4, 1, 7.5, 550\n".to_string())), None);
    }

    #[test]
    fn device_info_serializes_with_optional_fields_defaulted() {
        let d: DeviceInfo = serde_json::from_str(r#"{"name":"cpu","count":0,"source":"none"}"#).unwrap();
        assert_eq!(d, DeviceInfo::cpu());
        let round: DeviceInfo = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(round, d);
        assert_eq!(d.to_string(), "cpu");
    }
}
