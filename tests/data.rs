//! Datasets through the binary: push shares chunks across versions, two pushes of one
//! name at once publish two versions and overwrite nothing, pulls through a
//! shared node-local cache download once and check every byte, `run --data` pulls while
//! the checkpoint restores, and prune keeps what a dataset uses.

use crate::common::fault_proxy::FaultProxy;
use crate::common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `count` files of `size` bytes each (deterministic random bytes, incompressible), in
/// `dir/part-<i>/f<j>.bin`, plus one empty file.
pub(crate) fn make_dataset(dir: &Path, count: usize, size: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let sub = dir.join(format!("part-{}", i % 4));
        std::fs::create_dir_all(&sub).unwrap();
        let bytes: Vec<u8> = (0..size).map(|_| rng.uniform(0.0, 256.0) as u8).collect();
        std::fs::write(sub.join(format!("f{i:03}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("EMPTY"), b"").unwrap();
}

pub(crate) fn ok(out: &Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what} failed ({:?}):\n{}", out.status, text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

fn push(store: &str, dir: &Path, name: &str, env: &[(String, String)]) -> serde_json::Value {
    let out =
        baton().args(["data", "push", "--store", store, "--json", "--name", name]).arg(dir).envs(env.iter().cloned()).output().unwrap();
    ok(&out, "data push")
}

fn pull_cmd(store: &str, name: &str, to: &Path, cache: Option<&Path>) -> Command {
    let mut c = baton();
    c.args(["data", "pull", "--store", store, name, "--json", "--to"]).arg(to);
    if let Some(cache) = cache {
        c.arg("--cache").arg(cache);
    }
    c
}

/// Every file of `a` is in `b` with the same bytes, and nothing else is.
pub(crate) fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().unwrap();
    assert!(out.status.success(), "{} and {} differ:\n{}", a.display(), b.display(), text(&out.stdout));
}

fn chunk_objects(store: &Path) -> usize {
    let mut n = 0;
    for d in std::fs::read_dir(store.join("chunks")).unwrap() {
        n += std::fs::read_dir(d.unwrap().path()).unwrap().count();
    }
    n
}

#[test]
fn a_second_version_stores_only_the_chunks_that_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, data) = (tmp.path().join("store"), tmp.path().join("data"));
    let s = store.to_str().unwrap();
    make_dataset(&data, 40, 20_000, 1);
    // One file of several chunks, to show that a change inside it costs one chunk.
    let mut rng = Rng::new(9);
    let mut big: Vec<u8> = (0..3 << 20).map(|_| rng.uniform(0.0, 256.0) as u8).collect();
    std::fs::write(data.join("big.bin"), &big).unwrap();
    let v1 = push(s, &data, "toy", &[]);
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["sizes"]["new_bytes"], v1["sizes"]["logical_bytes"], "everything is new the first time");
    let objects = chunk_objects(&store);
    let big_chunks = v1["files"].as_array().unwrap().iter().find(|f| f["path"] == "big.bin").unwrap()["chunks"].as_array().unwrap().len();
    assert!(big_chunks > 1, "big.bin should span several chunks");

    // Two small files rewritten, one added, one byte of the big file changed at its start.
    std::fs::write(data.join("part-0/f000.bin"), b"changed").unwrap();
    std::fs::write(data.join("part-1/f001.bin"), b"changed too").unwrap();
    std::fs::write(data.join("new.txt"), b"a new file").unwrap();
    big[10] ^= 0xff;
    std::fs::write(data.join("big.bin"), &big).unwrap();
    let v2 = push(s, &data, "toy", &[]);
    assert_eq!(v2["version"], 2);
    let first_big_chunk =
        v2["files"].as_array().unwrap().iter().find(|f| f["path"] == "big.bin").unwrap()["chunks"][0]["size"].as_u64().unwrap();
    let expected_new = 7 + 11 + 10 + first_big_chunk;
    assert_eq!(v2["sizes"]["new_bytes"].as_u64().unwrap(), expected_new, "only the changed chunks are new: {}", v2["sizes"]);
    assert_eq!(chunk_objects(&store), objects + 4, "four new chunk objects in the store");

    // Both versions come back exactly; the listing and inspection agree.
    let v1_dir = tmp.path().join("v1");
    ok(&pull_cmd(s, "toy@2", &v1_dir, None).output().unwrap(), "pull");
    same_tree(&data, &v1_dir);
    let list = ok(&baton().args(["data", "list", "--store", s, "--json"]).output().unwrap(), "data list");
    assert_eq!((list[0]["name"].as_str(), list[0]["versions"].as_u64(), list[0]["latest"].as_u64()), (Some("toy"), Some(2), Some(2)));
    let out = baton().args(["inspect", "--store", s]).output().unwrap();
    assert!(text(&out.stdout).lines().any(|l| l.starts_with("toy ") && l.contains(" 2 ")), "{}", text(&out.stdout));
    let out = baton().args(["verify", "--store", s, "--dataset", "toy", "--json"]).output().unwrap();
    let report = ok(&out, "verify");
    assert_eq!(report["dataset_versions"], 2, "{report}");
}

