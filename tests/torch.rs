//! Real PyTorch and Lightning trainers (examples/torch_trainer.py, lightning_trainer.py)
//! with the helper package (python/baton_ckpt.py) under the real binary: evicted runs end
//! bit-exact, resume with the very next batch, and load CUDA-written checkpoints on CPU.
//! torch, Lightning and scikit-learn come from `make test`'s .venv (requirements-torch.txt).

use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn python() -> PathBuf {
    let p = std::env::var_os("BATON_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(p.exists(), "{} not found: run the tests with `make test`, which installs torch into .venv", p.display());
    p
}

fn example(name: &str) -> String {
    root().join("examples").join(name).to_str().unwrap().to_string()
}

/// 3 epochs of 28 steps (64 of the 1,797 digits each), a commit every 10 steps.
const PLAIN: &str = "torch_trainer.py";
const LIGHTNING: &str = "lightning_trainer.py";
const ARGS: &[&str] = &["--epochs", "3", "--commit-every", "10", "--trace"];

/// An uninterrupted run without baton: (digest, the `batch` trace lines).
fn reference(script: &str, args: &[&str]) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .arg(example(script))
        .args(args)
        .current_dir(dir.path())
        .env_remove("BATON_SOCKET")
        .env_remove("BATON_CHECKPOINT_DIR")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "reference run of {script} failed:\n{err}");
    (digest_of(&out.stdout).expect("no digest"), batch_lines(&err))
}

fn batch_lines(log: &str) -> Vec<String> {
    log.lines().filter_map(|l| l.strip_prefix("trainer: batch ").map(str::to_string)).collect()
}

/// One `baton run` attempt on a new empty slot. With `evict_at`, SIGTERM goes to baton as
/// soon as the trainer prints a line containing it. Returns (status code, stdout, stderr).
fn attempt(store: &str, run: &str, device: &str, cmd: &[String], evict_at: Option<&str>) -> (Option<i32>, String, String) {
    let slot = tempfile::tempdir().unwrap();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut child = spawn_run(slot.path(), store, run, &[], &["--device", device, "--vacate-window", "60s"], &cmd);
    let mut stdout = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let mut err = String::new();
    let mut signalled = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(marker) = evict_at {
            if !signalled && line.contains(marker) {
                send_signal(child.id(), libc::SIGTERM);
                signalled = true;
            }
        }
        err.push_str(&line);
        err.push('\n');
    }
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    if let Some(marker) = evict_at {
        assert!(signalled, "the trainer never printed {marker:?}:\n{err}");
    }
    (status.code(), out_thread.join().unwrap(), err)
}

/// The scenario: evicted once right after a commit and once between commits,
/// each time mid-epoch, restarted on a new empty slot with another device, then finished.
fn evicted_twice_ends_bit_exact(script: &str, first: &str, second: &str) {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let mut cmd = vec![python().to_str().unwrap().to_string(), example(script)];
    cmd.extend(ARGS.iter().map(|a| a.to_string()));
    cmd.extend(["--step-seconds".into(), "0.05".into()]);

    let (code, _, log1) = attempt(s, "t", "NVIDIA A100-SXM4-40GB", &cmd, Some(first));
    assert_eq!(code, Some(143), "attempt 1:\n{log1}");
    let (code, _, log2) = attempt(s, "t", "Tesla T4", &cmd, Some(second));
    assert_eq!(code, Some(143), "attempt 2:\n{log2}");
    let (code, out, log3) = attempt(s, "t", "cpu", &cmd, None);
    let logs = format!("--- 1 ---\n{log1}--- 2 ---\n{log2}--- 3 ---\n{log3}");
    assert_eq!(code, Some(0), "{logs}");

    let (want, want_batches) = reference(script, ARGS);
    assert_eq!(digest_of(out.as_bytes()).as_deref(), Some(want.as_str()), "weights differ from the uninterrupted run\n{logs}");
    // Every step any attempt took is the step the uninterrupted run took at that position:
    // same samples, same loss bits (dropout masks from the restored RNG).
    for line in batch_lines(&logs) {
        let pos: Vec<_> = line.split(' ').take(2).collect();
        let same = want_batches.iter().find(|w| w.split(' ').take(2).eq(pos.iter().copied()));
        assert_eq!(same, Some(&line), "a step differs from the uninterrupted run\n{logs}");
    }
    assert!(log1.contains("saved at epoch 0") && log2.contains("saved at epoch 1"), "{logs}");
    assert!(log2.contains("prev_device=NVIDIA A100-SXM4-40GB"), "{log2}");
    assert!(log3.contains("prev_device=Tesla T4"), "{log3}");
    let out = baton().args(["verify", "--store", s, "t"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn torch_example_evicted_twice_ends_bit_exact() {
    evicted_twice_ends_bit_exact(PLAIN, "committed epoch 0 step 10", "batch 1 14 ");
}

#[test]
fn lightning_example_evicted_twice_ends_bit_exact() {
    evicted_twice_ends_bit_exact(LIGHTNING, "committed epoch 0 step 10", "batch 1 14 ");
}
