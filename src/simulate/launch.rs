//! The simulator's side of a slot: start `baton run` in it as the starter would, kill
//! the whole family at the end of a vacate window, empty the slot afterwards.

use std::path::Path;

use super::Options;

pub fn kill_family(root: u32) {
    let family = crate::process::descendants(root as i32);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(root as i32), nix::sys::signal::Signal::SIGKILL);
    for pid in family {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

pub fn spawn_baton(
    opts: &Options,
    store_url: &str,
    extra: &[String],
    env: &[(String, String)],
    dir: &Path,
) -> anyhow::Result<std::process::Child> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find baton's own executable, which runs each attempt")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("run").args(["--store", store_url]).args(&opts.run_args).args(extra).arg("--").args(&opts.command);
    for k in [
        "BATON_RUN_ID",
        "BATON_SOCKET",
        "BATON_STORE",
        "_CONDOR_JOB_AD",
        "_CONDOR_MACHINE_AD",
        "_CONDOR_SCRATCH_DIR",
        "CUDA_VISIBLE_DEVICES",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // Its own group, so a Ctrl-C at the terminal reaches only the simulator, which decides.
    cmd.process_group(0);
    let log = |name: &str| std::fs::File::create(dir.join(name)).with_context(|| format!("cannot create {}", dir.join(name).display()));
    cmd.stdout(log("stdout.log")?);
    cmd.stderr(log("baton.log")?);
    // A baton replaced while the simulation runs (an upgrade, a rebuild) is gone from
    // its path: say so rather than a bare "No such file or directory".
    cmd.spawn()
        .with_context(|| format!("cannot start {} for the next attempt (was baton replaced or removed while simulate ran?)", exe.display()))
}

/// What an evicted attempt's slot keeps: the logs and ads, for the report and for people.
const SLOT_KEEPS: [&str; 4] = ["baton.log", "stdout.log", ".job.ad", ".machine.ad"];

/// Empty a slot the job has left, as HTCondor's starter deletes the scratch directory
/// of a job that leaves a slot. Besides keeping the disk from filling with stale
/// checkpoints, this spares the disk writing back (for nobody) the trainer's last save,
/// which would otherwise compete with the next attempt's restore and flushes.
pub fn clear_slot(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if SLOT_KEEPS.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        let path = e.path();
        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}
