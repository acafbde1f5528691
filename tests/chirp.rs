//! baton reporting progress into the job ad through the starter's Chirp proxy, run
//! against the proxy double (fixtures/chirp_server.py, checked on its own in
//! doubles::chirp): device, checkpoint, epoch, time and flush attributes arrive, and a
//! failing, hung or absent proxy never disturbs training.

use crate::common;
use crate::common::chirp::Proxy;
use serde_json::Value as Json;
use std::time::Duration;

const ARGS: [&str; 6] = ["--epochs", "3", "--steps-per-epoch", "5", "--step-seconds", "0.02"];

fn run_under(p: &Proxy, store: &std::path::Path, run_id: &str) -> std::process::Child {
    let slot = tempfile::tempdir().unwrap();
    let mut cmd = vec!["python3", common::trainer().to_str().unwrap()];
    cmd.extend_from_slice(&ARGS);
    let env = [("_CONDOR_CHIRP_CONFIG".to_string(), p.dir.path().join("chirp.config").display().to_string())];
    let child = common::spawn_run(slot.path(), store.to_str().unwrap(), run_id, &env, &[], &cmd);
    // The slot directory may go once the process holds its cwd.
    std::mem::forget(slot);
    child
}

/// The last value each attribute was set to.
fn last_values(p: &Proxy) -> std::collections::BTreeMap<String, Json> {
    p.events("set").into_iter().map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e["value"].clone())).collect()
}

#[test]
fn baton_reports_device_progress_and_flush_into_the_job_ad() {
    let p = Proxy::start(&[]);
    let store = tempfile::tempdir().unwrap();
    let out = common::output_of(run_under(&p, store.path(), "chirped"));
    let err = common::text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v = last_values(&p);
    assert_eq!(v["ChirpBatonDevice"]["string"], "cpu", "{v:?}");
    // The final checkpoint (after the three epoch commits) is the last durable one.
    let o = common::baton().args(["inspect", "--store", store.path().to_str().unwrap(), "chirped", "--json"]).output().unwrap();
    let run: Json = serde_json::from_slice(&o.stdout).unwrap();
    let last_seq = run["checkpoints"].as_array().unwrap().last().unwrap()["seq"].clone();
    assert_eq!(v["ChirpBatonSeq"]["int"], last_seq, "{v:?}");
    let last_epoch = run["checkpoints"].as_array().unwrap().iter().filter_map(|c| c["manifest"]["epoch"].as_i64()).next_back();
    assert_eq!(v["ChirpBatonEpoch"]["int"].as_i64(), last_epoch, "{v:?}");
    assert_eq!(last_epoch, Some(2), "the trainer commits epochs 0, 1, 2");
    let t = v["ChirpBatonTime"]["int"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - 120..=now).contains(&t), "ChirpBatonTime {t} is not a recent unix time");
    assert!(v["ChirpBatonFlushSeconds"]["real"].as_str().unwrap().parse::<f64>().unwrap() >= 0.0, "{v:?}");
}

#[test]
fn a_failing_or_hung_chirp_proxy_never_disturbs_training() {
    let reference = common::reference_digest(&ARGS);
    for flags in [&["--fail-set"][..], &["--hang"][..], &["--close"][..]] {
        let p = Proxy::start(flags);
        let store = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let out = common::output_of(run_under(&p, store.path(), "unchirped"));
        let err = common::text(&out.stderr);
        assert!(out.status.success(), "{flags:?}: {err}");
        assert_eq!(common::digest_of(&out.stdout).as_deref(), Some(reference.as_str()), "{flags:?}: {err}");
        // Training takes about a second; a proxy that never answers may cost baton its
        // one-second wait at exit, not a per-report timeout.
        assert!(started.elapsed() < Duration::from_secs(20), "{flags:?} took {:?}", started.elapsed());
    }
    // No proxy at all: the config names a port nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(dir.path().join("chirp.config"), format!("127.0.0.1 {port} cookie\n")).unwrap();
    let slot = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut cmd = vec!["python3", common::trainer().to_str().unwrap()];
    cmd.extend_from_slice(&ARGS);
    let env = [("_CONDOR_CHIRP_CONFIG".to_string(), dir.path().join("chirp.config").display().to_string())];
    let out = common::output_of(common::spawn_run(slot.path(), store.path().to_str().unwrap(), "noproxy", &env, &[], &cmd));
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(common::digest_of(&out.stdout).as_deref(), Some(reference.as_str()));
}
