//! Store semantics through the binary: content addressing shares chunks across runs and
//! checkpoints; manifests are the commit.

use crate::common::*;
use std::process::Command;

fn manifest_json(store: &str, run: &str, seq: u64) -> serde_json::Value {
    let out = baton().args(["inspect", "--store", store, run, &seq.to_string(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn chunks_already_in_the_store_are_not_uploaded_again() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // The same 3 MiB "base weights" in two runs, plus a file that differs.
    let script = r#"
        python3 -c "import random,sys; r=random.Random(7); sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(3*1024*1024)))" > $BATON_CHECKPOINT_DIR/base.bin
        echo "$BATON_RUN_ID" > $BATON_CHECKPOINT_DIR/own.txt"#;
    for run in ["ens-1", "ens-2"] {
        let slot = tempfile::tempdir().unwrap();
        let out = output_of(spawn_run(slot.path(), s, run, &[], &[], &["sh", "-c", script]));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let first = manifest_json(s, "ens-1", 1);
    let second = manifest_json(s, "ens-2", 1);
    let base = 3 * 1024 * 1024;
    assert!(first["sizes"]["new_bytes"].as_u64().unwrap() >= base);
    // Only own.txt was new for the second run.
    assert_eq!(second["sizes"]["new_bytes"].as_u64().unwrap(), 6, "{}", second["sizes"]);
    assert_eq!(second["sizes"]["logical_bytes"].as_u64().unwrap(), base + 6);
    let files = |m: &serde_json::Value| m["files"].as_array().unwrap().iter().find(|f| f["path"] == "base.bin").unwrap()["chunks"].clone();
    assert_eq!(files(&first), files(&second), "the same bytes must map to the same chunks");
}

#[test]
fn files_are_captured_at_commit_time_even_if_overwritten_right_after() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    // Overwrite in place (same inode) immediately after each commit returns.
    let script = r#"
        D=$BATON_CHECKPOINT_DIR
        for e in 1 2 3; do
          head -c 2000000 /dev/zero | tr '\0' "$e" > $D/w.bin
          "$BATON_BIN" commit --epoch $e || exit 1
          head -c 2000000 /dev/zero | tr '\0' 'X' > $D/w.bin
        done
        head -c 10 /dev/zero > $D/w.bin"#;
    let out = output_of(spawn_run(slot.path(), s, "inplace", &[], &[], &["sh", "-c", script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for e in 1..=3u8 {
        let to = tempfile::tempdir().unwrap();
        let target = to.path().join("r");
        let o = baton().args(["restore", "--store", s, "inplace", &e.to_string(), "--to", target.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        let data = std::fs::read(target.join("w.bin")).unwrap();
        assert_eq!(data.len(), 2_000_000);
        assert!(data.iter().all(|&b| b == b'0' + e), "checkpoint {e} holds bytes of another epoch");
    }
}

#[test]
fn two_writers_of_one_run_never_overwrite_each_other_and_the_loser_stops() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // A zombie attempt and its replacement, both alive: same run, same seqs.
    let script = r#"
        D=$BATON_CHECKPOINT_DIR
        for e in 1 2 3; do echo "$$ $e" > $D/w; "$BATON_BIN" commit --epoch $e || exit 9; sleep 0.3; done"#;
    let slots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let children: Vec<_> = slots.iter().map(|d| spawn_run(d.path(), s, "twins", &[], &[], &["sh", "-c", script])).collect();
    let outs: Vec<_> = children.into_iter().map(output_of).collect();
    let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
    let logs: String = outs.iter().map(|o| text(&o.stderr)).collect();
    assert!(codes.contains(&Some(73)), "no writer noticed the other: {codes:?}\n{logs}");
    assert!(logs.contains("BELONGS TO ANOTHER WRITER"), "{logs}");
    // Whatever is in the store is whole: each manifest is one writer's.
    let out = baton().args(["verify", "--store", s, "twins"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A final checkpoint of a directory nobody touched since the last commit reuses that
/// commit's files without reading them again; one rewritten with the very same bytes is
/// captured again, because only an untouched file is trusted to be unchanged.
#[test]
fn an_unchanged_directory_is_not_read_again_but_a_rewritten_one_is() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let untouched = r#"head -c 3000000 /dev/urandom > $BATON_CHECKPOINT_DIR/w.bin && "$BATON_BIN" commit --epoch 1"#;
    let rewritten = r#"head -c 3000000 /dev/urandom > $BATON_CHECKPOINT_DIR/w.bin && "$BATON_BIN" commit --epoch 1 &&
        cp $BATON_CHECKPOINT_DIR/w.bin /tmp/baton-test-$$ && cat /tmp/baton-test-$$ > $BATON_CHECKPOINT_DIR/w.bin && rm /tmp/baton-test-$$"#;
    for (run, script, reused) in [("same", untouched, true), ("rewritten", rewritten, false)] {
        let slot = tempfile::tempdir().unwrap();
        let out = output_of(spawn_run(slot.path(), s, run, &[], &[], &["sh", "-c", script]));
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.contains("unchanged since checkpoint 1; reusing its files"), reused, "{run}: {err}");
        let (first, last) = (manifest_json(s, run, 1), manifest_json(s, run, 2));
        assert_eq!(last["reason"], "final");
        assert_eq!(first["files"], last["files"], "{run}: same bytes, same file entries");
        assert_eq!(last["sizes"]["new_bytes"], 0);
        assert_eq!(last["sizes"]["logical_bytes"], 3000000);
        let restored = slot.path().join("restored");
        let o = baton().args(["restore", "--store", s, run, "--to", restored.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(std::fs::read(restored.join("w.bin")).unwrap(), std::fs::read(slot.path().join("checkpoint/w.bin")).unwrap());
    }
    let o = baton().args(["verify", "--store", s]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
}

#[test]
fn a_final_checkpoint_of_unchanged_files_keeps_the_last_commits_labels() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // Commits epoch 6, then exits 0 without touching its files; a restart of the finished
    // run must still learn epoch 6.
    let script = r#"
        if [ -n "$BATON_RESTORED_SEQ" ]; then echo "restored epoch=$BATON_RESTORED_EPOCH step=$BATON_RESTORED_STEP"; exit 0; fi
        echo w > $BATON_CHECKPOINT_DIR/w
        "$BATON_BIN" commit --epoch 6 --step 3 || exit 9"#;
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "labels", &[], &[], &["sh", "-c", script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last = manifest_json(s, "labels", 2);
    assert_eq!(last["reason"], "final");
    assert_eq!((last["epoch"].as_u64(), last["step"].as_u64()), (Some(6), Some(3)), "{last}");
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), s, "labels", &[], &[], &["sh", "-c", script]));
    assert!(text(&out.stdout).contains("restored epoch=6 step=3"), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// A store an older baton wrote (manifest format 1, chunks of at most 4 MiB) is read,
/// verified and restored by this one, and a run in it writes format 2 beside it, with
/// large files in larger chunks.
#[test]
fn a_store_written_by_format_1_is_read_and_extended() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().join("s");
    let copied = Command::new("cp").arg("-a").arg(fixture("store-format1")).arg(&s).status().unwrap();
    assert!(copied.success());
    let s = s.to_str().unwrap();
    let old = manifest_json(s, "written-by-format-1", 1);
    assert_eq!(old["format"], 1);
    let out = baton().args(["verify", "--store", s, "written-by-format-1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("r");
    let out = baton().args(["restore", "--store", s, "written-by-format-1", "--to", target.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (path, sha) in [
        ("weights.bin", "c1d5a31a33dd6edc58de2468470eab2c998145d101d66b17df029d44c7a1a3f2"),
        ("sub/opt.bin", "b67a75c52994ea1a9d0cff9e999a983996880241e476622db0758466d2ea258b"),
        ("meta.json", "62ccdef8e1da08c2aca6dcb9f8095917bb0fb07c90df49a64f1a1aa3383275ea"),
    ] {
        assert_eq!(baton::chunking::sha256_hex(&std::fs::read(target.join(path)).unwrap()), sha, "{path}");
    }

    // A new run in the same store: 80 MiB of weights are cut large, a small file small.
    let slot = tempfile::tempdir().unwrap();
    let script =
        "head -c 83886080 /dev/urandom > $BATON_CHECKPOINT_DIR/big.bin; head -c 3000000 /dev/urandom > $BATON_CHECKPOINT_DIR/small.bin";
    let out = output_of(spawn_run(slot.path(), s, "written-by-format-2", &[], &[], &["sh", "-c", script]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = manifest_json(s, "written-by-format-2", 1);
    assert_eq!(new["format"], 2);
    let chunks = |name: &str| -> Vec<u64> {
        let files = new["files"].as_array().unwrap();
        let f = files.iter().find(|f| f["path"] == name).unwrap();
        f["chunks"].as_array().unwrap().iter().map(|c| c["size"].as_u64().unwrap()).collect()
    };
    let big = chunks("big.bin");
    assert!(big.iter().any(|&c| c > 4 << 20), "large files get chunks over format 1's 4 MiB: {big:?}");
    assert!(big.len() <= 40, "{} chunks for 80 MiB", big.len());
    assert!(chunks("small.bin").iter().all(|&c| c <= 4 << 20));
    let out = baton().args(["verify", "--store", s]).output().unwrap();
    assert!(out.status.success(), "both formats verify: {}", text(&out.stderr));
}
