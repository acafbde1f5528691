//! Damaged and hostile store contents: verify names what is broken, run falls back to
//! the newest intact checkpoint, restore never writes outside its target.

use crate::common::*;
use std::path::Path;

/// A finished run of the trainer in a directory store; returns the manifest paths.
fn finished_run(store: &Path, run: &str) -> Vec<std::path::PathBuf> {
    let slot = tempfile::tempdir().unwrap();
    let mut cmd = vec!["python3", trainer().to_str().unwrap()];
    cmd.extend_from_slice(&["--epochs", "3", "--steps-per-epoch", "4", "--step-seconds", "0", "--blob-mb", "1"]);
    let out = output_of(spawn_run(slot.path(), store.to_str().unwrap(), run, &[], &[], &cmd));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut m: Vec<_> = std::fs::read_dir(store.join("runs").join(run).join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    m.sort();
    m
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn chunk_path(store: &Path, hash: &str) -> std::path::PathBuf {
    store.join("chunks").join(&hash[..2]).join(hash)
}

#[test]
fn a_flipped_byte_is_found_by_verify_and_run_falls_back() {
    let store = tempfile::tempdir().unwrap();
    let manifests = finished_run(store.path(), "flip");
    let latest = manifest(manifests.last().unwrap());
    let latest_seq = latest["seq"].as_u64().unwrap();
    // weights.bin changes at every save, so its chunks belong to the latest checkpoint only.
    let file = latest["files"].as_array().unwrap().iter().find(|f| f["path"] == "weights.bin").unwrap();
    let hash = file["chunks"][0]["hash"].as_str().unwrap();
    let victim = chunk_path(store.path(), hash);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();

    let s = store.path().to_str().unwrap();
    let out = baton().args(["verify", "--store", s]).output().unwrap();
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(71), "{report}");
    assert!(report.contains(&format!("checkpoint {latest_seq} file weights.bin")), "{report}");
    assert_eq!(report.matches("DAMAGED").count(), 1, "{report}");

    let out = baton().args(["verify", "--store", s, "flip", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["damaged"][0]["seq"], latest_seq);
    assert_eq!(v["damaged"][0]["file"], "weights.bin");

    // A new slot: the damaged checkpoint is skipped loudly, the previous one restored.
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "flip", &[], &[], &["sh", "-c", "echo restored=$BATON_RESTORED_SEQ; exit 0"]));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("SKIPPING DAMAGED CHECKPOINT {latest_seq}")), "{err}");
    assert!(text(&out.stdout).contains(&format!("restored={}", latest_seq - 1)), "{}\n{err}", text(&out.stdout));
}

