//! baton under an emulated HTCondor starter: ads in the sandbox, the soft kill to
//! baton's pid only, SIGKILL to the whole family when the vacate window ends.

use crate::common::*;
use std::time::{Duration, Instant};

fn descendants(root: i32) -> Vec<i32> {
    let mut map = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| stat[i + 1..].to_string()) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) {
            map.push((pid, ppid));
        }
    }
    let (mut out, mut frontier) = (vec![], vec![root]);
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &map {
            if ppid == p {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

#[test]
fn baton_flushes_and_exits_before_the_starter_kills_the_family() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let s = sandbox.path();
    std::fs::write(s.join(".job.ad"), "ClusterId = 77\nGlobalJobId = \"ap.test#77.0#1700000000\"\nNumJobStarts = 1\nProcId = 0\n").unwrap();
    std::fs::write(
        s.join(".machine.ad"),
        "GPUs = 1\nGPUs_DeviceName = \"Tesla T4\"\nGPUs_GlobalMemoryMb = 14931\nMachineMaxVacateTime = 10 * 2\n",
    )
    .unwrap();
    let mut c = baton();
    c.current_dir(s)
        .env("_CONDOR_SCRATCH_DIR", s)
        .env("_CONDOR_JOB_AD", s.join(".job.ad"))
        .env("_CONDOR_MACHINE_AD", s.join(".machine.ad"))
        .args(["run", "--store", store.path().to_str().unwrap(), "--"])
        .arg("python3")
        .arg(trainer())
        .args(["--epochs", "50", "--steps-per-epoch", "20", "--step-seconds", "0.05", "--blob-mb", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Evict once the trainer is in its loop (its first checkpoint is in the store), not
    // after a fixed time: on a loaded machine a fixed sleep could land while it starts.
    let checkpoints = store.path().join("runs/ap.test#77.0#1700000000/checkpoints");
    let ready = Instant::now();
    while std::fs::read_dir(&checkpoints).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(ready.elapsed() < Duration::from_secs(120), "the trainer never committed a checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "baton ended before the trainer committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let family_before = descendants(child.id() as i32);
    assert!(!family_before.is_empty(), "the trainer should be running");

    // The starter: soft kill to the top process only, hard kill of the family after the
    // window. The window leaves the trainer (half of it) ample time for its save even on a
    // loaded machine; what is tested is that baton is gone before the window ends.
    let window = Duration::from_secs(20);
    let t0 = Instant::now();
    send_signal(child.id(), libc::SIGTERM);
    let mut exited_at = None;
    while t0.elapsed() < window {
        if child.try_wait().unwrap().is_some() {
            exited_at = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in descendants(child.id() as i32).into_iter().chain([child.id() as i32]) {
        send_signal(pid as u32, libc::SIGKILL);
    }
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    let exited_at = exited_at.unwrap_or_else(|| panic!("baton was still running when the window ended:\n{err}"));
    assert!(exited_at < window, "{exited_at:?}");
    assert!(err.contains("vacate window 20 s from machine ad MachineMaxVacateTime"), "{err}");
    for pid in family_before {
        assert!(!alive(pid), "{pid} outlived baton");
    }
    // The run id came from the job ad, and the eviction checkpoint is durable and intact.
    let run = "ap.test#77.0#1700000000";
    let o = baton().args(["inspect", "--store", store.path().to_str().unwrap(), run, "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let last = v["checkpoints"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["manifest"]["reason"], "eviction", "{v}");
    assert_eq!(last["manifest"]["device"], "Tesla T4");
    assert_eq!(last["manifest"]["device_info"]["memory_mb"], 14931);
    assert_eq!(v["attempts"][0]["start"]["device_info"]["source"], "machine ad GPUs_*");
    assert_eq!(v["attempts"][0]["start"]["htcondor"]["num_job_starts"], 1);
    assert_eq!(last["manifest"]["htcondor"]["cluster_id"], 77);
    assert_eq!(v["attempts"][0]["start"]["vacate_window_source"], "machine ad MachineMaxVacateTime");
    assert_eq!(v["attempts"][0]["end"]["ending"], "evicted");
    let o = baton().args(["verify", "--store", store.path().to_str().unwrap(), run]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
}

/// A sandbox as the starter leaves it, and no baton flag but `--store`: the run id, the
/// checkpoint exit code, the window and the device all come from the ads.
#[test]
fn an_exit_85_job_needs_no_flags_under_htcondor() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let s = sandbox.path();
    std::fs::write(
        s.join(".job.ad"),
        "ClusterId = 78\nProcId = 2\nGlobalJobId = \"ap.test#78.2#1700000001\"\nNumJobStarts = 3\nSuccessCheckpointExitCode = 85\nJobMaxVacateTime = 20\n",
    )
    .unwrap();
    std::fs::write(
        s.join(".machine.ad"),
        "GPUs = 1\nAssignedGPUs = \"GPU-5cd7a0b2\"\nGPUs_DeviceName = \"NVIDIA L40S\"\nGPUs_GlobalMemoryMb = 45589\nGPUs_Capability = 8.9\nGPUs_DriverVersion = 12.4\nMachineMaxVacateTime = 600\n",
    )
    .unwrap();
    let args = ["--epochs", "3", "--steps-per-epoch", "5", "--step-seconds", "0.01", "--commit-mode", "exit85"];
    let out = baton()
        .current_dir(s)
        .env("_CONDOR_SCRATCH_DIR", s)
        .env("_CONDOR_JOB_AD", s.join(".job.ad"))
        .env("_CONDOR_MACHINE_AD", s.join(".machine.ad"))
        .env("CUDA_VISIBLE_DEVICES", "GPU-5cd7a0b2")
        .args(["run", "--store", store.path().to_str().unwrap(), "--", "python3"])
        .arg(trainer())
        .args(args)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(digest_of(&out.stdout).unwrap(), reference_digest(&args[..6]), "{err}");
    assert!(err.contains("vacate window 20 s from job ad JobMaxVacateTime"), "{err}");
    assert!(err.contains("checkpoint exit code 85 from the job ad"), "{err}");
    assert!(err.matches("restarting it in place").count() >= 2, "{err}");
    let o = baton().args(["inspect", "--store", store.path().to_str().unwrap(), "ap.test#78.2#1700000001"]).output().unwrap();
    let shown = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(shown.contains("NVIDIA L40S"), "{shown}");
    let o = baton().args(["inspect", "--store", store.path().to_str().unwrap(), "ap.test#78.2#1700000001", "1"]).output().unwrap();
    let shown = text(&o.stdout);
    assert!(shown.contains("45589 MB, capability 8.9, CUDA driver 12.4"), "{shown}");
    assert!(shown.contains("ap.test#78.2#1700000001 (start 3)"), "{shown}");
}

#[test]
fn ads_without_a_window_say_so_and_use_the_default() {
    let sandbox = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let s = sandbox.path();
    std::fs::write(s.join(".job.ad"), "ClusterId = 79\nProcId = 0\n").unwrap();
    std::fs::write(s.join(".machine.ad"), "Cpus = 4\n").unwrap();
    let out = baton()
        .current_dir(s)
        .env("_CONDOR_JOB_AD", s.join(".job.ad"))
        .env("_CONDOR_MACHINE_AD", s.join(".machine.ad"))
        .args(["run", "--store", store.path().to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("neither JobMaxVacateTime in the job ad nor MachineMaxVacateTime in the machine ad"), "{err}");
    assert!(err.contains("vacate window 30 s from the default"), "{err}");
}
