//! Uploads yield to the command: while it trains, baton's upload work runs on threads of
//! a lower priority (`--upload-nice`), seen from outside in /proc like a user would.

use crate::common::*;

/// Writes a checkpoint of incompressible bytes, commits it, then for `SECONDS` notes the
/// nice value of every thread of baton (its parent) by name.
const TRAINER: &str = r#"
import json, os, subprocess, sys, time
baton, seconds = sys.argv[1], float(sys.argv[2])
d = os.environ["BATON_CHECKPOINT_DIR"]
with open(os.path.join(d, "w.bin"), "wb") as f:
    f.write(os.urandom(48 << 20))
subprocess.run([baton, "commit", "--epoch", "1"], check=True)
parent, seen = os.getppid(), {}
end = time.time() + seconds
while time.time() < end:
    for t in os.listdir(f"/proc/{parent}/task"):
        try:
            comm = open(f"/proc/{parent}/task/{t}/comm").read().strip()
            fields = open(f"/proc/{parent}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen.setdefault(comm, set()).add(int(fields[16]))
    time.sleep(0.01)
print(json.dumps({"own": os.nice(0), "threads": {k: sorted(v) for k, v in seen.items()}}))
"#;

fn threads_while_uploading(extra: &[&str]) -> (i64, serde_json::Map<String, serde_json::Value>) {
    let store = tempfile::tempdir().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let script = slot.path().join("trainer.py");
    std::fs::write(&script, TRAINER).unwrap();
    let bin = baton_bin();
    let cmd = ["python3", script.to_str().unwrap(), bin.to_str().unwrap(), "3"];
    let out = output_of(spawn_run(slot.path(), store.path().to_str().unwrap(), "nice", &[], extra, &cmd));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.trim().lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {line}"));
    (v["own"].as_i64().unwrap(), v["threads"].as_object().unwrap().clone())
}

#[test]
fn background_uploads_run_below_the_commands_priority() {
    let (own, threads) = threads_while_uploading(&[]);
    let background = threads.get("baton-backgroun").unwrap_or_else(|| panic!("no background upload thread in {threads:?}"));
    let want = (own + 19).min(19);
    assert_eq!(background.as_array().unwrap(), &vec![serde_json::json!(want)], "{threads:?}");
    // Everything else of baton keeps the command's priority: the event loop that forwards
    // signals and answers commits must never wait behind an upload.
    for (name, nices) in &threads {
        if name != "baton-backgroun" {
            assert_eq!(nices.as_array().unwrap(), &vec![serde_json::json!(own)], "{name}: {threads:?}");
        }
    }
}

#[test]
fn upload_nice_zero_keeps_uploads_at_the_commands_priority() {
    let (own, threads) = threads_while_uploading(&["--upload-nice", "0"]);
    assert!(!threads.contains_key("baton-backgroun"), "{threads:?}");
    assert!(threads.len() > 1, "no upload thread was seen: {threads:?}");
    for (name, nices) in &threads {
        assert_eq!(nices.as_array().unwrap(), &vec![serde_json::json!(own)], "{name}: {threads:?}");
    }
}