/// Plant a hand-edited copy of a real manifest as a new run's checkpoint 1.
fn plant(store: &Path, run: &str, edit: impl Fn(&mut serde_json::Value)) {
    let manifests = finished_run(store, &format!("{run}-src"));
    let mut m = manifest(&manifests[0]);
    m["run_id"] = run.into();
    m["seq"] = 1.into();
    edit(&mut m);
    let dir = store.join("runs").join(run).join("checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0000000001.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

fn restore_refused(store: &Path, run: &str, must_say: &str) {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("target");
    let out = baton().args(["restore", "--store", store.to_str().unwrap(), run, "1", "--to", target.to_str().unwrap()]).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "hostile manifest was restored");
    assert!(err.contains(must_say), "expected {must_say:?} in: {err}");
    // Nothing written: not the target, not its surroundings, not absolute paths.
    let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(left.is_empty(), "restore left {left:?}");
    assert!(!Path::new("/tmp/baton-hostile-absolute").exists());
}

#[test]
fn hostile_manifests_are_refused_and_nothing_is_written_outside() {
    let store = tempfile::tempdir().unwrap();
    plant(store.path(), "abs", |m| m["files"][0]["path"] = "/tmp/baton-hostile-absolute".into());
    restore_refused(store.path(), "abs", "absolute path");
    plant(store.path(), "dotdot", |m| m["files"][0]["path"] = "../../escaped".into());
    restore_refused(store.path(), "dotdot", "'..' component");
    plant(store.path(), "size", |m| {
        let s = m["files"][0]["size"].as_u64().unwrap();
        m["files"][0]["size"] = (s + 1).into();
    });
    restore_refused(store.path(), "size", "does not match its chunks");
    plant(store.path(), "nested", |m| {
        let mut f = m["files"][0].clone();
        f["path"] = format!("{}/inner", m["files"][0]["path"].as_str().unwrap()).into();
        m["files"].as_array_mut().unwrap().push(f);
    });
    restore_refused(store.path(), "nested", "is listed as a file");
    plant(store.path(), "hash", |m| m["files"][0]["sha256"] = "0".repeat(64).into());
    restore_refused(store.path(), "hash", "manifest says");
    plant(store.path(), "junk", |m| *m = serde_json::json!({"format": 1, "files": "no"}));
    restore_refused(store.path(), "junk", "not a baton manifest");
}

#[test]
fn restore_never_follows_a_symlink_out_of_its_target() {
    let store = tempfile::tempdir().unwrap();
    finished_run(store.path(), "link");
    let outside = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    let link = outside.path().join("ckpt");
    std::os::unix::fs::symlink(victim.path(), &link).unwrap();
    let out =
        baton().args(["restore", "--store", store.path().to_str().unwrap(), "link", "--to", link.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not an empty directory"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0, "restore wrote through the symlink");

    // A checkpoint directory holding a symlink that leaves it: not captured.
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(
        slot.path(),
        store.path().to_str().unwrap(),
        "capture-link",
        &[],
        &[],
        &["sh", "-c", "echo data > $BATON_CHECKPOINT_DIR/a && ln -s /etc/hostname $BATON_CHECKPOINT_DIR/escape"],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("skipping a symlink"), "{}", text(&out.stderr));
    let o = baton().args(["inspect", "--store", store.path().to_str().unwrap(), "capture-link", "1", "--json"]).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<_> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, ["a"]);
}

#[test]
fn restore_and_prune_round_trip() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let manifests = finished_run(store.path(), "rt");
    let latest = manifest(manifests.last().unwrap());
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("out");
    let out = baton().args(["restore", "--store", s, "rt", "--to", target.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in latest["files"].as_array().unwrap() {
        let data = std::fs::read(target.join(f["path"].as_str().unwrap())).unwrap();
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&data)), f["sha256"].as_str().unwrap());
    }
    let before = manifests.len();
    let out = baton().args(["prune", "--store", s, "rt", "--keep", "1", "--grace", "0s", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["checkpoints"].as_array().unwrap().len(), before - 1);
    assert!(plan["chunks"].as_u64().unwrap() > 0, "old weights.bin chunks are unreferenced now");
    // What is left is whole.
    let out = baton().args(["verify", "--store", s]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// The latest checkpoint's weights.bin chunk (it changes at every save, so it belongs to
/// the latest checkpoint only), with the latest seq.
fn latest_weights_chunk(store: &Path, manifests: &[std::path::PathBuf]) -> (u64, std::path::PathBuf) {
    let latest = manifest(manifests.last().unwrap());
    let file = latest["files"].as_array().unwrap().iter().find(|f| f["path"] == "weights.bin").unwrap();
    (latest["seq"].as_u64().unwrap(), chunk_path(store, file["chunks"][0]["hash"].as_str().unwrap()))
}

/// A new slot that restores and then commits one small final checkpoint; returns
/// (exit code, stdout, stderr).
fn restart(store: &Path, run: &str) -> (Option<i32>, String, String) {
    let slot = tempfile::tempdir().unwrap();
    let cmd = ["sh", "-c", "echo restored=$BATON_RESTORED_SEQ; echo more > $BATON_CHECKPOINT_DIR/more"];
    let out = output_of(spawn_run(slot.path(), store.to_str().unwrap(), run, &[], &[], &cmd));
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_chunk_that_cannot_be_read_is_damage_not_an_outage() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let manifests = finished_run(store.path(), "chunkdir");
    let (latest_seq, victim) = latest_weights_chunk(store.path(), &manifests);
    // Something that is not an object where a chunk belongs: reading it is an I/O error
    // (EISDIR), which says the chunk is damaged, not that the store is down.
    std::fs::remove_file(&victim).unwrap();
    std::fs::create_dir(&victim).unwrap();

    let out = baton().args(["verify", "--store", s]).output().unwrap();
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(71), "{report}\n{}", text(&out.stderr));
    assert!(report.contains(&format!("checkpoint {latest_seq} file weights.bin")), "{report}");
    assert_eq!(report.matches("DAMAGED").count(), 1, "{report}");

    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("out");
    let out = baton().args(["restore", "--store", s, "chunkdir", "--to", target.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "restore did not fall back: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("SKIPPING DAMAGED CHECKPOINT {latest_seq}")), "{}", text(&out.stderr));

    let (code, stdout, stderr) = restart(store.path(), "chunkdir");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("SKIPPING DAMAGED CHECKPOINT {latest_seq}")), "{stderr}");
    assert!(stdout.contains(&format!("restored={}", latest_seq - 1)), "{stdout}\n{stderr}");
}

fn checkpoint_file(store: &Path, run: &str, seq: u64) -> std::path::PathBuf {
    store.join("runs").join(run).join("checkpoints").join(format!("{seq:010}.json"))
}

#[test]
fn a_manifest_name_past_the_seq_range_is_ignored() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let manifests = finished_run(store.path(), "wrap");
    let latest_seq = manifest(manifests.last().unwrap())["seq"].as_u64().unwrap();
    // Taken at face value, this name makes the next seq u64::MAX + 1.
    let junk = store.path().join("runs/wrap/checkpoints/18446744073709551615.json");
    std::fs::copy(manifests.last().unwrap(), &junk).unwrap();

    let out = baton().args(["verify", "--store", s, "wrap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("18446744073709551615.json"), "no warning about the junk name: {}", text(&out.stderr));

    let (code, stdout, stderr) = restart(store.path(), "wrap");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("restored={latest_seq}")), "{stdout}\n{stderr}");
    assert!(checkpoint_file(store.path(), "wrap", latest_seq + 1).is_file(), "the next checkpoint was not written after {latest_seq}");
    assert!(junk.exists(), "run must not delete what it did not write");
}

#[test]
fn a_directory_at_a_manifest_path_is_damage_and_the_run_goes_on() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let manifests = finished_run(store.path(), "mdir");
    let latest_seq = manifest(manifests.last().unwrap())["seq"].as_u64().unwrap();
    let blocked = latest_seq + 1;
    std::fs::create_dir(checkpoint_file(store.path(), "mdir", blocked)).unwrap();

    let out = baton().args(["verify", "--store", s, "mdir"]).output().unwrap();
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(71), "{report}\n{}", text(&out.stderr));
    assert!(report.contains(&format!("DAMAGED  run mdir checkpoint {blocked}: manifest")), "{report}");

    // Every new attempt used to pick `blocked` as its next seq and lose to "another writer".
    for attempt in 0..2 {
        let (code, stdout, stderr) = restart(store.path(), "mdir");
        assert_eq!(code, Some(0), "attempt {attempt}: {stderr}");
        // The first skips the blocked seq; the second restores what the first wrote past it.
        let restored = if attempt == 0 { latest_seq } else { blocked + 1 };
        assert_eq!(stderr.contains(&format!("SKIPPING DAMAGED CHECKPOINT {blocked}")), attempt == 0, "{stderr}");
        assert!(stdout.contains(&format!("restored={restored}")), "{stdout}\n{stderr}");
        assert!(checkpoint_file(store.path(), "mdir", blocked + 1 + attempt).is_file(), "attempt {attempt}: {stderr}");
    }
}

