//! Signal and process-family semantics, with real signals to real processes: nothing
//! the command starts outlives baton, and baton is gone before the hard kill.

use crate::common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn read_pids(pidfile: &Path) -> Vec<i32> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(pidfile) {
            return s.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the command never wrote its pids");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn misbehave(slot: &Path, store: &Path, extra_baton: &[&str], extra: &[&str]) -> (std::process::Child, Vec<i32>) {
    let pidfile = slot.join("pids");
    let fixture = fixture("misbehave.py");
    let mut cmd = vec!["python3", fixture.to_str().unwrap(), "--pidfile", pidfile.to_str().unwrap()];
    cmd.extend_from_slice(extra);
    let child = spawn_run(slot, store.to_str().unwrap(), "family", &[], extra_baton, &cmd);
    let pids = read_pids(&pidfile);
    (child, pids)
}

#[test]
fn a_trainer_that_ignores_sigterm_is_killed_and_baton_exits_within_the_window() {
    let (slot, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut child, pids) = misbehave(slot.path(), store.path(), &["--vacate-window", "6s"], &["--ignore-term", "--children", "2"]);
    assert_eq!(pids.len(), 3);
    let t0 = Instant::now();
    send_signal(child.id(), libc::SIGTERM);
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    let took = t0.elapsed();
    // Killed by baton at the end of its share (3 s), baton gone before the window ends.
    assert!(took >= Duration::from_secs_f64(2.5), "killed too early: {took:?}");
    assert!(took < Duration::from_secs(6), "baton outlived the vacate window: {took:?}");
    assert_eq!(status.code(), Some(137), "the command died by SIGKILL: 128 + 9");
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived baton");
    }
    let err = text(&child.wait_with_output().unwrap().stderr);
    assert!(err.contains("killing its process group"), "{err}");
}

#[test]
fn forked_and_daemonized_grandchildren_are_signalled_and_reaped() {
    let (slot, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut child, pids) = misbehave(slot.path(), store.path(), &["--vacate-window", "10s"], &["--children", "3", "--daemon"]);
    assert_eq!(pids.len(), 5);
    let t0 = Instant::now();
    send_signal(child.id(), libc::SIGTERM);
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    // The group members die of the forwarded SIGTERM at once; the daemon left the group
    // and is found as an orphan re-parented to baton (a subreaper) and killed.
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived baton");
    }
}

