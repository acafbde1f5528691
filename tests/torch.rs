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
    attempt_signalling(store, run, device, cmd, evict_at, |_, baton| baton)
}

const ATTEMPT_LIMIT: Duration = Duration::from_secs(300);

/// attempt(), with SIGTERM going to the pid `whom(log so far, baton's pid)` returns.
fn attempt_signalling(
    store: &str,
    run: &str,
    device: &str,
    cmd: &[String],
    evict_at: Option<&str>,
    whom: impl Fn(&str, u32) -> u32,
) -> (Option<i32>, String, String) {
    let slot = tempfile::tempdir().unwrap();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut child = spawn_run(slot.path(), store, run, &[], &["--device", device, "--vacate-window", "60s"], &cmd);
    let mut stdout = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    // A trainer that hangs (ranks stuck in mismatched collectives) must fail the test, not
    // hang it: after ATTEMPT_LIMIT, SIGTERM to baton (which kills the command when its
    // share of the window is over), and SIGKILL if even that does not end it.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (done, pid) = (done.clone(), child.id());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut fired = false;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let waited = start.elapsed();
                if !fired && waited > ATTEMPT_LIMIT {
                    send_signal(pid, libc::SIGTERM);
                    fired = true;
                } else if waited > ATTEMPT_LIMIT + Duration::from_secs(120) {
                    send_signal(pid, libc::SIGKILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            fired
        })
    };
    let mut err = String::new();
    let mut signalled = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(marker) = evict_at {
            if !signalled && line.contains(marker) {
                send_signal(whom(&err, child.id()), libc::SIGTERM);
                signalled = true;
            }
        }
        err.push_str(&line);
        err.push('\n');
    }
    // Set before baton is reaped, so the watchdog never signals a reused pid.
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(!watchdog.join().unwrap(), "the attempt did not end within {ATTEMPT_LIMIT:?}:\n{err}");
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    if let Some(marker) = evict_at {
        assert!(signalled, "the trainer never printed {marker:?}:\n{err}");
    }
    (status.code(), out_thread.join().unwrap(), err)
}

/// The issue's scenario: evicted once right after a commit and once between commits,
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

/// `baton simulate --verify`: a soft and a hard eviction (from a trace, so the schedule
/// is the same on every machine; the steps are slow enough that no attempt can finish
/// before its eviction, however fast the machine), then compared with an uninterrupted run, final
/// checkpoint file and digest. CPU slots only: a simulated GPU slot sets
/// CUDA_VISIBLE_DEVICES, which on a machine with a GPU would move the arithmetic there.
fn simulate_verifies(script: &str, step_seconds: &str, trace: &str) {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("trace.txt"), trace).unwrap();
    let out = baton()
        .current_dir(work.path())
        .args(["simulate", "--store", "store", "--work-dir", "sim", "--json", "--trace", "trace.txt"])
        .args(["--slots", "cpu", "--vacate-window", "30s", "--verify", "--"])
        .arg(python())
        .arg(example(script))
        .args(["--epochs", "3", "--commit-every", "10", "--step-seconds", step_seconds])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}\n{r}", out.status);
    assert_eq!(r["completed"], true, "{r}");
    assert_eq!(r["verify"]["pass"], true, "{}", r["verify"]);
    let t = &r["totals"];
    assert!(t["soft"].as_u64() == Some(1) && t["hard"].as_u64() == Some(1), "{t}");
}

#[test]
fn torch_example_passes_simulate_verify() {
    // 84 steps of 0.2 s: attempt 2 (from ~10 s) still has at least ~44 steps (8.8 s) and
    // its start to go at 16 s, however fast torch starts. With 0.1 s steps an idle machine
    // finished attempt 2 before the hard eviction came (a clean `make test` failed).
    simulate_verifies(PLAIN, "0.2", "9 soft\n16 hard\n");
}

#[test]
fn lightning_example_passes_simulate_verify() {
    // 84 steps of 0.25 s: attempt 2 (from ~18 s) has at least ~44 steps (11 s) and its
    // start to go at 30 s.
    simulate_verifies(LIGHTNING, "0.25", "17 soft\n30 hard\n");
}