#[test]
fn prune_removes_temporary_files_of_killed_uploads() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    finished_run(store.path(), "tmp");
    // What a write killed between creating its temporary file and publishing it leaves.
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
    let old_chunk = store.path().join("chunks/ab/.tmp-4242-1700000000000000000");
    let old_manifest = store.path().join("runs/tmp/checkpoints/.tmp-4242-1700000000000000001");
    let fresh = store.path().join("chunks/cd/.tmp-4243-1700000000000000002");
    let not_ours = store.path().join("chunks/ab/.tmp-notes");
    for p in [&old_chunk, &old_manifest, &fresh, &not_ours] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![7u8; 1000]).unwrap();
    }
    for p in [&old_chunk, &old_manifest, &not_ours] {
        std::fs::File::options().write(true).open(p).unwrap().set_modified(two_hours_ago).unwrap();
    }

    let out = baton().args(["prune", "--store", s, "--keep", "100", "--dry-run", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["temporaries"], 2, "{plan}");
    assert_eq!(plan["temporary_bytes"], 2000, "{plan}");
    assert!(old_chunk.exists() && old_manifest.exists(), "a dry run deleted something");

    let out = baton().args(["prune", "--store", s, "--keep", "100"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 temporary file(s)"), "{}", text(&out.stdout));
    assert!(!old_chunk.exists() && !old_manifest.exists(), "stale temporaries are left");
    assert!(fresh.exists(), "a temporary younger than --grace may belong to an upload in progress");

    let out = baton().args(["prune", "--store", s, "--keep", "100", "--grace", "0s"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!fresh.exists(), "--grace 0s leaves a temporary");
    assert!(not_ours.exists(), "prune deleted a file baton did not name");
    let out = baton().args(["verify", "--store", s]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn overlong_paths_are_damage_that_verify_reports() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // No filesystem baton restores onto takes a name over 255 bytes or a path over 4095.
    plant(store.path(), "long-name", |m| m["files"][0]["path"] = format!("d/{}", "n".repeat(256)).into());
    plant(store.path(), "long-path", |m| m["files"][0]["path"] = vec!["p".repeat(200); 21].join("/").into());
    for (run, why) in [("long-name", "longer than 255 bytes"), ("long-path", "path too long")] {
        let out = baton().args(["verify", "--store", s, run]).output().unwrap();
        let report = text(&out.stdout);
        assert_eq!(out.status.code(), Some(71), "{run}: {report}");
        assert!(report.contains(&format!("DAMAGED  run {run} checkpoint 1: manifest")) && report.contains(why), "{run}: {report}");
        restore_refused(store.path(), run, why);
    }
}

/// Damage must not spread through dedup: a chunk that restore found damaged (and fell
/// back from) is written again when the trainer commits the same bytes, instead of the
/// new checkpoint naming the damaged object.
#[test]
fn a_chunk_found_damaged_is_written_again_not_reused() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // Checkpoint 1 holds a.bin; checkpoint 2 (final) holds b.bin, 3 MiB of fixed bytes.
    let bytes =
        |seed: u64| format!("python3 -c \"import random,sys; r=random.Random({seed}); sys.stdout.buffer.write(r.randbytes(3<<20))\"");
    let first =
        format!("cd $BATON_CHECKPOINT_DIR && {} > a.bin && \"$BATON_BIN\" commit --epoch 1 && rm a.bin && {} > b.bin", bytes(1), bytes(2));
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "spread", &[], &[], &["sh", "-c", &first]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let latest = manifest(&store.path().join("runs/spread/checkpoints/0000000002.json"));
    let hash = latest["files"][0]["chunks"][0]["hash"].as_str().unwrap().to_string();
    let victim = chunk_path(store.path(), &hash);
    let mut damaged = std::fs::read(&victim).unwrap();
    damaged.truncate(damaged.len() / 2);
    std::fs::write(&victim, damaged).unwrap();

    // A new attempt falls back to checkpoint 1 and writes b.bin's bytes again.
    let again = format!("cd $BATON_CHECKPOINT_DIR && rm -f a.bin && {} > b.bin", bytes(2));
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "spread", &[], &[], &["sh", "-c", &again]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("SKIPPING DAMAGED CHECKPOINT 2"), "{err}");
    let out = baton().args(["verify", "--store", s, "spread", "3"]).output().unwrap();
    assert!(out.status.success(), "the new checkpoint names the damaged chunk:\n{}\n{err}", text(&out.stdout));
}

/// 3 MiB of fixed random bytes (which do not compress: stored raw) in `$BATON_CHECKPOINT_DIR/b.bin`.
fn write_blob(seed: u64) -> String {
    format!(
        "cd $BATON_CHECKPOINT_DIR && python3 -c \"import random,sys; r=random.Random({seed}); sys.stdout.buffer.write(r.randbytes(3<<20))\" > b.bin"
    )
}

/// A finished run whose one checkpoint holds b.bin; returns the first chunk's hash,
/// after flipping one bit of it in the store (same size: only reading it tells).
fn run_then_flip(store: &Path, run: &str) -> String {
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), store.to_str().unwrap(), run, &[], &[], &["sh", "-c", &write_blob(7)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = manifest(&store.join(format!("runs/{run}/checkpoints/0000000001.json")));
    let hash = m["files"][0]["chunks"][0]["hash"].as_str().unwrap().to_string();
    let victim = chunk_path(store, &hash);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    hash
}

/// Damage one process saw (`baton verify`) is never reused by another: a different run
/// that commits the same bytes later writes the chunk again, which repairs the first run
/// too (the store overwrites in place), and the marker is gone.
#[test]
fn damage_that_verify_found_is_not_reused_by_a_later_run() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let hash = run_then_flip(store.path(), "seen");
    let out = baton().args(["verify", "--store", s]).output().unwrap();
    assert_eq!(out.status.code(), Some(71), "{}", text(&out.stdout));
    assert!(store.path().join("damaged").join(&hash).is_file(), "verify left no marker for {hash}");

    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "other", &[], &[], &["sh", "-c", &write_blob(7)]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("chunk {hash} is damaged in the store")), "{err}");
    let out = baton().args(["verify", "--store", s]).output().unwrap();
    assert!(out.status.success(), "damage spread or stayed:\n{}\n{err}", text(&out.stdout));
    assert!(!store.path().join("damaged").join(&hash).exists(), "the marker outlived the repair");
}

