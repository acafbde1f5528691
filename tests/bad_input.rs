//! Bad input gets one clear message and a documented exit code, and nothing starts.

use crate::common::*;
use std::time::{Duration, Instant};

fn run_fails(args: &[&str], env: &[(String, String)], code: i32, must_say: &str) {
    let slot = tempfile::tempdir().unwrap();
    let mut c = baton();
    c.current_dir(slot.path()).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(must_say), "{args:?}: expected {must_say:?} in: {err}");
    assert_eq!(err.matches("error:").count(), 1, "one clear error, not a cascade: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_store_scheme() {
    run_fails(&["run", "--store", "gs://bucket/x", "--run-id", "r", "--", "true"], &[], 2, "unknown store scheme 'gs://'");
    run_fails(&["inspect", "--store", "ftp://x"], &[], 2, "unknown store scheme");
}

#[test]
fn missing_command_after_dashes() {
    run_fails(&["run", "--store", "s", "--run-id", "r"], &[], 2, "needs a command after `--`");
    run_fails(&["run", "--store", "s", "--run-id", "r", "--"], &[], 2, "needs a command after `--`");
}

#[test]
fn command_that_does_not_exist() {
    let store = tempfile::tempdir().unwrap();
    run_fails(
        &["run", "--store", store.path().to_str().unwrap(), "--run-id", "r", "--", "no-such-trainer-xyz"],
        &[],
        127,
        "command not found",
    );
    let script = store.path().join("not-exec.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    run_fails(
        &["run", "--store", store.path().to_str().unwrap(), "--run-id", "r", "--", script.to_str().unwrap()],
        &[],
        126,
        "permission denied",
    );
}

#[test]
fn run_ids_that_could_escape() {
    for bad in ["a/b", "..", "x/../y", "../up"] {
        run_fails(&["run", "--store", "s", "--run-id", bad, "--", "true"], &[], 2, "run id");
    }
    run_fails(&["run", "--store", "s", "--", "true"], &[], 2, "no run id");
    run_fails(&["run", "--store", "s", "--", "true"], &[("BATON_RUN_ID".into(), "a/b".into())], 2, "BATON_RUN_ID");
}

#[test]
fn commit_outside_a_run() {
    run_fails(&["commit", "--epoch", "1"], &[], 2, "must be run by a command started with `baton run`");
}

#[test]
fn unreachable_s3_endpoint() {
    let port = free_port(); // nothing listens there
    let env = vec![
        ("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID".into(), "k".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
    ];
    let t0 = Instant::now();
    run_fails(&["run", "--store", "s3://bucket/p", "--run-id", "r", "--", "true"], &env, 70, "cannot reach the store");
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?} to give up", t0.elapsed());
}

#[test]
fn wrong_s3_credentials() {
    // moto checks credentials once the first request (our bucket creation) is done.
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    moto.create_bucket("locked");
    let env = moto.env("AKIAWRONGKEY00000000", "wrong-secret");
    run_fails(&["run", "--store", "s3://locked/p", "--run-id", "r", "--", "true"], &env, 70, "refused the credentials");
    run_fails(&["inspect", "--store", "s3://locked/p"], &env, 70, "refused the credentials");
}

#[test]
fn vacate_window_too_short() {
    run_fails(&["run", "--store", "s", "--run-id", "r", "--vacate-window", "1s", "--", "true"], &[], 2, "needs at least 2 s");
    run_fails(&["run", "--store", "s", "--run-id", "r", "--vacate-window", "soon", "--", "true"], &[], 2, "--vacate-window");
}

#[test]
fn missing_s3_credentials() {
    let moto = Moto::start();
    moto.create_bucket("bkt");
    let env = [("AWS_ENDPOINT_URL".to_string(), moto.endpoint()), ("HOME".to_string(), "/nonexistent".to_string())];
    let mut c = baton();
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE"] {
        c.env_remove(k);
    }
    let slot = tempfile::tempdir().unwrap();
    let out = c
        .current_dir(slot.path())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["run", "--store", "s3://bkt/p", "--run-id", "r", "--", "true"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no S3 credentials") && err.contains("AWS_ACCESS_KEY_ID_FILE"), "{err}");
}

#[test]
fn s3_keys_delivered_as_files_work() {
    let moto = Moto::start();
    moto.create_bucket("bkt");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "AKIAFROMFILE0000\n").unwrap();
    std::fs::write(dir.path().join("secret"), "secret-from-file\n").unwrap();
    let mut c = baton();
    c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    let out = c
        .current_dir(dir.path())
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID_FILE", dir.path().join("key"))
        .env("AWS_SECRET_ACCESS_KEY_FILE", dir.path().join("secret"))
        .args(["run", "--store", "s3://bkt/p", "--run-id", "r", "--", "sh", "-c", "echo x > $BATON_CHECKPOINT_DIR/f"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("secret-from-file"));
}

#[test]
fn checkpoint_exit_codes_outside_1_to_255() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // 0 would restart a finished command forever.
    run_fails(&["run", "--store", s, "--run-id", "r", "--checkpoint-exit-code", "0", "--", "true"], &[], 2, "0 means the command finished");
    for code in ["300", "256", "x"] {
        run_fails(&["run", "--store", s, "--run-id", "r", "--checkpoint-exit-code", code, "--", "true"], &[], 2, "from 1 to 255");
    }
}

#[test]
fn checkpoint_dir_that_is_a_file() {
    let store = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let file = slot.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    run_fails(&["run", "--store", store.path().to_str().unwrap(), "--run-id", "r", "--dir", f, "--", "true"], &[], 2, f);
}

#[test]
fn restore_into_a_dangling_symlink() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "r", &[], &[], &["sh", "-c", "echo w > $BATON_CHECKPOINT_DIR/w"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let link = slot.path().join("dangling");
    std::os::unix::fs::symlink(slot.path().join("nowhere"), &link).unwrap();
    run_fails(&["restore", "--store", s, "r", "--to", link.to_str().unwrap()], &[], 2, "is a symbolic link");
    assert!(!slot.path().join("nowhere").exists(), "restore followed the link");
}

#[test]
fn an_error_names_each_cause_once() {
    // A damaged manifest: its parse error is part of the message, and must not be
    // printed a second time as the cause.
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let dir = store.path().join("runs/r/checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0000000001.json"), b"{not json").unwrap();
    let out = baton().args(["inspect", "--store", s, "r", "1"]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    let cause = "key must be a string";
    assert_eq!(err.matches(cause).count(), 1, "the cause is printed more than once: {err}");
}