/// The test above has teeth: the same comparison catches a trainer that resumes the
/// weights and the optimizer but not the sampler position, or not the RNG states.
#[test]
fn a_resume_without_sampler_or_rng_state_is_caught() {
    let (_, want) = reference(PLAIN, ARGS);
    for bug in ["no-sampler", "no-rng"] {
        let store = tempfile::tempdir().unwrap();
        let s = store.path().to_str().unwrap();
        let mut cmd = vec![python().to_str().unwrap().to_string(), example(PLAIN)];
        cmd.extend(ARGS.iter().map(|a| a.to_string()));
        cmd.extend(["--step-seconds".into(), "0.02".into(), "--bug".into(), bug.into()]);
        let (code, _, log1) = attempt(s, bug, "cpu", &cmd, Some("batch 0 14 "));
        assert_eq!(code, Some(143), "{log1}");
        let (code, _, log2) = attempt(s, bug, "cpu", &cmd, None);
        assert_eq!(code, Some(0), "{log2}");
        let resumed = batch_lines(&log2);
        let first = resumed.first().expect("the resumed attempt trained nothing");
        let at: Vec<_> = first.split(' ').take(2).collect();
        let expected = want.iter().find(|w| w.split(' ').take(2).eq(at.iter().copied())).unwrap();
        let field = if bug == "no-sampler" { 2 } else { 3 };
        assert_ne!(first.split(' ').nth(field), expected.split(' ').nth(field), "--bug {bug} went unnoticed:\n{log2}");
    }
}

/// A checkpoint whose tensors were saved from cuda:0 (every storage tagged `cuda:0` by
/// fixtures/as_if_on_cuda.py, as a GPU run writes them) resumes on a CPU-only slot:
/// plain torch.load of the file fails here, baton_ckpt's map_location path loads it, and
/// the resumed run ends bit-exact (the arithmetic of the "GPU" attempt ran on the CPU).
#[test]
fn a_checkpoint_written_on_cuda_resumes_on_a_cpu_slot() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let args: Vec<String> = ARGS.iter().map(|a| a.to_string()).chain(["--step-seconds".into(), "0.02".into()]).collect();
    let gpu: Vec<String> =
        [python().to_str().unwrap().to_string(), root().join("fixtures/as_if_on_cuda.py").to_str().unwrap().into(), example(PLAIN)]
            .into_iter()
            .chain(args.iter().cloned())
            .collect();
    let (code, _, log1) = attempt(s, "cuda", "NVIDIA A100-SXM4-40GB", &gpu, Some("committed epoch 0 step 20"));
    assert_eq!(code, Some(143), "{log1}");

    // What the GPU attempt left in the store really is a CUDA checkpoint.
    let restored = tempfile::tempdir().unwrap();
    let to = restored.path().join("ckpt");
    let out = baton().args(["restore", "--store", s, "cuda", "--to", to.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let check = r#"
import sys, torch
sys.path.insert(0, sys.argv[2])
import baton_ckpt as bc
path = sys.argv[1] + "/train.pt"
try:
    torch.load(path, weights_only=True)
    sys.exit("plain torch.load read a cuda:0 checkpoint without CUDA: the fixture proves nothing")
except RuntimeError as e:
    assert "CUDA" in str(e), e
state = bc.load(directory=sys.argv[1])
devices = {t.device.type for t in state["model"].values()}
assert devices == {"cpu"}, devices
print("ok")
"#;
    let out = Command::new(python()).args(["-c", check, to.to_str().unwrap(), root().join("python").to_str().unwrap()]).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "ok", "{}", text(&out.stderr));

    let mut cpu = vec![python().to_str().unwrap().to_string(), example(PLAIN)];
    cpu.extend(args);
    let (code, out, log2) = attempt(s, "cuda", "cpu", &cpu, None);
    assert_eq!(code, Some(0), "{log2}");
    assert!(log2.contains("prev_device=NVIDIA A100-SXM4-40GB"), "{log2}");
    assert!(log2.contains("resumed at epoch 0 step 2"), "{log2}");
    assert_eq!(digest_of(out.as_bytes()), Some(reference(PLAIN, ARGS).0), "{log1}\n{log2}");
}