#[test]
fn two_slots_sharing_a_cache_download_each_chunk_once() {
    let moto = Moto::start();
    moto.create_bucket("datasets");
    // Responses dripped out slowly while the pulls run, so that the two overlap.
    let proxy = FaultProxy::start(&moto.endpoint(), &["--faults", "slow", "--rate", "0"]);
    let env = proxy.env("k", "s");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_dataset(&data, 48, 40_000, 2);
    push("s3://datasets/store", &data, "shards", &env);
    proxy.set_rate(1.0);
    let cache = tmp.path().join("cache");
    let slots: Vec<_> = (0..2)
        .map(|i| {
            pull_cmd("s3://datasets/store", "shards", &tmp.path().join(format!("slot{i}/data")), Some(&cache))
                .args(["--concurrency", "4"])
                .envs(env.iter().cloned())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<serde_json::Value> = slots.into_iter().map(|c| ok(&output_of(c), "pull")).collect();
    // Every request from here on is slowed, and counted as such (the proxy counts faults).
    let requests = proxy.stats()["faults"]["slow"].as_u64().unwrap();
    let chunks = outs[0]["chunks"].as_u64().unwrap();
    assert_eq!(chunks, 48, "one chunk per non-empty file");
    let fetched: u64 = outs.iter().map(|o| o["fetched_chunks"].as_u64().unwrap()).sum();
    assert_eq!(fetched, chunks, "each chunk fetched once between the two slots: {outs:?}");
    for o in &outs {
        let (f, h) = (o["fetched_chunks"].as_u64().unwrap(), o["cache_hits"].as_u64().unwrap());
        assert_eq!(f + h, chunks, "each slot has every chunk, fetched or from the cache: {o}");
        assert!(o["seconds"].as_f64().unwrap() > 0.3, "the pulls were too fast to overlap: {o}");
    }
    // What the server saw: per slot a listing and the manifest, then one GET per chunk.
    assert!(requests <= chunks + 6, "{requests} requests for {chunks} chunks: some chunks were downloaded twice");
    for i in 0..2 {
        same_tree(&data, &tmp.path().join(format!("slot{i}/data")));
    }
}

#[test]
fn a_corrupt_cached_chunk_is_detected_removed_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, data, cache) = (tmp.path().join("store"), tmp.path().join("data"), tmp.path().join("cache"));
    let s = store.to_str().unwrap();
    make_dataset(&data, 8, 10_000, 3);
    push(s, &data, "toy", &[]);
    let first = ok(&pull_cmd(s, "toy", &tmp.path().join("a"), Some(&cache)).output().unwrap(), "pull");
    assert_eq!(first["fetched_chunks"], 8);
    // One bit flipped in one cached chunk: the size is right, only the hash can tell.
    let entry = std::fs::read_dir(cache.join("chunks")).unwrap().next().unwrap().unwrap().path();
    let entry = std::fs::read_dir(entry).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&entry).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&entry, &bytes).unwrap();
    let out = pull_cmd(s, "toy", &tmp.path().join("b"), Some(&cache)).output().unwrap();
    let second = ok(&out, "pull");
    assert_eq!((second["cache_corrupt"].as_u64(), second["fetched_chunks"].as_u64()), (Some(1), Some(1)), "{second}");
    assert!(text(&out.stderr).contains("was corrupt"), "{}", text(&out.stderr));
    same_tree(&data, &tmp.path().join("b"));
    // The entry was replaced by a good one: the next pull takes everything from the cache.
    let third = ok(&pull_cmd(s, "toy", &tmp.path().join("c"), Some(&cache)).output().unwrap(), "pull");
    assert_eq!((third["cache_corrupt"].as_u64(), third["fetched_chunks"].as_u64()), (Some(0), Some(0)), "{third}");
}

