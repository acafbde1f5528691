//! The core promise, end to end through the binary: a run evicted with SIGTERM at
//! random moments, restarted each time on an empty slot, ends bit-exact.

use crate::common::*;

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
    let reasons: Vec<_> =
        v["checkpoints"].as_array().unwrap().iter().map(|c| c["manifest"]["reason"].as_str().unwrap().to_string()).collect();
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

/// Uploads that take seconds for tens of MB of compressible data: zstd at its slowest,
/// one chunk at a time.
const SLOW_UPLOAD: &[&str] = &["--zstd-level", "19", "--upload-concurrency", "1"];

fn wait_for_file(path: &std::path::Path, what: &str) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_flush_that_cannot_finish_in_time_leaves_the_previous_checkpoint_latest() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    // Commits a small epoch 1, then on SIGTERM commits 64 MB that zstd -19 cannot
    // compress within the 4 s window (base64 text: compressible enough that baton does
    // compress it, and slow to compress at that level).
    let script = r#"
        D=$BATON_CHECKPOINT_DIR
        head -c 1000 /dev/urandom > $D/a && "$BATON_BIN" commit --epoch 1 || exit 1
        trap 'head -c 48000000 /dev/urandom | base64 > $D/big; "$BATON_BIN" commit --epoch 2; exit 143' TERM
        echo ready; while :; do sleep 0.05; done"#;
    let mut child = spawn_run(slot.path(), s, "slow", &[], &[&["--vacate-window", "4s"], SLOW_UPLOAD].concat(), &["sh", "-c", script]);
    wait_for_file(&store.path().join("runs/slow/checkpoints/0000000001.json"), "epoch 1 never became durable");
    let t0 = std::time::Instant::now();
    send_signal(child.id(), libc::SIGTERM);
    wait_with_timeout(&mut child, std::time::Duration::from_secs(30));
    let took = t0.elapsed();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(took < std::time::Duration::from_secs(4), "baton outlived the window: {took:?}\n{err}");
    assert!(err.contains("FLUSH INCOMPLETE"), "{err}");
    let seqs: Vec<_> = std::fs::read_dir(store.path().join("runs/slow/checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(seqs.len(), 1, "only checkpoint 1 may be visible: {seqs:?}");
    let out = baton().args(["verify", "--store", s, "slow"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// An upload still running when the eviction comes is dropped once the trainer commits
/// a newer checkpoint: only the newest has to be durable before the hard kill.
#[test]
fn an_upload_in_flight_is_dropped_for_a_newer_eviction_commit() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    // Epoch 1 is small; epoch 2 is 64 MB that zstd -19 takes many seconds over; on
    // SIGTERM the trainer replaces it with a small epoch 3.
    let script = r#"
        D=$BATON_CHECKPOINT_DIR
        head -c 1000 /dev/urandom > $D/a && "$BATON_BIN" commit --epoch 1 || exit 1
        trap 'rm -f $D/big; head -c 1000 /dev/urandom > $D/a; "$BATON_BIN" commit --epoch 3; exit 143' TERM
        sleep 1; head -c 48000000 /dev/urandom | base64 > $D/big && "$BATON_BIN" commit --epoch 2 || exit 1
        touch epoch2-committed
        while :; do sleep 0.05; done"#;
    let mut child = spawn_run(slot.path(), s, "cancel", &[], &[&["--vacate-window", "60s"], SLOW_UPLOAD].concat(), &["sh", "-c", script]);
    wait_for_file(&slot.path().join("epoch2-committed"), "epoch 2 was never committed");
    let checkpoints = store.path().join("runs/cancel/checkpoints");
    assert!(!checkpoints.join("0000000002.json").exists(), "epoch 2 uploaded too fast for this test");
    send_signal(child.id(), libc::SIGTERM);
    wait_with_timeout(&mut child, std::time::Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("cancelling the upload of checkpoint 2"), "{err}");
    let mut seqs: Vec<_> = std::fs::read_dir(&checkpoints).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, ["0000000001.json", "0000000003.json"], "{err}");
    let out = baton().args(["verify", "--store", s, "cancel"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A shell trainer under `baton run` that waits for SIGTERM, then runs `on_term` (with `$f`
/// the file `w.bin` in its checkpoint directory) and exits 143; how baton ended.
fn evicted_once_ready(slot: &std::path::Path, store: &str, run: &str, env: &[(String, String)], on_term: &str) -> std::process::Output {
    let script = format!(
        "f=$BATON_CHECKPOINT_DIR/w.bin\non_term() {{ {on_term}\n exit 143\n}}\ntrap on_term TERM\necho ready\nwhile :; do sleep 0.1; done"
    );
    let mut child = spawn_run(slot, store, run, env, &[], &["sh", "-c", &script]);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first.trim(), "ready");
    send_signal(child.id(), libc::SIGTERM);
    output_of(child)
}

/// During an eviction baton holds the committed files by hard link instead of copying
/// them (the trainer is about to exit). A trainer that writes them again anyway must not
/// get a checkpoint of mixed bytes: the upload notices and does not commit it.
#[test]
fn files_written_again_during_an_eviction_flush_are_never_committed_mixed() {
    let store = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let on_term = r#"
            head -c 67108864 /dev/zero | tr '\0' a > $f
            "$BATON_BIN" commit --epoch 1
            for i in 1 2 3 4 5 6 7 8; do head -c 67108864 /dev/zero | tr '\0' b > $f; done"#;
    let out = evicted_once_ready(slot.path(), s, "rewriter", &[], on_term);
    let err = text(&out.stderr);
    let listed = baton().args(["inspect", "--store", s, "rewriter", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
    match v["checkpoints"].as_array().and_then(|c| c.last()) {
        // The upload won the race: what it committed must be exactly the committed bytes.
        Some(c) => {
            let to = slot.path().join("restored");
            let o =
                baton().args(["restore", "--store", s, "rewriter", &c["seq"].to_string(), "--to", to.to_str().unwrap()]).output().unwrap();
            assert!(o.status.success(), "{}", text(&o.stderr));
            let data = std::fs::read(to.join("w.bin")).unwrap();
            assert!(data.len() == 67108864 && data.iter().all(|&b| b == b'a'), "a checkpoint of mixed bytes was committed:\n{err}");
        }
        None => assert!(err.contains("written again after the command's last commit"), "{err}"),
    }
}

/// An eviction that lands while an upload is in flight: the trainer commits epoch 2,
/// then saves again in place and commits epoch 3. Held by hard link, 2 and 3 share the
/// inodes of the files that did not change; dropping 2's links for 3 must not look like
/// a rewrite of 3's files (it did, and the whole attempt was lost).
#[test]
fn an_eviction_during_an_upload_keeps_the_newest_commit() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let script = r#"
        D=$BATON_CHECKPOINT_DIR
        head -c 12000000 /dev/urandom | base64 > $D/big
        head -c 1000 /dev/urandom > $D/a
        "$BATON_BIN" commit --epoch 1 || exit 1
        trap 'head -c 1000 /dev/urandom > $D/a; "$BATON_BIN" commit --epoch 2 || exit 1;
              head -c 1000 /dev/urandom > $D/a; "$BATON_BIN" commit --epoch 3 || exit 1; exit 143' TERM
        touch epoch1-committed
        while :; do sleep 0.05; done"#;
    let mut child = spawn_run(slot.path(), s, "midway", &[], &[&["--vacate-window", "90s"], SLOW_UPLOAD].concat(), &["sh", "-c", script]);
    wait_for_file(&slot.path().join("epoch1-committed"), "epoch 1 was never committed");
    let checkpoints = store.path().join("runs/midway/checkpoints");
    assert!(!checkpoints.join("0000000001.json").exists(), "epoch 1 uploaded too fast for this test");
    send_signal(child.id(), libc::SIGTERM);
    wait_with_timeout(&mut child, std::time::Duration::from_secs(90));
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(!err.contains("written again"), "a false alarm rejected the newest checkpoint:\n{err}");
    assert!(checkpoints.join("0000000003.json").exists(), "epoch 3 is not durable:\n{err}");
    let out = baton().args(["verify", "--store", s, "midway"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A command that finishes right as the eviction signal arrives (its last epoch was
/// ending anyway) and exits 0 without committing: what it left is the final checkpoint,
/// flushed in the window. Before, nothing was captured, baton exited 0 (HTCondor: job
/// done) and the store held only older work.
#[test]
fn a_command_that_finishes_during_an_eviction_leaves_its_final_checkpoint() {
    let store = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let script = r#"trap '' TERM; cd "$BATON_CHECKPOINT_DIR"; echo epoch1 > state; "$BATON_BIN" commit --epoch 1 || exit 9
        touch ../ready; while [ ! -e ../signalled ]; do sleep 0.05; done; echo final > state; exit 0"#;
    let child = spawn_run(slot.path(), s, "late", &[], &[], &["sh", "-c", script]);
    wait_for_file(&slot.path().join("ready"), "the first commit");
    send_signal(child.id(), libc::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(slot.path().join("signalled"), "").unwrap();
    let out = output_of(child);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let to = tempfile::tempdir().unwrap();
    let back = to.path().join("r");
    let r = baton().args(["restore", "--store", s, "late", "--to", back.to_str().unwrap()]).output().unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(std::fs::read_to_string(back.join("state")).unwrap(), "final\n", "the final state was not captured\n{err}");
}

/// During an eviction the sha256 of a large file is taken while the trainer writes it
/// (`hash_ahead`). What was read ahead is used only where the committed bytes are the
/// same: here the trainer changes one byte in the 20th MiB after baton has read the whole
/// file ahead, and the checkpoint must still name the file's true sha256, and restore it.
#[test]
fn a_file_changed_after_it_was_hashed_ahead_is_committed_with_its_true_hash() {
    let store = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // 40 MiB written on SIGTERM; two seconds for baton to read it ahead (tens of
    // milliseconds of work); then one byte of it changed in place, and the commit.
    let on_term = r#"
            head -c 41943040 /dev/urandom > $f
            sleep 2
            printf X | dd of=$f bs=1 seek=20000000 conv=notrunc 2>/dev/null
            "$BATON_BIN" commit --epoch 1"#;
    let env = [("BATON_LOG".to_string(), "baton=debug".to_string())];
    let out = evicted_once_ready(slot.path(), s, "ahead", &env, on_term);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    // Blocks 0-18 were read ahead as committed; block 19 (from 19 MiB) changed after.
    assert!(err.contains("w.bin: read; its sha256 done") && err.contains("19.0 MiB of it taken while it was written"), "{err}");
    let live = std::fs::read(slot.path().join("checkpoint/w.bin")).unwrap();
    let listed = baton().args(["inspect", "--store", s, "ahead", "1", "--json"]).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&live))
    };
    assert_eq!(m["files"][0]["sha256"].as_str(), Some(want.as_str()), "{m}");
    let to = slot.path().join("restored");
    let o = baton().args(["restore", "--store", s, "ahead", "--to", to.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::read(to.join("w.bin")).unwrap() == live, "the restored file differs from the committed one");
}
