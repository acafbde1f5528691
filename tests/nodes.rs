//! Runs on several nodes (issue 14): two `baton run` processes on this machine, each with
//! its own checkpoint directory, meeting through the store. The torch tests wrap
//! `torchrun --nnodes 2 --nproc-per-node 1` (gloo on 127.0.0.1) around
//! examples/dcp_trainer.py, which saves with torch.distributed.checkpoint; the cheap ones
//! wrap a shell script that writes one file per node and commits it.

use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn python() -> PathBuf {
    let p = std::env::var_os("BATON_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(p.exists(), "{} not found: run the tests with `make test`, which installs torch into .venv", p.display());
    p
}

fn example() -> String {
    root().join("examples/dcp_trainer.py").to_str().unwrap().to_string()
}

/// One epoch of 16 steps, a commit every 5.
const ARGS: &[&str] = &["--epochs", "1", "--commit-every", "5", "--trace"];

/// torchrun as one node of `nodes` (the rank and address from baton's environment), or
/// on its own (`nodes` 1: `--standalone`, no rendezvous).
fn torchrun(nodes: u32, extra: &[&str]) -> Vec<String> {
    let py = python().to_str().unwrap().to_string();
    let args: Vec<String> = ARGS.iter().chain(extra).map(|a| a.to_string()).collect();
    if nodes == 1 {
        let mut cmd = vec![py, "-m".into(), "torch.distributed.run".into(), "--standalone".into(), "--nproc-per-node".into(), "1".into()];
        cmd.push(example());
        cmd.extend(args);
        return cmd;
    }
    let script = format!(
        "exec {py} -m torch.distributed.run --nnodes \"$NNODES\" --node-rank \"$NODE_RANK\" --nproc-per-node 1 \
         --master-addr \"$MASTER_ADDR\" --master-port \"$MASTER_PORT\" {} {}",
        example(),
        args.join(" ")
    );
    vec!["sh".into(), "-c".into(), script]
}

/// What one `baton run` node did.
struct NodeRun {
    code: Option<i32>,
    out: String,
    err: String,
}

/// Run `baton run` on every node in `nodes` at once (each with a new empty slot); with
/// `evict`, SIGTERM goes to node `evict.0`'s baton as soon as its stderr has a line
/// containing `evict.1`.
fn run_nodes(store: &str, run: &str, nodes: &[(Vec<String>, Vec<String>)], evict: Option<(usize, &str)>) -> Vec<NodeRun> {
    let mut handles = Vec::new();
    for (i, (flags, cmd)) in nodes.iter().enumerate() {
        let (store, run, flags, cmd) = (store.to_string(), run.to_string(), flags.clone(), cmd.clone());
        let marker = evict.filter(|(n, _)| *n == i).map(|(_, m)| m.to_string());
        handles.push(std::thread::spawn(move || {
            let slot = tempfile::tempdir().unwrap();
            let mut extra: Vec<&str> = vec!["--device", "cpu", "--vacate-window", "60s"];
            extra.extend(flags.iter().map(String::as_str));
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let mut child = spawn_run(slot.path(), &store, &run, &[], &extra, &cmd);
            let mut stdout = child.stdout.take().unwrap();
            let out = std::thread::spawn(move || {
                let mut s = String::new();
                stdout.read_to_string(&mut s).unwrap();
                s
            });
            let pid = child.id();
            let done = Arc::new(Mutex::new(false));
            // A hang (ranks stuck in a collective) fails the test instead of hanging it.
            let watchdog = {
                let done = done.clone();
                std::thread::spawn(move || {
                    let start = Instant::now();
                    while !*done.lock().unwrap() {
                        if start.elapsed() > Duration::from_secs(240) {
                            send_signal(pid, libc::SIGKILL);
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    false
                })
            };
            let mut err = String::new();
            let mut signalled = false;
            for line in BufReader::new(child.stderr.take().unwrap()).lines() {
                let line = line.unwrap();
                if let Some(m) = &marker {
                    if !signalled && line.contains(m.as_str()) {
                        send_signal(pid, libc::SIGTERM);
                        signalled = true;
                    }
                }
                err.push_str(&line);
                err.push('\n');
            }
            let status = wait_with_timeout(&mut child, Duration::from_secs(120));
            *done.lock().unwrap() = true;
            assert!(!watchdog.join().unwrap(), "node {i} hung:\n{err}");
            if let Some(m) = &marker {
                assert!(signalled, "node {i} never printed {m:?}:\n{err}");
            }
            NodeRun { code: status.code(), out: out.join().unwrap(), err }
        }));
    }
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn two_nodes(extra: &[&str]) -> Vec<(Vec<String>, Vec<String>)> {
    (0..2)
        .map(|r| {
            let flags = vec!["--nodes".into(), "2".into(), "--node-rank".into(), r.to_string(), "--master-addr".into(), "127.0.0.1".into()];
            (flags, torchrun(2, extra))
        })
        .collect()
}

fn one_node(extra: &[&str]) -> Vec<(Vec<String>, Vec<String>)> {
    vec![(vec![], torchrun(1, extra))]
}

fn logs(runs: &[NodeRun]) -> String {
    runs.iter().enumerate().map(|(i, r)| format!("--- node {i} (exit {:?}) ---\n{}", r.code, r.err)).collect()
}

/// The weights the `params:` line gives (float32).
fn params_of(out: &str) -> Vec<f32> {
    let line = out.lines().find_map(|l| l.strip_prefix("params: ")).expect("no params line");
    hex::decode(line.trim()).unwrap().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// `trainer[R]: batch E S R ...` lines: ("E S R", the rest).
fn batches(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.split_once(": batch ").map(|(_, b)| b))
        .map(|b| {
            let f: Vec<_> = b.splitn(4, ' ').collect();
            (f[..3].join(" "), f.get(3).unwrap_or(&"").to_string())
        })
        .collect()
}

/// An uninterrupted two-node run under baton: (digest, weights, batch lines). Computed
/// once for the tests that compare with it.
type Reference = (String, Vec<f32>, Vec<(String, String)>);

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let store = tempfile::tempdir().unwrap();
        let runs = run_nodes(store.path().to_str().unwrap(), "reference", &two_nodes(&[]), None);
        assert!(runs.iter().all(|r| r.code == Some(0)), "the uninterrupted two-node run failed:\n{}", logs(&runs));
        let digest = digest_of(runs[0].out.as_bytes()).expect("no digest");
        let all = batches(&logs(&runs));
        assert_eq!(all.len(), 2 * 16, "{}", logs(&runs));
        (digest, params_of(&runs[0].out), all)
    })
}

/// "trainer[R]: stopped at epoch E step S" of every rank: all at one step, returned.
fn stopped_at(runs: &[NodeRun], ranks: usize) -> String {
    let all = logs(runs);
    let stops: Vec<&str> =
        all.lines().filter_map(|l| l.split_once(": stopped at ")).map(|(_, rest)| rest.split(" (").next().unwrap()).collect();
    assert_eq!(stops.len(), ranks, "not every rank stopped:\n{all}");
    assert!(stops.iter().all(|s| *s == stops[0]), "the ranks stopped at different steps:\n{all}");
    stops[0].to_string()
}

fn inspect(store: &str, run: &str) -> serde_json::Value {
    let out = baton().args(["inspect", "--store", store, run, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The issue's scenario. Two nodes train; node 1 alone gets SIGTERM mid-interval. Its
/// torchrun forwards it to its trainer, the ranks agree on the step (all_reduce), both
/// save it with DCP and each node commits its part; node 0's trainer exits 143 too, so
/// the checkpoint of that step is complete although only node 1 was evicted. Both
/// restart in new empty directories with a new rendezvous generation, every node
/// restores both parts, and the final weights equal the uninterrupted run's bit for bit,
/// as does every step each rank took.
#[test]
fn two_nodes_one_evicted_resume_bit_exact() {
    let (want, _, want_batches) = reference();
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let first = run_nodes(s, "two", &two_nodes(&["--step-seconds", "0.2"]), Some((1, "trainer[1]: batch 0 7 ")));
    let at = stopped_at(&first, 2);
    assert!(first.iter().all(|r| r.code == Some(1)), "torchrun exits 1 after its worker's 143:\n{}", logs(&first));
    assert!(first[1].err.contains("eviction signal"), "node 1 was evicted:\n{}", first[1].err);
    assert!(!first[0].err.contains("eviction signal"), "node 0 never got a signal:\n{}", first[0].err);

    let second = run_nodes(s, "two", &two_nodes(&[]), None);
    let all = format!("{}{}", logs(&first), logs(&second));
    assert!(second.iter().all(|r| r.code == Some(0)), "{all}");
    for (rank, r) in second.iter().enumerate() {
        assert!(r.err.contains(&format!("trainer[{rank}]: resumed at {at}\n")), "rank {rank} did not resume at {at}:\n{all}");
        assert!(r.err.contains("rendezvous generation 2"), "not a new generation:\n{all}");
    }
    assert_eq!(digest_of(second[0].out.as_bytes()).as_deref(), Some(want.as_str()), "weights differ from the uninterrupted run\n{all}");
    let took = batches(&all);
    assert_eq!(took.len(), want_batches.len(), "every (epoch, step, rank) is trained exactly once across attempts:\n{all}");
    for step in took {
        assert!(want_batches.contains(&step), "a step differs from the uninterrupted run: {step:?}\n{all}");
    }

    let run = inspect(s, "two");
    let parts = run["parts"].as_array().unwrap();
    let evicted = parts.iter().find(|p| format!("epoch {} step {}", p["epoch"], p["step"]) == at).expect("the eviction's checkpoint");
    assert_eq!(evicted["complete"], true, "{run}");
    assert_eq!(evicted["present"], serde_json::json!([0, 1]), "{run}");
    let endings: Vec<_> =
        run["attempts"].as_array().unwrap().iter().map(|a| a["end"]["ending"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(endings.iter().filter(|e| *e == "evicted").count(), 1, "{endings:?}");
    let out = baton().args(["verify", "--store", s, "two"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// Restart at another size, both ways: two nodes evicted, resumed on one node (DCP
/// reshards both parts onto one rank) and evicted again, then resumed on two nodes from
/// that one-node checkpoint, to the end. The attempts record the world-size changes.
/// The weights cannot be bit-exact with the two-node run (one rank sums a batch's
/// gradient in another order than two ranks' all_reduce of half-batch means), so they
/// are compared within 1e-5 (measured: 3.7e-8, float rounding only).
#[test]
fn a_two_node_checkpoint_resumes_on_one_node_and_back() {
    let (_, want, _) = reference();
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let first = run_nodes(s, "resize", &two_nodes(&["--step-seconds", "0.2"]), Some((0, "trainer[0]: batch 0 3 ")));
    let at1 = stopped_at(&first, 2);
    let second = run_nodes(s, "resize", &one_node(&["--step-seconds", "0.2"]), Some((0, "trainer[0]: batch 0 10 ")));
    let at2 = stopped_at(&second, 1);
    let third = run_nodes(s, "resize", &two_nodes(&[]), None);
    let all = format!("{}{}{}", logs(&first), logs(&second), logs(&third));
    assert!(third.iter().all(|r| r.code == Some(0)), "{all}");
    assert!(second[0].err.contains(&format!("resumed at {at1}\n")) && second[0].err.contains("restored_nodes=2"), "{all}");
    for r in &third {
        assert!(r.err.contains(&format!("resumed at {at2}\n")) && r.err.contains("restored_nodes=1"), "{all}");
    }
    let got = params_of(&third[0].out);
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("largest difference from the two-node run: {worst:e}");
    assert!(worst < 1e-5, "weights differ by up to {worst} from the two-node run:\n{all}");

    let run = inspect(s, "resize");
    let sizes: Vec<_> = run["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["start"]["nodes"]["nodes"].as_u64().unwrap_or(1), a["start"]["nodes"]["restored_nodes"].as_u64()))
        .collect();
    assert!(sizes.contains(&(1, Some(2))) && sizes.contains(&(2, Some(1))), "{sizes:?}");
}

/// The cheap trainer: every node removes its previous files, writes `shard-<node>` for
/// two commits, says what it was given, and exits 0. Node 0 waits for node 1's marker
/// before ending (as torchrun would), so node 1 joins a generation whose node 0 lives.
fn shell_node(sync: &Path, rank: u32) -> (Vec<String>, Vec<String>) {
    let script = format!(
        r#"echo "node=$NODE_RANK of $NNODES at $MASTER_ADDR:$MASTER_PORT generation $BATON_RENDEZVOUS_GENERATION restored=${{BATON_RESTORED_SEQ:-none}} files=$(cd "$BATON_CHECKPOINT_DIR" && ls | tr '\n' ,)" >&2
touch {sync}/joined-$NODE_RANK
rm -f "$BATON_CHECKPOINT_DIR"/shard-*
for step in 1 2; do echo "$NODE_RANK at $step" > "$BATON_CHECKPOINT_DIR/shard-$NODE_RANK"; "$BATON_BIN" commit --step $step >/dev/null; done
while [ ! -e {sync}/joined-1 ]; do sleep 0.05; done
"#,
        sync = sync.display()
    );
    let flags = vec!["--nodes".into(), "2".into(), "--node-rank".into(), rank.to_string(), "--rendezvous-timeout".into(), "60s".into()];
    (flags, vec!["sh".into(), "-c".into(), script])
}

/// A checkpoint with one node's part missing is never restored: the previous complete
/// one is, on every node, with both nodes' files (and `inspect` and `verify` say which
/// one is incomplete).
#[test]
fn a_checkpoint_missing_a_node_s_part_is_never_restored() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let sync = tempfile::tempdir().unwrap();
    let first = run_nodes(s, "parts", &[shell_node(sync.path(), 0), shell_node(sync.path(), 1)], None);
    assert!(first.iter().all(|r| r.code == Some(0)), "{}", logs(&first));
    // Seqs 1 and 2 committed, 3 the final capture; node 1's part of 3 is lost.
    let part = store.path().join("runs/parts/parts/0000000003/0001.json");
    std::fs::remove_file(&part).unwrap_or_else(|e| panic!("{}: {e}\n{}", part.display(), logs(&first)));

    let sync = tempfile::tempdir().unwrap();
    let second = run_nodes(s, "parts", &[shell_node(sync.path(), 0), shell_node(sync.path(), 1)], None);
    let all = format!("{}{}", logs(&first), logs(&second));
    assert!(second.iter().all(|r| r.code == Some(0)), "{all}");
    assert!(second[0].err.contains("SKIPPING CHECKPOINT 3") && second[0].err.contains("node(s) [1] of 2 are missing"), "{all}");
    for (rank, r) in second.iter().enumerate() {
        assert!(r.err.contains("restored=2 files=shard-0,shard-1,"), "node {rank} did not get checkpoint 2 with both parts:\n{all}");
        assert!(r.err.contains("generation 2"), "{all}");
    }
    // The new generation numbers its checkpoints past the incomplete one.
    let run = inspect(s, "parts");
    let rows: Vec<_> =
        run["parts"].as_array().unwrap().iter().map(|p| (p["seq"].as_u64().unwrap(), p["complete"].as_bool().unwrap())).collect();
    assert_eq!(rows, [(1, true), (2, true), (3, false), (4, true), (5, true), (6, true)], "{run}");
    let out = baton().args(["verify", "--store", s, "parts", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "an incomplete checkpoint is not damage: {report}");
    assert_eq!(report["incomplete"][0]["seq"], 3, "{report}");
    assert_eq!(report["checkpoints"], 6, "{report}");
}

/// A node waiting for an address that never comes gives up after its bound with a clear
/// message and its own exit code, having started nothing; and a node never joins a
/// generation one of its own attempts already used (node 0 has not restarted since).
#[test]
fn a_node_waiting_for_node_0_gives_up_after_its_bound() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let marker = slot.path().join("started");
    let cmd = ["touch", marker.to_str().unwrap()];
    let start = Instant::now();
    let out =
        output_of(spawn_run(slot.path(), s, "lonely", &[], &["--nodes", "2", "--node-rank", "1", "--rendezvous-timeout", "2s"], &cmd));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("node 0 did not publish an address within 2 s; is node 0 running?"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    assert!(!marker.exists(), "the command ran");

    // A finished two-node run: its generation is used, so node 1 alone waits in vain.
    let sync = tempfile::tempdir().unwrap();
    let runs = run_nodes(s, "used", &[shell_node(sync.path(), 0), shell_node(sync.path(), 1)], None);
    assert!(runs.iter().all(|r| r.code == Some(0)), "{}", logs(&runs));
    let out = output_of(spawn_run(slot.path(), s, "used", &[], &["--nodes", "2", "--node-rank", "1", "--rendezvous-timeout", "2s"], &cmd));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("generation, 1, is stale"), "{err}");
    assert!(!marker.exists(), "the command ran");
}

/// A node evicted after it joined a generation but before its command started has not
/// used that generation: node 0's command never met it and still waits, so the node's
/// next attempt joins the same generation at once (it used to wait for a new one, and
/// every node waited until node 0's command gave up on its peer). The evicted attempt is
/// written into the store as baton writes one (a start record in generation 1, an end
/// record `evicted` with `command_started: false`): a real signal between the join and
/// the command's start is a race of milliseconds.
#[test]
fn a_node_evicted_before_its_command_started_rejoins_the_generation_node_0_waits_in() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let sync = tempfile::tempdir().unwrap();
    let joined = sync.path().join("joined");
    // Node 0's command waits up to 60 s for node 1's, as torchrun waits for its peers.
    let wait = format!("for i in $(seq 600); do [ -e {} ] && exit 0; sleep 0.1; done; exit 1", joined.display());
    let slot0 = tempfile::tempdir().unwrap();
    let node0 = spawn_run(slot0.path(), s, "r", &[], &["--nodes", "2", "--node-rank", "0", "--device", "cpu"], &["sh", "-c", &wait]);
    let attempts = store.path().join("runs/r/attempts");
    let first = attempts.join("000001.json");
    let start = Instant::now();
    while !first.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    assert_eq!(record["nodes"]["generation"], 1, "{record}");
    record["attempt"] = 2.into();
    record["nodes"]["node"] = 1.into();
    std::fs::write(attempts.join("000002.json"), serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let ended = record["started"].as_f64().unwrap() + 1.0;
    let end = serde_json::json!({"format": 1, "attempt": 2, "ended": ended, "ending": "evicted", "committed": [], "durable": [],
        "eviction_signal": 15, "evicted_at": ended, "command_started": false});
    std::fs::write(attempts.join("000002.end.json"), serde_json::to_vec_pretty(&end).unwrap()).unwrap();

    let slot1 = tempfile::tempdir().unwrap();
    let node1 = spawn_run(
        slot1.path(),
        s,
        "r",
        &[],
        &["--nodes", "2", "--node-rank", "1", "--device", "cpu", "--rendezvous-timeout", "10s"],
        &["touch", joined.to_str().unwrap()],
    );
    let (out1, out0) = (output_of(node1), output_of(node0));
    let all = format!("node 0:\n{}\nnode 1:\n{}", text(&out0.stderr), text(&out1.stderr));
    assert_eq!(out1.status.code(), Some(0), "{all}");
    assert!(text(&out1.stderr).contains("joining rendezvous generation 1 "), "{all}");
    assert_eq!(out0.status.code(), Some(0), "{all}");
}

/// `--nodes` needs a rank in range, and a rank needs `--nodes`.
#[test]
fn node_flags_are_checked() {
    for (flags, says) in [
        (&["--nodes", "2"][..], "needs this node's --node-rank"),
        (&["--nodes", "2", "--node-rank", "2"][..], "out of range"),
        (&["--node-rank", "1"][..], "needs --nodes"),
    ] {
        let out =
            baton().args(["run", "--run-id", "r", "--store", "/nonexistent-store"]).args(flags).args(["--", "true"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(text(&out.stderr).contains(says), "{flags:?}: {}", text(&out.stderr));
    }
}

/// `baton simulate --nodes 2` around fixtures/nodes_trainer.py (two standard-library
/// nodes that all-reduce over TCP, so a start takes a fraction of a second): `extra`
/// flags, a trace file; returns the output and the JSON report.
fn simulate_nodes(work: &Path, trace: &str, extra: &[&str], trainer: &[&str]) -> (std::process::Output, serde_json::Value) {
    std::fs::write(work.join("trace"), trace).unwrap();
    let out = baton()
        .current_dir(work)
        .args(["simulate", "--store", "store", "--work-dir", "sim", "--json", "--nodes", "2", "--trace", "trace"])
        .args(["--slots", "a100-40gb,cpu", "--vacate-window", "20s", "--verify"])
        .args(extra)
        .arg("--")
        .arg("python3")
        .arg(fixture("nodes_trainer.py"))
        // Node 1 gives up on node 0's address only after 30 s of refusals: on a loaded
        // machine node 0's python may take seconds to listen, and giving up then is a
        // failure with no eviction to blame. Node 0 waits longer for its peers than that,
        // so a node 1 stuck on a stale address gives up and joins the next generation.
        .args(["--steps", "50", "--step-seconds", "0.1", "--commit-every", "10", "--connect-timeout", "30", "--join-timeout", "60"])
        .args(trainer)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, v)
}

/// Every slot's baton.log, for failure messages.
fn slot_logs(work: &Path) -> String {
    let mut dirs: Vec<_> = std::fs::read_dir(work.join("sim")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs.iter().filter_map(|d| std::fs::read_to_string(d.join("baton.log")).ok().map(|l| format!("--- {} ---\n{l}", d.display()))).collect()
}

/// `simulate --nodes 2`: a soft eviction of one node, then a hard one, each hitting the
/// node the seed draws; the other node stops with it (at the same step, or when its peer
/// vanishes), every node that exited starts again on a new slot, and the run completes
/// with the final weights of an uninterrupted two-node run. Robust to a slow machine:
/// the trace's times only say "not before" (an eviction lands once every node runs), an
/// eviction that lands while a node is still restoring or waiting for the rendezvous is
/// one the nodes recover from too, and the hard eviction always lands before the end:
/// after the soft one (at 2 s, at most step 20) at least 30 steps of 0.1 s remain.
#[test]
fn simulate_two_nodes_evicts_one_node_at_a_time_and_verifies() {
    let work = tempfile::tempdir().unwrap();
    let (out, r) = simulate_nodes(work.path(), "2 soft\n4 hard\n", &["--seed", "4"], &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}\n{r}\n{}", out.status, slot_logs(work.path()));
    assert_eq!(r["completed"], true, "{r}");
    assert_eq!(r["verify"]["pass"], true, "{}\n{}", r["verify"], slot_logs(work.path()));
    let t = &r["totals"];
    assert_eq!((t["evictions"].as_u64(), t["soft"].as_u64(), t["hard"].as_u64()), (Some(2), Some(1), Some(1)), "{t}");
    // Per node: its attempts and evictions; the two evictions are all the nodes had, and
    // every eviction was followed by a new attempt of the node it hit.
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{r}");
    assert_eq!(nodes.iter().map(|n| n["evictions"].as_u64().unwrap()).sum::<u64>(), 2, "{r}");
    for n in nodes {
        assert!(n["attempts"].as_u64().unwrap() > n["evictions"].as_u64().unwrap(), "{n}");
    }
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len() as u64, nodes.iter().map(|n| n["attempts"].as_u64().unwrap()).sum::<u64>(), "{r}");
    for node in [0, 1] {
        let last = attempts.iter().rfind(|a| a["node"] == node).unwrap_or_else(|| panic!("no attempt of node {node}: {r}"));
        assert_eq!(last["ending"], "completed", "{r}");
    }
    assert!(r["checkpoints"]["complete"].as_u64().unwrap() >= 1, "{r}");
    let goodput = t["goodput"].as_f64().unwrap();
    assert!(goodput > 0.0 && goodput <= 1.0, "{t}");
    // The slots are one per node and attempt.
    let slots = std::fs::read_dir(work.path().join("sim"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("slot-"))
        .count();
    assert_eq!(slots, attempts.len(), "{r}");
}

/// The same with a trainer that skips a step when its job is started again: verify
/// catches it on several nodes too (exit 71), so the comparison above is not vacuous.
/// The bug shows on any restart, whenever the eviction lands (even before the trainer
/// started): the evicted node is always started again.
#[test]
fn simulate_two_nodes_verify_catches_a_trainer_that_skips_a_step_on_restart() {
    let work = tempfile::tempdir().unwrap();
    let (out, r) = simulate_nodes(work.path(), "2 soft\n", &["--seed", "4"], &["--bug", "skip-on-restart"]);
    assert_eq!(out.status.code(), Some(71), "{}\n{r}\n{}", text(&out.stderr), slot_logs(work.path()));
    let msg = r["verify"]["message"].as_str().unwrap();
    assert!(msg.starts_with("FAIL: first differing file"), "{msg}");
}

/// `baton inspect` with no run on a store holding a two-node run (`simulate --nodes 2`,
/// one node evicted): the overview counts the checkpoints in parts as `inspect RUN` and
/// the simulate report do, takes its progress from the newest complete one, counts its
/// bytes, and averages goodput over the nodes (their attempts overlap in time: summed,
/// it came out at 171%).
#[test]
fn inspect_overview_counts_a_two_node_run_s_checkpoints_and_goodput_per_node() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("trace"), "2 soft\n").unwrap();
    let out = baton()
        .current_dir(work.path())
        .args(["simulate", "--store", "store", "--work-dir", "sim", "--json", "--nodes", "2", "--trace", "trace", "--seed", "4"])
        .args(["--slots", "a100-40gb,cpu", "--vacate-window", "20s", "--", "python3"])
        .arg(fixture("nodes_trainer.py"))
        .args(["--steps", "30", "--step-seconds", "0.1", "--commit-every", "10", "--connect-timeout", "30", "--join-timeout", "60"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert!(out.status.success(), "{:?}\n{}\n{r}\n{}", out.status, text(&out.stderr), slot_logs(work.path()));
    let store = work.path().join("store");
    let s = store.to_str().unwrap();
    let run = r["run_id"].as_str().unwrap();

    let out = baton().args(["inspect", "--store", s, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &v.as_array().unwrap()[0];
    let detail = inspect(s, run);
    let rows = detail["parts"].as_array().unwrap();
    let complete: Vec<&serde_json::Value> = rows.iter().filter(|p| p["complete"] == true).collect();
    assert!(o["checkpoints"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["checkpoints"].as_u64().unwrap(), complete.len() as u64, "{o}\n{detail}");
    assert_eq!(o["checkpoints"], r["checkpoints"]["complete"], "{o}\n{}", r["checkpoints"]);
    assert_eq!(o["incomplete_checkpoints"], r["checkpoints"]["incomplete"], "{o}\n{}", r["checkpoints"]);
    // Progress from the newest complete checkpoint, the newest seq from the listing.
    let newest = complete.last().unwrap();
    assert_eq!((&o["epoch"], &o["step"]), (&newest["epoch"], &newest["step"]), "{o}\n{newest}");
    assert_eq!(o["latest_seq"], rows.last().unwrap()["seq"], "{o}");
    assert!(o["stored_bytes"].as_u64().unwrap() > 0 && o["manifest_bytes"].as_u64().unwrap() > 0, "{o}");
    // Every attempt with a record, every node's; simulate also counts an eviction that
    // landed before an attempt wrote its record, which the store cannot show.
    assert!(o["attempts"].as_u64().unwrap() >= 3, "{o}");
    assert!(o["evictions"].as_u64().unwrap() <= r["totals"]["evictions"].as_u64().unwrap(), "{o}");
    let goodput = o["goodput"].as_f64().unwrap();
    assert!(goodput > 0.0 && goodput <= 1.0, "{o}");
    assert_eq!(o["nodes"], 2, "{o}");
    // The table says it too.
    let out = baton().args(["inspect", "--store", s]).output().unwrap();
    let table = text(&out.stdout);
    assert!(table.lines().next().unwrap().contains("NODES"), "{table}");
}

/// `--nodes` that simulate cannot run: one clear error, exit 2, nothing started.
#[test]
fn simulate_refuses_bad_node_counts() {
    for (args, says) in [
        (&["--nodes", "0"][..], "--nodes 0: a run has 1 to 64 nodes"),
        (&["--nodes", "65"][..], "a run has 1 to 64 nodes"),
        (&["--nodes", "2", "--interval-sweep", "1s,2s"][..], "--interval-sweep runs on one node only"),
    ] {
        let out = baton().arg("simulate").args(args).args(["--", "true"]).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
}

/// `prune --keep K` on a run in parts: the newest K complete checkpoints stay with every
/// part, older complete ones go with all their parts, an incomplete one older than the
/// newest complete one goes, old rendezvous generations go (the newest stays), and what
/// is left verifies and restores on two nodes.
#[test]
fn prune_keeps_the_newest_complete_checkpoints_in_parts() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    for round in 0..2 {
        let sync = tempfile::tempdir().unwrap();
        let runs = run_nodes(s, "pr", &[shell_node(sync.path(), 0), shell_node(sync.path(), 1)], None);
        assert!(runs.iter().all(|r| r.code == Some(0)), "{}", logs(&runs));
        if round == 0 {
            // Node 1's part of the final checkpoint (3) is lost: 3 is incomplete.
            std::fs::remove_file(store.path().join("runs/pr/parts/0000000003/0001.json")).unwrap();
        }
    }
    let rows = |v: &serde_json::Value| -> Vec<(u64, bool)> {
        v["parts"].as_array().unwrap().iter().map(|p| (p["seq"].as_u64().unwrap(), p["complete"].as_bool().unwrap())).collect()
    };
    let before = inspect(s, "pr");
    assert_eq!(rows(&before), [(1, true), (2, true), (3, false), (4, true), (5, true), (6, true)], "{before}");
    let generations = || -> Vec<String> {
        let mut g: Vec<_> = std::fs::read_dir(store.path().join("runs/pr/rendezvous"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        g.sort();
        g
    };
    assert_eq!(generations().len(), 2);

    let dry = baton().args(["prune", "--store", s, "pr", "--keep", "2", "--grace", "0s", "--dry-run", "--json"]).output().unwrap();
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan["checkpoints"], serde_json::json!([["pr", 1], ["pr", 2], ["pr", 3], ["pr", 4]]), "{plan}");
    assert_eq!(plan["parts"].as_array().unwrap().len(), 7, "two parts each of 1, 2 and 4, one of 3: {plan}");
    assert_eq!(plan["rendezvous"], serde_json::json!([["pr", 1]]), "{plan}");
    assert_eq!(rows(&inspect(s, "pr")).len(), 6, "a dry run deletes nothing");

    let out = baton().args(["prune", "--store", s, "pr", "--keep", "2", "--grace", "0s"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("deleted 1 rendezvous record(s) of old generations"), "{}", text(&out.stdout));
    assert_eq!(rows(&inspect(s, "pr")), [(5, true), (6, true)]);
    assert_eq!(generations(), ["000000002.json"]);
    let out = baton().args(["verify", "--store", s, "pr"]).output().unwrap();
    assert!(out.status.success(), "every chunk a kept part uses is there: {}{}", text(&out.stdout), text(&out.stderr));

    // The nodes meet again (generation 3 after the newest kept) and restore checkpoint 6.
    let sync = tempfile::tempdir().unwrap();
    let runs = run_nodes(s, "pr", &[shell_node(sync.path(), 0), shell_node(sync.path(), 1)], None);
    assert!(runs.iter().all(|r| r.code == Some(0)), "{}", logs(&runs));
    for r in &runs {
        assert!(r.err.contains("generation 3 restored=6 files=shard-0,shard-1,"), "{}", logs(&runs));
    }
}