#[test]
fn run_with_data_pulls_it_while_the_checkpoint_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, data) = (tmp.path().join("store"), tmp.path().join("data"));
    let s = store.to_str().unwrap();
    make_dataset(&data, 6, 5_000, 4);
    push(s, &data, "c4.en", &[]);
    // First attempt: a checkpoint to restore.
    let slot1 = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot1.path(), s, "r1", &[], &[], &["sh", "-c", "echo 'epoch 3' > $BATON_CHECKPOINT_DIR/state.txt"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Second: the dataset and the checkpoint, both there when the command starts.
    let slot2 = tempfile::tempdir().unwrap();
    let script = r#"
        set -e
        test "$BATON_DATA_C4_EN" = "$PWD/in/c4"
        cmp "$BATON_DATA_C4_EN/part-1/f001.bin" "$ORIG/part-1/f001.bin"
        test -f "$BATON_DATA_C4_EN/EMPTY"
        cat "$BATON_CHECKPOINT_DIR/state.txt"
        echo "restored $BATON_RESTORED_SEQ""#;
    let cache = tmp.path().join("cache");
    let env = [("ORIG".to_string(), data.display().to_string())];
    let out = output_of(spawn_run(
        slot2.path(),
        s,
        "r1",
        &env,
        &["--data", "c4.en=in/c4", "--cache", cache.to_str().unwrap()],
        &["sh", "-c", script],
    ));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("epoch 3") && stdout.contains("restored 1"), "{stdout}");
    assert!(stderr.contains("pulled dataset c4.en version 1"), "{stderr}");
    same_tree(&data, &slot2.path().join("in/c4"));
}

#[test]
fn prune_never_deletes_a_chunk_a_dataset_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, data) = (tmp.path().join("store"), tmp.path().join("data"));
    let s = store.to_str().unwrap();
    make_dataset(&data, 5, 3_000, 5);
    push(s, &data, "toy", &[]);
    // A run with two checkpoints; keeping one makes the first one's chunk unreferenced.
    let slot = tempfile::tempdir().unwrap();
    let script = r#"echo one > $BATON_CHECKPOINT_DIR/w; "$BATON_BIN" commit --epoch 1 && echo two > $BATON_CHECKPOINT_DIR/w"#;
    let out = output_of(spawn_run(slot.path(), s, "r", &[], &[], &["sh", "-c", script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = baton().args(["prune", "--store", s, "--keep", "1", "--grace", "0s", "--json"]).output().unwrap();
    let plan = ok(&out, "prune");
    assert_eq!(plan["chunks"], 1, "only the pruned checkpoint's chunk goes: {plan}");
    let out = baton().args(["verify", "--store", s, "--dataset", "toy"]).output().unwrap();
    assert!(out.status.success(), "prune deleted chunks of the dataset:\n{}", text(&out.stdout));
    let again = tmp.path().join("again");
    ok(&pull_cmd(s, "toy", &again, None).output().unwrap(), "pull");
    same_tree(&data, &again);
}

#[test]
fn bad_dataset_input_gets_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, data) = (tmp.path().join("store"), tmp.path().join("data"));
    let s = store.to_str().unwrap();
    make_dataset(&data, 2, 100, 6);
    push(s, &data, "toy", &[]);
    let fails = |args: &[&str], code: i32, says: &str| {
        let out = baton().current_dir(tmp.path()).args(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: expected {says:?} in {err}");
        assert_eq!(err.matches("error:").count(), 1, "{args:?}: one error line: {err}");
        err
    };
    fails(&["data", "pull", "--store", s, "nope", "--to", "x"], 2, "no dataset nope in");
    fails(&["data", "pull", "--store", s, "toy@7", "--to", "x"], 2, "has no version 7");
    let e = fails(&["run", "--store", s, "--run-id", "r", "--data", "nope=d", "--", "true"], 2, "no dataset nope in");
    assert!(e.contains("baton data list"), "{e}");
    fails(&["run", "--store", s, "--run-id", "r", "--data", "toy", "--", "true"], 2, "expected NAME=PATH");
    fails(&["run", "--store", s, "--run-id", "r", "--data", "a/b=x", "--", "true"], 2, "dataset name");
    fails(&["run", "--store", s, "--run-id", "r", "--data", "a-b=x", "--data", "a.b=y", "--", "true"], 2, "BATON_DATA_A_B");
    // A cache under a regular file cannot be made, whoever runs the test (root included).
    std::fs::write(tmp.path().join("file"), b"").unwrap();
    let e = fails(&["data", "pull", "--store", s, "toy", "--to", "y", "--cache", "file/cache"], 2, "cannot use the cache directory");
    assert!(e.contains("pass --cache DIR"), "{e}");
    fails(&["run", "--store", s, "--run-id", "r", "--data", "toy=d", "--cache", "file/cache", "--", "true"], 2, "cannot use the cache");
    fails(&["data", "push", "--store", s, "--name", "x", "no-such-dir"], 2, "push a directory");
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("y").exists() && !tmp.path().join("d").exists());
}

