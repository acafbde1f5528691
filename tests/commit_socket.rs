//! The commit socket under abuse: a flood of idle connections neither hangs a real
//! commit nor costs the attempt its end record; a supervisor that never answers does
//! not hang `baton commit`.

use crate::common::*;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn idle_connections_neither_block_a_commit_nor_lose_the_end_record() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let ckpt = slot.path().join("checkpoint");
    let script = r#"
        D=$BATON_CHECKPOINT_DIR
        echo weights > $D/w.bin
        while [ ! -e go ]; do sleep 0.05; done
        "$BATON_BIN" commit --epoch 1 --timeout 40s || exit 9
        touch committed
        sleep 100"#;
    // baton with the descriptor limit users' execute points often have (1024, soft and
    // hard); the idle connections come from this test process, which has more.
    let mut c = baton();
    c.current_dir(slot.path())
        .args(["run", "--store", s, "--run-id", "flood", "--vacate-window", "20s", "--dir"])
        .arg(&ckpt)
        .args(["--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // The limit is set by the shell that execs baton.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg("ulimit -n 1024 && exec \"$@\"").arg("sh").arg(c.get_program()).args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.current_dir(slot.path()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let socket = slot.path().join(".baton-checkpoint/commit.sock");
    assert!(wait_for(&socket, Duration::from_secs(30)), "no commit socket at {}", socket.display());
    let idle: Vec<UnixStream> = (0..1100).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
    assert!(idle.len() > 1024, "only {} idle connections could be opened", idle.len());
    std::fs::write(slot.path().join("go"), b"").unwrap();
    let committed = wait_for(&slot.path().join("committed"), Duration::from_secs(45));
    drop(idle);
    send_signal(child.id(), libc::SIGTERM);
    let out = output_of(child);
    let err = text(&out.stderr);
    assert!(committed, "the commit did not get through the idle connections:\n{err}");
    assert_eq!(out.status.code(), Some(143), "{err}");
    let o = baton().args(["inspect", "--store", s, "flood", "--json"]).output().unwrap();
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run["attempts"][0]["end"]["ending"], "evicted", "the attempt's end record is missing:\n{err}");
    assert_eq!(run["checkpoints"][0]["manifest"]["epoch"], 1, "{err}");
}

#[test]
fn a_supervisor_that_never_answers_does_not_hang_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accept and hold the connection, never answering.
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let start = Instant::now();
    let out = baton().args(["commit", "--epoch", "1", "--timeout", "1s"]).env("BATON_SOCKET", &path).output().unwrap();
    let err = text(&out.stderr);
    assert!(start.elapsed() < Duration::from_secs(20), "baton commit waited {:?}", start.elapsed());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer within 1s"), "{err}");
    drop(holder);
}
