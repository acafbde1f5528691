//! The core promise, end to end through the binary: a run evicted with SIGTERM at
//! random moments, restarted each time on an empty slot, ends bit-exact.

mod common;
use common::*;

fn random_delays(n: usize) -> Vec<f64> {
    let mut rng = Rng::from_time();
    (0..n).map(|_| rng.uniform(0.9, 2.2)).collect()
}

fn assert_evictions_recorded(store: &str, run: &str, env: &[(String, String)], attempts_at_least: usize) {
    let mut c = baton();
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(["inspect", "--store", store, run, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let attempts = v["attempts"].as_array().unwrap();
    assert!(attempts.len() >= attempts_at_least, "{v}");
    let evicted = attempts.iter().filter(|a| a["end"]["ending"] == "evicted").count();
    assert!(evicted >= 1, "no attempt recorded as evicted: {v}");
    let reasons: Vec<_> = v["checkpoints"].as_array().unwrap().iter().map(|c| c["manifest"]["reason"].as_str().unwrap().to_string()).collect();
    assert!(reasons.contains(&"eviction".to_string()), "no eviction checkpoint in {reasons:?}");
    assert_eq!(reasons.last().map(String::as_str), Some("final"));
}

#[test]
fn directory_store_evicted_runs_end_bit_exact() {
    let store = tempfile::tempdir().unwrap();
    let store_url = store.path().to_str().unwrap();
    let (digest, logs) = run_with_evictions(store_url, "dir-run", &[], TRAINER_ARGS, &random_delays(3));
    assert_eq!(digest, reference_digest(TRAINER_ARGS), "digest differs from the uninterrupted run\n{logs}");
    assert!(logs.contains("restored checkpoint"), "no attempt restored anything:\n{logs}");
    assert_evictions_recorded(store_url, "dir-run", &[], 2);
    // And what is stored verifies.
    let out = baton().args(["verify", "--store", store_url, "dir-run"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn s3_store_evicted_runs_end_bit_exact_and_never_leak_credentials() {
    let moto = Moto::start();
    moto.create_bucket("ckpt");
    let (key, secret) = ("AKIABATONTESTKEY0042", "sEcReT/baton+test+value+do+not+log");
    let env = moto.env(key, secret);
    let (digest, logs) = run_with_evictions("s3://ckpt/runs-prefix", "s3-run", &env, TRAINER_ARGS, &random_delays(2));
    assert_eq!(digest, reference_digest(TRAINER_ARGS), "digest differs from the uninterrupted run\n{logs}");
    assert_evictions_recorded("s3://ckpt/runs-prefix", "s3-run", &env, 2);

    // Credentials appear in no log line, manifest or attempt record.
    let mut c = baton();
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let inspected = c.args(["-v", "inspect", "--store", "s3://ckpt/runs-prefix", "s3-run", "--json"]).output().unwrap();
    let mut everything = logs.clone() + &text(&inspected.stdout) + &text(&inspected.stderr);
    for seq in 1..=3 {
        let mut c = baton();
        c.envs(env.iter().map(|(k, v)| (k, v)));
        let o = c.args(["inspect", "--store", "s3://ckpt/runs-prefix", "s3-run", &seq.to_string(), "--json"]).output().unwrap();
        everything += &text(&o.stdout);
    }
    assert!(everything.contains("\"attempts\""), "inspect output missing");
    for needle in [key, secret, "sEcReT"] {
        assert!(!everything.contains(needle), "credential {needle:?} leaked");
    }
}

#[test]
fn checkpoint_exit_code_restarts_in_place_and_ends_bit_exact() {
    let store = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let mut args = vec!["python3", trainer().to_str().unwrap()];
    args.extend_from_slice(TRAINER_ARGS);
    args.extend_from_slice(&["--commit-mode", "exit85"]);
    let out = output_of(spawn_run(slot.path(), store.path().to_str().unwrap(), "exit85", &[], &["--checkpoint-exit-code", "85"], &args));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(digest_of(&out.stdout).unwrap(), reference_digest(TRAINER_ARGS), "{err}");
    assert!(err.matches("restarting it in place").count() >= 4, "{err}");
    let inspected = baton().args(["inspect", "--store", store.path().to_str().unwrap(), "exit85", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let exits = v["checkpoints"].as_array().unwrap().iter().filter(|c| c["manifest"]["reason"] == "checkpoint-exit").count();
    assert!(exits >= 4, "expected a checkpoint per epoch: {v}");
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "restarts in place are one attempt");
}

#[test]
fn socket_commits_work_without_the_baton_binary() {
    let store = tempfile::tempdir().unwrap();
    let (digest, logs) = run_with_evictions(
        store.path().to_str().unwrap(),
        "sock",
        &[],
        &[TRAINER_ARGS, &["--commit-mode", "socket"]].concat(),
        &random_delays(1),
    );
    assert_eq!(digest, reference_digest(TRAINER_ARGS), "{logs}");
}