/// Two pushes of one name started at once, as two jobs on two machines would start them,
/// each of its own directory. Many files, so that each push lists the versions long
/// before either publishes and both pick version 1 (the loser says so on stderr); but
/// what is asserted holds whatever the interleaving: both publish, as versions 1 and 2,
/// each version holds exactly the directory of the push that reported it, and `verify`
/// and `data pull` of both pass. Returns the loser's stderr line, if the race happened.
fn two_pushes_at_once(store: &str, env: &[(String, String)], tmp: &Path, files: usize) -> Option<String> {
    let dirs = [tmp.join("push-a"), tmp.join("push-b")];
    for (i, d) in dirs.iter().enumerate() {
        make_dataset(d, files, 8_000, 20 + i as u64);
    }
    let pushes: Vec<_> = dirs
        .iter()
        .map(|d| {
            baton()
                .args(["data", "push", "--store", store, "--json", "--name", "shared"])
                .arg(d)
                .envs(env.iter().cloned())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = pushes.into_iter().map(output_of).collect();
    let versions: Vec<u64> = outs.iter().map(|o| ok(o, "a push racing another")["version"].as_u64().unwrap()).collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2], "the two pushes must publish two versions: {versions:?}");
    let list = ok(&baton().args(["data", "list", "--store", store, "--json"]).envs(env.iter().cloned()).output().unwrap(), "data list");
    assert_eq!((list[0]["versions"].as_u64(), list[0]["latest"].as_u64()), (Some(2), Some(2)), "{list}");
    // Neither version was overwritten: each pulls back as the directory of its own push.
    for (d, v) in dirs.iter().zip(&versions) {
        let to = tmp.join(format!("pulled-{v}"));
        ok(&pull_cmd(store, &format!("shared@{v}"), &to, None).envs(env.iter().cloned()).output().unwrap(), "pull");
        same_tree(d, &to);
    }
    let out = baton().args(["verify", "--store", store, "--dataset", "shared", "--json"]).envs(env.iter().cloned()).output().unwrap();
    let report = ok(&out, "verify");
    assert_eq!(report["dataset_versions"], 2, "{report}");
    let raced: Vec<String> = outs
        .iter()
        .flat_map(|o| text(&o.stderr).lines().filter(|l| l.contains("at the same time")).map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(raced.len() <= 1, "only a loser takes the next version: {raced:?}");
    raced.into_iter().next()
}

#[test]
fn two_pushes_of_one_name_at_once_on_a_directory_store_publish_two_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let raced = two_pushes_at_once(store.to_str().unwrap(), &[], tmp.path(), 300);
    eprintln!("the pushes raced for version 1: {raced:?}");
}

#[test]
fn two_pushes_of_one_name_at_once_on_s3_publish_two_versions() {
    let moto = Moto::start();
    moto.create_bucket("datasets");
    let tmp = tempfile::tempdir().unwrap();
    // Each file costs two requests to moto: 100 take the pushes far past their listings.
    let raced = two_pushes_at_once("s3://datasets/store", &moto.env("k", "s"), tmp.path(), 100);
    eprintln!("the pushes raced for version 1: {raced:?}");
}