/// Without baton's environment the helper neither crashes nor claims a commit: commit()
/// returns False and says so once; the trainer runs to the end in ./checkpoint.
#[test]
fn the_helper_outside_baton_commits_nothing_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let check = r#"
import sys
sys.path.insert(0, sys.argv[1])
import baton_ckpt as bc
assert "torch" not in sys.modules, "the core imported torch"
assert not bc.under_baton()
assert bc.commit(epoch=1, step=2, loss="0.5") is False
assert bc.commit() is False
r = bc.restored()
assert (r.seq, r.epoch, r.step, r.prev_device, r.attempt) == (None, None, None, None, 1), r
assert bc.checkpoint_dir().endswith("/checkpoint")
bc.install_signal_handlers()
assert not bc.eviction_requested()
print("ok")
"#;
    let out = Command::new(python())
        .args(["-c", check, root().join("python").to_str().unwrap()])
        .current_dir(dir.path())
        .env_remove("BATON_SOCKET")
        .env_remove("BATON_CHECKPOINT_DIR")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).trim(), "ok", "{err}");
    assert_eq!(err.matches("nothing is committed").count(), 1, "{err}");
}

/// The helper's parts the trainers above do not reach (python/tests/test_helpers.py):
/// gradient-accumulation planning, GradScaler state through save and resume, DataLoader
/// workers that outlive the forwarded SIGTERM (and a control showing a worker without
/// the helper dies of it).
#[test]
fn helper_unit_tests_pass_with_real_torch() {
    let out = Command::new(python())
        .args(["-m", "unittest", "discover", "-s"])
        .arg(root().join("python/tests"))
        .arg("-v")
        .env_remove("BATON_CHECKPOINT_DIR")
        .env_remove("BATON_SOCKET")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Ran 5 tests") && !err.contains("skipped"), "{err}");
}

/// examples/ddp_trainer.py: 2 epochs of 16 steps, a commit every 10 steps.
const DDP: &str = "ddp_trainer.py";
const DDP_ARGS: &[&str] = &["--epochs", "2", "--commit-every", "10", "--trace"];

/// torchrun with two worker processes on this machine (gloo on CPU); `--standalone`
/// picks a free rendezvous port, so tests running at once do not collide.
fn torchrun(extra: &[&str]) -> Vec<String> {
    let mut cmd: Vec<String> = vec![python().to_str().unwrap().into(), "-m".into(), "torch.distributed.run".into()];
    cmd.extend(["--standalone", "--nproc-per-node", "2"].map(String::from));
    cmd.push(example(DDP));
    cmd.extend(DDP_ARGS.iter().chain(extra).map(|a| a.to_string()));
    cmd
}

/// `trainer[R]: batch E S R ...` lines: (epoch, step, rank) and the rest.
fn ddp_batches(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.split_once(": batch ").map(|(_, b)| b))
        .map(|b| {
            let f: Vec<_> = b.splitn(4, ' ').collect();
            (f[..3].join(" "), f.get(3).unwrap_or(&"").to_string())
        })
        .collect()
}

/// "trainer[R]: stopped at epoch E step S (own signal: X, now: Y)" of both ranks:
/// [(at, "trainer[R] own signal: X, now: Y)")]; both at one step, which rank 0 committed.
fn ddp_stops(log: &str) -> Vec<(String, String)> {
    let v: Vec<_> = log
        .lines()
        .filter_map(|l| l.split_once(": stopped at "))
        .map(|(who, rest)| {
            let (at, flags) = rest.split_once(" (").unwrap();
            (at.to_string(), format!("{who} {flags}"))
        })
        .collect();
    assert_eq!(v.len(), 2, "not both ranks stopped:\n{log}");
    assert_eq!(v[0].0, v[1].0, "the ranks stopped at different steps:\n{log}");
    assert!(log.contains(&format!("trainer[0]: committed {} seq", v[0].0)), "rank 0 did not commit the stop:\n{log}");
    v
}

