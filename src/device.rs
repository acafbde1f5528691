//! Which device this slot gives the trainer: the machine ad first (what HTCondor
//! assigned), then `nvidia-smi` for the GPUs in `CUDA_VISIBLE_DEVICES`, else `cpu`.

use crate::htcondor::Sandbox;

pub fn detect(sandbox: &Sandbox) -> String {
    if let Some(m) = &sandbox.machine {
        let name = m.string("GPUs_DeviceName").or_else(|| m.string("CUDADeviceName"));
        let gpus = m.int("GPUs").or_else(|| m.int("CUDAGPUs")).unwrap_or(1);
        if let Some(name) = name {
            return if gpus > 1 { format!("{gpus}x {name}") } else { name };
        }
    }
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    if !visible.trim().is_empty() && visible.trim() != "-1" {
        if let Some(name) = nvidia_smi_names(visible.trim()) {
            return name;
        }
    }
    "cpu".to_string()
}

fn nvidia_smi_names(visible: &str) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", visible])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    match names.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many if many.iter().all(|n| n == &many[0]) => Some(format!("{}x {}", many.len(), many[0])),
        many => Some(many.join(" + ")),
    }
}