#[test]
fn the_command_dies_with_baton_even_on_sigkill() {
    let (slot, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut child, pids) = misbehave(slot.path(), store.path(), &[], &["--ignore-term"]);
    send_signal(child.id(), libc::SIGKILL);
    wait_with_timeout(&mut child, Duration::from_secs(10));
    let start = Instant::now();
    while alive(pids[0]) {
        assert!(start.elapsed() < Duration::from_secs(5), "the command outlived a SIGKILLed baton");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exit_status_passes_through_like_an_init() {
    let (slot, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = store.path().to_str().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "codes", &[], &[], &["sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3));
    let out = output_of(spawn_run(slot.path(), s, "codes", &[], &[], &["sh", "-c", "kill -USR2 $$"]));
    assert_eq!(out.status.code(), Some(128 + libc::SIGUSR2));
    let err = text(&out.stderr);
    assert!(err.contains("signal 12"), "{err}");
}

#[test]
fn a_command_that_exits_with_the_checkpoint_code_at_once_is_not_restarted_forever() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let script = "echo w > $BATON_CHECKPOINT_DIR/w; exit 85";
    let out = output_of(spawn_run(slot.path(), s, "loop85", &[], &["--checkpoint-exit-code", "85"], &["sh", "-c", script]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(err.contains("8 times in a row, each time less than 10 s after it started"), "{err}");
    // Backed off between restarts (0 + 0.25 + 0.5 + 1 + 2 + 4 + 5 s), not thousands a second.
    assert!(start.elapsed() >= Duration::from_secs(12), "{:?}", start.elapsed());
    let manifests = std::fs::read_dir(store.path().join("runs/loop85/checkpoints")).unwrap().count();
    assert!(manifests <= 8, "{manifests} manifests");
}

#[test]
fn quick_restarts_under_the_limit_go_on() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    // 6 quick restarts in place, each with a new checkpoint, then done.
    let script = r#"D=$BATON_CHECKPOINT_DIR; n=$(cat $D/n 2>/dev/null || echo 0); [ "$n" -ge 6 ] && exit 0; echo $((n+1)) > $D/n; exit 85"#;
    let out = output_of(spawn_run(slot.path(), s, "six85", &[], &["--checkpoint-exit-code", "85"], &["sh", "-c", script]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("restarting it in place").count(), 6, "{err}");
    assert_eq!(err.matches("restarting it in place after a").count(), 5, "only the first quick restart is immediate: {err}");
}

/// Processes whose command line mentions `needle` (the watcher carries the family token).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if alive(pid) && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn grandchildren_in_and_out_of_the_group_die_with_a_sigkilled_baton() {
    let (slot, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = slot.path().join("pids");
    std::fs::create_dir(&d).unwrap();
    // Each helper writes its own pid (after setsid, where it leaves the group):
    // a: `sleep &` in the trainer's group; b: a `setsid` child in a session of its own;
    // c: a double-forked orphan still in the group; e: a double-forked orphan that also
    // left the group and session. The trainer ignores SIGTERM and waits.
    let script = r#"
        D="$1"
        echo "$BATON_FAMILY" > "$D/token"
        trap '' TERM
        sh -c 'echo $$ > "$1/a"; exec sleep 300' a "$D" &
        setsid sh -c 'echo $$ > "$1/b"; exec sleep 300' b "$D" &
        sh -c 'sh -c '\''echo $$ > "$1/c"; exec sleep 300'\'' c "$1" &' c "$D"
        sh -c 'setsid sh -c '\''echo $$ > "$1/e"; exec sleep 300'\'' e "$1" &' e "$D"
        while :; do sleep 1; done
    "#;
    let mut child =
        spawn_run(slot.path(), store.path().to_str().unwrap(), "hardkill", &[], &[], &["sh", "-c", script, "trainer", d.to_str().unwrap()]);
    let start = Instant::now();
    let read = |name: &str| std::fs::read_to_string(d.join(name)).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let pids = loop {
        let pids: Vec<i32> = ["a", "b", "c", "e"].iter().filter_map(|n| read(n)).collect();
        if pids.len() == 4 {
            break pids;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the helpers never started: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = std::fs::read_to_string(d.join("token")).unwrap().trim().to_string();
    for &pid in &pids {
        assert!(alive(pid), "helper {pid} died before baton did");
    }

    send_signal(child.id(), libc::SIGKILL);
    wait_with_timeout(&mut child, Duration::from_secs(10));
    let t0 = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "outlived a SIGKILLed baton: {left:?} of a b c e = {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The watcher did its work and is gone too.
    assert!(!token.is_empty(), "the command was not given BATON_FAMILY");
    while !processes_mentioning(&token).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the watcher outlived its work: {:?}", processes_mentioning(&token));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_normal_exit_leaves_not_even_the_watcher() {
    let (slot, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let token_file = slot.path().join("token");
    let script = r#"echo "$BATON_FAMILY" > "$1"; exit 3"#;
    let out = output_of(spawn_run(
        slot.path(),
        store.path().to_str().unwrap(),
        "quiet",
        &[],
        &[],
        &["sh", "-c", script, "t", token_file.to_str().unwrap()],
    ));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(!err.contains("watcher"), "the watcher found something to kill: {err}");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(!token.is_empty());
    // baton closed the watcher's pipe and reaped it before exiting.
    assert_eq!(processes_mentioning(&token), Vec::<i32>::new());
}