/// DDP on one node, really run: `baton run -- torchrun --nproc-per-node 2` (gloo, CPU),
/// SIGTERM to baton between two commits. baton signals torchrun's process group;
/// torchrun forwards the signal to its workers (each in a session of its own, so only
/// through torchrun), and each worker's own baton_ckpt handler sees it; the ranks agree
/// on the step (all_reduce), rank 0 commits after a barrier. The next attempt starts in
/// a new empty directory, both ranks resume from what baton restored, and the final
/// weights equal an uninterrupted torchrun's bit for bit, as does every step each rank
/// took (rank 1's loss bits show that its own dropout RNG stream came back too).
#[test]
fn ddp_example_under_torchrun_evicted_ends_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let reference = torchrun(&[]);
    let out = Command::new(&reference[0])
        .args(&reference[1..])
        .current_dir(dir.path())
        .env_remove("BATON_SOCKET")
        .env_remove("BATON_CHECKPOINT_DIR")
        .output()
        .unwrap();
    let want_log = text(&out.stderr);
    assert!(out.status.success(), "the uninterrupted torchrun failed:\n{want_log}");
    let want = digest_of(&out.stdout).expect("no digest");
    let want_batches = ddp_batches(&want_log);
    assert_eq!(want_batches.len(), 2 * 2 * 16, "{want_log}");

    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // Slow steps in the evicted attempt only (they change no result): 19 steps of 0.2 s
    // remain after the marker, so the signal always lands mid-run.
    let (code, _, log1) = attempt(s, "ddp", "cpu", &torchrun(&["--step-seconds", "0.2"]), Some("trainer[0]: batch 0 12 "));
    // The workers exit 143 after committing; torchrun reports that as its own exit 1.
    assert_eq!(code, Some(1), "attempt 1:\n{log1}");
    let stops = ddp_stops(&log1);
    assert!(stops[0].0 != "epoch 0 step 10", "stopped at the periodic commit, not between commits:\n{log1}");
    // Each worker's own handler saw the signal torchrun forwarded.
    assert!(stops.iter().all(|(_, f)| f.ends_with("now: True)")), "{log1}");

    let (code, out, log2) = attempt(s, "ddp", "cpu", &torchrun(&[]), None);
    let logs = format!("--- 1 ---\n{log1}--- 2 ---\n{log2}");
    assert_eq!(code, Some(0), "{logs}");
    for rank in 0..2 {
        let at = &stops[0].0;
        assert!(log2.contains(&format!("trainer[{rank}]: resumed at {at}\n")), "rank {rank} did not resume at {at}:\n{logs}");
    }
    assert_eq!(digest_of(out.as_bytes()).as_deref(), Some(want.as_str()), "weights differ from the uninterrupted run\n{logs}");
    let took = ddp_batches(&logs);
    assert_eq!(took.len(), want_batches.len(), "every (epoch, step, rank) is trained exactly once across attempts:\n{logs}");
    for step in took {
        assert!(want_batches.contains(&step), "a step differs from the uninterrupted run: {step:?}\n{logs}");
    }

    let out = baton().args(["inspect", "--store", s, "ddp", "--json"]).output().unwrap();
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reasons: Vec<_> =
        run["checkpoints"].as_array().unwrap().iter().map(|c| c["manifest"]["reason"].as_str().unwrap_or("").to_string()).collect();
    assert!(reasons.contains(&"eviction".into()) && reasons.last().map(String::as_str) == Some("final"), "{reasons:?}");
    assert_eq!(run["attempts"][0]["end"]["ending"], "evicted", "{}", run["attempts"]);
    let out = baton().args(["verify", "--store", s, "ddp"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// The ranks agree before they act: SIGTERM to rank 1's worker alone, between two steps.
/// Rank 0 never gets a signal, yet stops at the very same step, because the ranks
/// all_reduce their flags at every step boundary; it saves and commits after the
/// barrier. (Without the all_reduce, tried once, rank 1 waits in the save's barrier and
/// rank 0 in DDP's gradient all_reduce: a hang, which the attempt's time limit turns
/// into a failure.)
#[test]
fn ddp_ranks_stop_together_when_only_one_gets_the_signal() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let rank1_pid = |log: &str| -> u32 {
        let l = log.lines().find(|l| l.starts_with("trainer[1]: world=")).expect("rank 1 never started");
        l.split(" pid=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    let cmd = torchrun(&["--step-seconds", "0.2"]);
    let (code, _, log) = attempt_signalling(s, "ddp1", "cpu", &cmd, Some("trainer[0]: batch 0 4 "), |log, _| rank1_pid(log));
    assert_eq!(code, Some(1), "{log}");
    let stops = ddp_stops(&log);
    let flags: Vec<_> = stops.iter().map(|(_, f)| f.as_str()).collect();
    // Rank 0 decides before rank 1 can exit (the barriers), so nothing has signalled it yet.
    assert!(flags.iter().any(|f| f.starts_with("trainer[0] own signal: False")), "{log}");
    assert!(flags.iter().any(|f| f.starts_with("trainer[1] own signal: True")), "{log}");
    let out = baton().args(["inspect", "--store", s, "ddp1", "--json"]).output().unwrap();
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &run["checkpoints"].as_array().unwrap().last().unwrap()["manifest"];
    assert_eq!(format!("epoch {} step {}", last["epoch"], last["step"]), stops[0].0, "{run}");
}

/// The helper's `baton commit` fallback, for real: under `baton run`, a Python whose Unix
/// sockets are refused (as a sandbox or a broken socket module would) commits through
/// `$BATON_BIN commit`, and then, with $BATON_BIN gone, through `baton` on PATH. Each
/// commit returns its seq, and the store holds both with their epoch, step and metadata.
#[test]
fn the_helper_falls_back_to_baton_commit_when_the_socket_is_unusable() {
    let script = r#"
import os, socket, sys
sys.path.insert(0, sys.argv[1])
import baton_ckpt as bc
real = socket.socket.connect
def refuse(self, addr):
    if self.family == socket.AF_UNIX:
        raise PermissionError(13, "Permission denied (the test refuses AF_UNIX connections)")
    return real(self, addr)
socket.socket.connect = refuse
with open(os.path.join(bc.checkpoint_dir(), "w.bin"), "wb") as f:
    f.write(b"a" * 1000)
print("seq", bc.commit(epoch=1, step=2, via="BATON_BIN"), flush=True)
del os.environ["BATON_BIN"]
with open(os.path.join(bc.checkpoint_dir(), "w.bin"), "wb") as f:
    f.write(b"b" * 1000)
print("seq", bc.commit(epoch=1, step=3, via="PATH"), flush=True)
"#;
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let path = format!("{}:{}", baton_bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let py = python();
    let pydir = root().join("python");
    let cmd = [py.to_str().unwrap(), "-c", script, pydir.to_str().unwrap()];
    let out = output_of(spawn_run(slot.path(), s, "fallback", &[("PATH".into(), path)], &[], &cmd));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout).lines().filter(|l| l.starts_with("seq ")).collect::<Vec<_>>(), ["seq 1", "seq 2"], "{err}");
    assert_eq!(err.matches("unusable (").count(), 2, "the socket path was not the one refused:\n{err}");
    let o = baton().args(["inspect", "--store", s, "fallback", "--json"]).output().unwrap();
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<_> = run["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let m = &c["manifest"];
            format!("{} {} {} {} {}", m["seq"], m["reason"], m["epoch"], m["step"], m["meta"]["via"])
        })
        .collect();
    assert_eq!(got[..2], ["1 \"commit\" 1 2 \"BATON_BIN\"", "2 \"commit\" 1 3 \"PATH\""], "{got:?}\n{err}");
}

/// Neither way works (baton is gone: its socket refuses connections): commit() raises a
/// CommitError that names the socket and what the fallback said, and returns no seq;
/// likewise with no baton binary to fall back on, or one that cannot run.
#[test]
fn the_helper_raises_when_neither_the_socket_nor_baton_commit_works() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import os, socket, sys
sys.path.insert(0, sys.argv[1])
import baton_ckpt as bc
gone = os.path.join(os.getcwd(), "gone.sock")
s = socket.socket(socket.AF_UNIX)
s.bind(gone)
s.close()                   # a stale socket file: connect() is refused
os.environ["BATON_SOCKET"] = gone
with open(os.path.join(bc.checkpoint_dir(), "w.bin"), "wb") as f:
    f.write(b"a")
cases = {"baton gone": {"BATON_BIN": sys.argv[2]},
         "no binary": {"BATON_BIN": "", "PATH": "/nonexistent"},
         "binary cannot run": {"BATON_BIN": "/nonexistent/baton"}}
for name, env in cases.items():
    os.environ.update(env)
    try:
        seq = bc.commit(epoch=1)
    except bc.CommitError as e:
        print(f"{name}: {e}")
    else:
        print(f"{name}: committed?! {seq!r}")
"#;
    let out = Command::new(python())
        .args(["-c", script, root().join("python").to_str().unwrap(), baton_bin().to_str().unwrap()])
        .current_dir(dir.path())
        .env("BATON_CHECKPOINT_DIR", dir.path().join("ckpt"))
        .output()
        .unwrap();
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{err}");
    let said: Vec<_> = stdout.lines().collect();
    assert_eq!(said.len(), 3, "{stdout}\n{err}");
    assert!(said.iter().all(|l| l.contains("cannot commit: the commit socket") && l.contains("gone.sock is unusable")), "{stdout}");
    assert!(said.iter().all(|l| l.ends_with("baton confirmed no commit")), "{stdout}");
    assert!(said[0].contains("commit` exited 1: ") && said[0].contains("cannot reach the baton supervisor"), "{stdout}");
    assert!(said[1].contains("no baton binary to fall back on"), "{stdout}");
    assert!(said[2].contains("/nonexistent/baton cannot be run"), "{stdout}");
}