/// `verify --repair` writes good copies from the checkpoint's own files, or from another
/// store holding the same chunks, and says what it could not repair.
#[test]
fn verify_repair_takes_good_bytes_from_a_directory_or_another_store() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    run_then_flip(store.path(), "fix");

    let out = baton().args(["verify", "--store", s, "--repair"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--repair without a source: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--from-dir"), "{}", text(&out.stderr));

    // A directory without the bytes: nothing repaired, still damaged.
    let empty = tempfile::tempdir().unwrap();
    let out = baton().args(["verify", "--store", s, "--repair", "--from-dir", empty.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(71), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("NOT REPAIRED chunk"), "{}", text(&out.stdout));

    // The trainer's files, somewhere else, under another name: repaired.
    let files = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("{} && mkdir -p sub && mv b.bin sub/renamed", write_blob(7))])
        .env("BATON_CHECKPOINT_DIR", files.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = baton().args(["verify", "--store", s, "--repair", "--from-dir", files.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("REPAIRED chunk"), "{}", text(&out.stdout));
    assert!(baton().args(["verify", "--store", s]).status().unwrap().success());

    // From another store: damage again, repair from a second store with the same run.
    let mirror = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), mirror.path().to_str().unwrap(), "copy", &[], &[], &["sh", "-c", &write_blob(7)]));
    assert!(out.status.success());
    let m = manifest(&store.path().join("runs/fix/checkpoints/0000000001.json"));
    let victim = chunk_path(store.path(), m["files"][0]["chunks"][1]["hash"].as_str().unwrap());
    std::fs::write(&victim, b"garbage").unwrap();
    let out =
        baton().args(["verify", "--store", s, "--json", "--repair", "--from-store", mirror.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repair"]["repaired"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["damaged"].as_array().unwrap().is_empty(), "{v}");
}

/// A directory where a chunk should be: the next upload of those bytes moves it aside
/// (never deleting it) and writes the chunk.
#[test]
fn a_directory_in_place_of_a_chunk_is_moved_aside_by_the_next_upload() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let hash = run_then_flip(store.path(), "dir");
    let victim = chunk_path(store.path(), &hash);
    std::fs::remove_file(&victim).unwrap();
    std::fs::create_dir(&victim).unwrap();
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "dir2", &[], &[], &["sh", "-c", &write_blob(7)]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(baton().args(["verify", "--store", s]).status().unwrap().success());
    assert_eq!(std::fs::read_dir(store.path().join("quarantine")).unwrap().count(), 1);
}