/// What `make dist` ships (scripts/wheel.sh builds the same way, with pip's isolated build
/// environment, which needs the package index): the baton-ckpt wheel of python/ builds,
/// installs with no index into a new virtualenv, and imports there without torch; its
/// version is the module's __version__, and the installed module is python/baton_ckpt.py.
#[test]
fn the_helper_wheel_installs_into_a_fresh_venv_and_imports() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for f in ["baton_ckpt.py", "pyproject.toml", "README.md"] {
        std::fs::copy(root().join("python").join(f), src.join(f)).unwrap();
    }
    let dist = work.path().join("dist");
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}:\n{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    // setuptools is in .venv (torch requires it), so no index is needed to build.
    run(Command::new(python())
        .args(["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-w"])
        .arg(&dist)
        .arg(&src));
    let wheels: Vec<_> = std::fs::read_dir(&dist).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let venv = work.path().join("venv");
    run(Command::new(python()).args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check"])
        .arg(dist.join(&wheels[0])));
    let check = r#"
import importlib.metadata, sys
import baton_ckpt as bc
assert "torch" not in sys.modules, "importing the helper imported torch"
assert importlib.metadata.version("baton-ckpt") == bc.__version__, (importlib.metadata.version("baton-ckpt"), bc.__version__)
assert bc.commit() is False
print(bc.__version__)
print(bc.__file__)
"#;
    let out = run(Command::new(venv.join("bin/python"))
        .args(["-c", check])
        .current_dir(work.path())
        .env_remove("PYTHONPATH")
        .env_remove("BATON_SOCKET")
        .env_remove("BATON_CHECKPOINT_DIR"));
    let (version, file) = out.trim().split_once('\n').unwrap();
    assert_eq!(wheels[0], format!("baton_ckpt-{version}-py3-none-any.whl"));
    assert!(file.starts_with(venv.to_str().unwrap()), "imported {file}, not the installed wheel");
    assert_eq!(std::fs::read(file).unwrap(), std::fs::read(root().join("python/baton_ckpt.py")).unwrap());
}
