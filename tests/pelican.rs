//! The Pelican/OSDF store end to end, through the binary, against the local federation
//! double (fixtures/pelican_federation.py: discovery, director, origin and cache over TLS
//! with a test CA) and read back with the real pelicanfs client.

use crate::common::pelican::Federation;
use crate::common::*;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const RW: &str = "storage.read:/ storage.create:/ storage.modify:/";
const READ_CREATE: &str = "storage.read:/ storage.create:/";

/// Every variable baton reads a token from, blanked so that nothing of the developer's
/// environment leaks in (baton treats an empty variable as unset). `BATON_TOKEN_FILE` is
/// a command-line default (clap refuses an empty one): `baton_with` removes it, and the
/// `spawn_run` helpers assume the test environment does not set it.
const TOKEN_VARS: &[&str] =
    &["BEARER_TOKEN", "BEARER_TOKEN_FILE", "XDG_RUNTIME_DIR", "TOKEN", "_CONDOR_CREDS", "BATON_PELICAN_READ_TIMEOUT"];

/// The environment for one baton process: no token anywhere but in `extra`, and the test CA.
fn env_with(fed: &Federation, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = TOKEN_VARS.iter().map(|k| (k.to_string(), String::new())).collect();
    env.extend(fed.env());
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn baton_with(env: &[(String, String)]) -> std::process::Command {
    let mut c = baton();
    c.env_remove("BATON_TOKEN_FILE");
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c
}

/// The environment with a read-write token in BEARER_TOKEN_FILE.
fn rw_env(fed: &Federation) -> (Vec<(String, String)>, String) {
    let file = fed.token_file(RW, 3600);
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    (env_with(fed, &[("BEARER_TOKEN_FILE", file.to_str().unwrap())]), token)
}

const SMALL: &str = r#"head -c 300000 /dev/urandom > "$BATON_CHECKPOINT_DIR/a"; echo hello > "$BATON_CHECKPOINT_DIR/b"; touch started"#;

/// One `baton run` of a command that writes a small checkpoint and exits 0 (a final
/// checkpoint). Returns the output and whether the command started.
fn small_run(store: &str, run: &str, env: &[(String, String)], extra: &[&str]) -> (Output, bool) {
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), store, run, env, extra, &["sh", "-c", SMALL]));
    (out, slot.path().join("started").exists())
}

fn ok_run(store: &str, run: &str, env: &[(String, String)]) -> String {
    let (out, _) = small_run(store, run, env, &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "baton run failed ({:?}):\n{err}", out.status);
    err
}

fn restore(store: &str, run: &str, env: &[(String, String)]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("out");
    let out = baton_with(env).args(["restore", "--store", store, run, "--to", to.to_str().unwrap()]).output().unwrap();
    (out, dir)
}

fn inspect_json(store: &str, run: &str, env: &[(String, String)]) -> serde_json::Value {
    let out = baton_with(env).args(["inspect", "--store", store, run, "--json"]).output().unwrap();
    assert!(out.status.success(), "inspect: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verify_ok(store: &str, run: &str, env: &[(String, String)]) {
    let out = baton_with(env).args(["verify", "--store", store, run]).output().unwrap();
    assert!(out.status.success(), "verify: {}{}", text(&out.stdout), text(&out.stderr));
}

/// Every file the origin holds, as bytes (what a token could leak into).
fn stored_bytes(fed: &Federation) -> Vec<u8> {
    fn walk(p: &Path, out: &mut Vec<u8>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.extend(std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = vec![];
    if fed.root.exists() {
        walk(&fed.root, &mut out);
    }
    out
}

/// The token appears nowhere: not in `texts` (stderr, stdout), not in any stored object,
/// not in any URL the federation saw; and no `authz=` query was ever sent.
fn assert_no_token_leak(fed: &Federation, token: &str, texts: &[&str]) {
    let signature_free = token.rsplit_once('.').map(|(a, _)| a).unwrap_or(token);
    let payload = token.split('.').nth(1).unwrap();
    for t in texts {
        assert!(!t.contains(signature_free) && !t.contains(payload), "token leaked into output:\n{t}");
    }
    let stored = String::from_utf8_lossy(&stored_bytes(fed)).into_owned();
    assert!(!stored.contains(payload), "token stored in an object");
    let log = fed.log();
    assert!(!log.contains(payload), "token in a URL the federation saw");
    assert!(!log.contains("authz"), "authz= in a URL");
    assert!(!fed.server_log().contains(payload), "token in the federation's request lines");
}

fn random_delays(n: usize) -> Vec<f64> {
    let mut rng = Rng::from_time();
    (0..n).map(|_| rng.uniform(0.9, 2.2)).collect()
}

#[test]
fn evicted_runs_on_a_pelican_store_end_bit_exact_and_never_leak_the_token() {
    let fed = Federation::start();
    let (env, token) = rw_env(&fed);
    let store = fed.store_url("ckpt/evict");
    let (digest, logs) = run_with_evictions(&store, "pel-run", &env, TRAINER_ARGS, &random_delays(2));
    assert_eq!(digest, reference_digest(TRAINER_ARGS), "digest differs from the uninterrupted run\n{logs}");
    assert!(logs.contains("restored checkpoint"), "no attempt restored anything:\n{logs}");

    let v = inspect_json(&store, "pel-run", &env);
    let attempts = v["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{v}");
    assert!(attempts.iter().any(|a| a["end"]["ending"] == "evicted"), "no eviction recorded: {v}");
    let reasons: Vec<&str> = v["checkpoints"].as_array().unwrap().iter().map(|c| c["manifest"]["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"eviction"), "{reasons:?}");
    assert_eq!(reasons.last(), Some(&"final"));
    verify_ok(&store, "pel-run", &env);

    // The objects are where the layout says, under the namespace path. (Not necessarily
    // checkpoint 1: an eviction that lands while it uploads supersedes it.)
    let first = v["checkpoints"][0]["seq"].as_u64().unwrap();
    assert!(fed.object_path(&format!("/test/ckpt/evict/runs/pel-run/checkpoints/{first:010}.json")).is_file(), "{v}");
    let verbose = baton_with(&env).args(["-vv", "inspect", "--store", &store, "pel-run", "--json"]).output().unwrap();
    assert_no_token_leak(&fed, &token, &[&logs, &text(&verbose.stderr), &text(&verbose.stdout)]);
}

#[test]
fn pelicanfs_reads_back_chunks_and_manifests_byte_for_byte() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("ckpt/pfs");
    ok_run(&store, "pfs-run", &env);
    let read = fed.token_file("storage.read:/", 600);

    // pelicanfs lists everything baton wrote.
    let find = fed.pelicanfs(Some(&read), &["find", "/test/ckpt/pfs"]);
    assert!(find.status.success(), "pelicanfs find: {}\n{}", text(&find.stderr), fed.server_log());
    let listed = text(&find.stdout);
    assert!(listed.contains("/test/ckpt/pfs/runs/pfs-run/checkpoints/0000000001.json"), "{listed}");
    assert!(listed.contains("/test/ckpt/pfs/runs/pfs-run/attempts/000001.json"), "{listed}");
    assert!(listed.contains("/test/ckpt/pfs/runs/pfs-run/attempts/000001.end.json"), "{listed}");

    // The manifest and every chunk it names, read through pelicanfs, are the stored bytes.
    let manifest_path = "/test/ckpt/pfs/runs/pfs-run/checkpoints/0000000001.json";
    let m = fed.pelicanfs(Some(&read), &["cat", manifest_path]);
    assert!(m.status.success(), "{}", text(&m.stderr));
    assert_eq!(m.stdout, std::fs::read(fed.object_path(manifest_path)).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    let mut chunks = vec![];
    for f in manifest["files"].as_array().unwrap() {
        for c in f["chunks"].as_array().unwrap() {
            let h = c
                .get("hash")
                .or_else(|| c.get("sha256"))
                .and_then(|h| h.as_str())
                .or_else(|| c.as_str())
                .unwrap_or_else(|| panic!("chunk entry {c}"));
            chunks.push(h.to_string());
        }
    }
    assert!(!chunks.is_empty(), "{manifest}");
    for h in &chunks {
        let p = format!("/test/ckpt/pfs/chunks/{}/{h}", &h[..2]);
        assert!(listed.contains(&p), "{p} not listed by pelicanfs");
        let c = fed.pelicanfs(Some(&read), &["cat", &p]);
        assert!(c.status.success(), "{}", text(&c.stderr));
        assert_eq!(c.stdout, std::fs::read(fed.object_path(&p)).unwrap(), "{p}");
    }

    // And baton restores what it wrote: the files hash to what the manifest says.
    let (out, dir) = restore(&store, "pfs-run", &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(dir.path().join("out").join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap());
    }
    assert_eq!(std::fs::read(dir.path().join("out/b")).unwrap(), b"hello\n");
}

/// Arm `fault`, restore, and check that it fired and baton still got every byte.
fn restore_survives(fed: &Federation, store: &str, run: &str, env: &[(String, String)], fault: &str, kind: &str) -> (String, Duration) {
    fed.clear_log();
    fed.set_fault(fault);
    let t = Instant::now();
    let (out, dir) = restore(store, run, env);
    let took = t.elapsed();
    let err = text(&out.stderr);
    assert!(out.status.success(), "restore with fault {fault} failed ({:?}):\n{err}\n{}", out.status, fed.server_log());
    assert_eq!(std::fs::read(dir.path().join("out/b")).unwrap(), b"hello\n");
    assert_eq!(std::fs::metadata(dir.path().join("out/a")).unwrap().len(), 300000);
    // A stalled request is logged when its handler wakes up, after baton moved on.
    let waited = Instant::now();
    while !fed.log_entries().iter().any(|e| e["fault"] == kind) {
        assert!(waited.elapsed() < Duration::from_secs(15), "fault {kind} never fired:\n{}", fed.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    fed.clear_faults();
    (err, took)
}

#[test]
fn truncated_throttled_failing_and_stalled_reads_are_retried() {
    let fed = Federation::start();
    let (mut env, _) = rw_env(&fed);
    let store = fed.store_url("ckpt/faults");
    ok_run(&store, "f", &env);

    // Truncated body: full Content-Length, half the bytes, connection closed.
    let (err, _) =
        restore_survives(&fed, &store, "f", &env, r#"{"kind":"truncate","count":1,"method":"GET","path_contains":"/chunks/"}"#, "truncate");
    assert!(err.contains("trying again"), "{err}");
    // A chunk read with the truncation was fetched again and completely.
    let log = fed.log_entries();
    assert!(log
        .iter()
        .any(|e| e["method"] == "GET" && e["status"] == 200 && e["fault"].is_null() && e["target"].as_str().unwrap().contains("/chunks/")));

    // 429 with Retry-After: 1 is honoured.
    let (_, took) = restore_survives(&fed, &store, "f", &env, r#"{"kind":"429","count":2,"method":"GET","retry_after":1}"#, "429");
    assert!(took >= Duration::from_secs(1), "Retry-After ignored: {took:?}");

    // 500s from the cache: the next server (the origin) or a later try answers.
    restore_survives(&fed, &store, "f", &env, r#"{"kind":"500","count":3,"method":"GET"}"#, "500");
    // 500s on listings (PROPFIND on the origin) too.
    restore_survives(&fed, &store, "f", &env, r#"{"kind":"503","count":2,"method":"PROPFIND"}"#, "503");
    // The director restarting (429 JSON).
    restore_survives(&fed, &store, "f", &env, r#"{"kind":"director-429","count":1}"#, "director-429");

    // A stalled server: no byte for longer than the read timeout is a failed try.
    env.push(("BATON_PELICAN_READ_TIMEOUT".into(), "1".into()));
    let (_, took) = restore_survives(
        &fed,
        &store,
        "f",
        &env,
        r#"{"kind":"stall","count":1,"method":"GET","server":"cache","stall_seconds":8}"#,
        "stall",
    );
    assert!(took < Duration::from_secs(7), "baton waited for the stalled server: {took:?}");
}

#[test]
fn a_bad_digest_is_retried_and_a_persistent_one_is_a_clear_store_error() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("ckpt/digest");
    ok_run(&store, "d", &env);

    let (err, _) = restore_survives(
        &fed,
        &store,
        "d",
        &env,
        r#"{"kind":"bad-digest","count":1,"method":"GET","path_contains":"/chunks/"}"#,
        "bad-digest",
    );
    assert!(err.contains("crc32c"), "the mismatch is not mentioned: {err}");

    // Every answer lies: baton gives up with exit 70 (a transport error, not damage: the
    // checkpoint is not skipped as broken) and says why.
    fed.set_fault(r#"{"kind":"bad-digest","count":1000,"method":"GET","path_contains":"/chunks/"}"#);
    let (out, _) = restore(&store, "d", &env);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("crc32c") && err.contains("gave up after"), "{err}");
    // baton run does not start the command on a checkpoint it could not read, and does
    // not fall back to a fresh start.
    let (out, started) = small_run(&store, "d", &env, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(!started, "the command started although the checkpoint could not be read:\n{err}");
    fed.clear_faults();
    verify_ok(&store, "d", &env);
}

#[test]
fn uploads_survive_transient_failures_and_persistent_ones_commit_nothing() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("ckpt/puts");

    // Transient: 500s and a 429 on PUTs, a stall on the first HEAD check: all retried.
    // A wrong digest on the check after an upload is looked at again.
    fed.set_fault(
        r#"[{"kind":"500","count":2,"method":"PUT","path_contains":"/chunks/"},{"kind":"429","count":1,"method":"PUT","path_contains":"/checkpoints/"},
            {"kind":"director-429","count":1,"method":"PUT"},{"kind":"bad-digest","count":1,"method":"HEAD","path_contains":"/chunks/"}]"#,
    );
    ok_run(&store, "p", &env);
    let fired: Vec<String> = fed.log_entries().iter().filter_map(|e| e["fault"].as_str().map(str::to_string)).collect();
    for kind in ["500", "429", "director-429", "bad-digest"] {
        assert!(fired.iter().any(|f| f == kind), "{kind} did not fire: {fired:?}");
    }
    fed.clear_faults();
    verify_ok(&store, "p", &env);

    // Persistent: checkpoint 1 becomes durable, then every chunk PUT fails. The second
    // checkpoint must not appear, and what is there still verifies.
    let slot = tempfile::tempdir().unwrap();
    let go = slot.path().join("go");
    let script = format!(
        r#"D=$BATON_CHECKPOINT_DIR
        head -c 200000 /dev/urandom > $D/a && "$BATON_BIN" commit --epoch 1 || exit 1
        while [ ! -e {go} ]; do sleep 0.05; done
        head -c 200000 /dev/urandom > $D/a && "$BATON_BIN" commit --epoch 2
        exit 0"#,
        go = go.display()
    );
    let child = spawn_run(slot.path(), &store, "q", &env, &[], &["sh", "-c", &script]);
    let first = fed.object_path("/test/ckpt/puts/runs/q/checkpoints/0000000001.json");
    let start = Instant::now();
    while !first.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "checkpoint 1 never became durable:\n{}", fed.server_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    fed.set_fault(r#"{"kind":"500","count":100000,"method":"PUT","path_contains":"/chunks/"}"#);
    std::fs::write(&go, "").unwrap();
    let out = output_of(child);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(72), "the final checkpoint cannot be durable: {err}");
    fed.clear_faults();
    let v = inspect_json(&store, "q", &env);
    let seqs: Vec<u64> = v["checkpoints"].as_array().unwrap().iter().map(|c| c["manifest"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1], "only checkpoint 1 may be visible: {v}");
    verify_ok(&store, "q", &env);
    // The next attempt restores checkpoint 1.
    let (out, _) = small_run(&store, "q", &env, &[]);
    assert!(out.status.success() && text(&out.stderr).contains("restored checkpoint 1"), "{}", text(&out.stderr));
}

// ------------------------------------------------------------------ tokens

/// A run with the token in one place only; returns its stderr.
fn run_with_token_env(fed: &Federation, store: &str, extra: &[(&str, &str)], flags: &[&str]) -> String {
    let env = env_with(fed, extra);
    let (out, started) = small_run(store, "tok", &env, flags);
    let err = text(&out.stderr);
    assert!(out.status.success() && started, "{:?}:\n{err}\n{}", out.status, fed.server_log());
    verify_ok(store, "tok", &env);
    err
}

#[test]
fn token_from_bearer_token() {
    let fed = Federation::start();
    let token = fed.mint_token(READ_CREATE, 600);
    let err = run_with_token_env(&fed, &fed.store_url("t1"), &[("BEARER_TOKEN", &format!("  {token}\n"))], &[]);
    assert_no_token_leak(&fed, &token, &[&err]);
}

#[test]
fn token_from_bearer_token_file() {
    let fed = Federation::start();
    let f = fed.token_file(READ_CREATE, 600);
    run_with_token_env(&fed, &fed.store_url("t2"), &[("BEARER_TOKEN_FILE", f.to_str().unwrap())], &[]);
}

#[test]
fn token_from_xdg_runtime_dir() {
    let fed = Federation::start();
    let dir = tempfile::tempdir().unwrap();
    let uid = nix::unistd::getuid().as_raw();
    std::fs::write(dir.path().join(format!("bt_u{uid}")), fed.mint_token(READ_CREATE, 600)).unwrap();
    run_with_token_env(&fed, &fed.store_url("t3"), &[("XDG_RUNTIME_DIR", dir.path().to_str().unwrap())], &[]);
}

#[test]
fn token_from_the_token_variable() {
    let fed = Federation::start();
    let f = fed.token_file(READ_CREATE, 600);
    run_with_token_env(&fed, &fed.store_url("t4"), &[("TOKEN", f.to_str().unwrap())], &[]);
}

#[test]
fn token_from_condor_creds_scitokens_use() {
    let fed = Federation::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("scitokens.use"), fed.mint_token(READ_CREATE, 600)).unwrap();
    // A dot file is never taken for a token.
    std::fs::write(creds.path().join(".hidden"), "not-a-token").unwrap();
    run_with_token_env(&fed, &fed.store_url("t5"), &[("_CONDOR_CREDS", creds.path().to_str().unwrap())], &[]);
}

#[test]
fn token_from_condor_creds_named_by_the_url() {
    let fed = Federation::start();
    let creds = tempfile::tempdir().unwrap();
    // `my.svc+pelican://` reads my_svc.use, not scitokens.use (which is read-only here).
    std::fs::write(creds.path().join("my_svc.use"), fed.mint_token(READ_CREATE, 600)).unwrap();
    std::fs::write(creds.path().join("scitokens.use"), fed.mint_token("storage.read:/", 600)).unwrap();
    let store = format!("my.svc+{}", fed.store_url("t6"));
    run_with_token_env(&fed, &store, &[("_CONDOR_CREDS", creds.path().to_str().unwrap())], &[]);
}

#[test]
fn token_from_token_file_flag_and_variable_wins_over_the_environment() {
    let fed = Federation::start();
    let good = fed.token_file(READ_CREATE, 600);
    let read_only = fed.token_file("storage.read:/", 600);
    // --token-file is looked at first: the read-only BEARER_TOKEN_FILE is not used.
    run_with_token_env(
        &fed,
        &fed.store_url("t7"),
        &[("BEARER_TOKEN_FILE", read_only.to_str().unwrap())],
        &["--token-file", good.to_str().unwrap()],
    );
    run_with_token_env(
        &fed,
        &fed.store_url("t8"),
        &[("BEARER_TOKEN_FILE", read_only.to_str().unwrap()), ("BATON_TOKEN_FILE", good.to_str().unwrap())],
        &[],
    );
    // A --token-file that does not exist stops baton before anything starts.
    let env = env_with(&fed, &[]);
    let (out, started) = small_run(&fed.store_url("t7"), "tok", &env, &["--token-file", "/nonexistent/tok"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!started && text(&out.stderr).contains("/nonexistent/tok"));
}

/// /tmp/bt_u<uid> is shared with the whole machine: tested only when no such file exists,
/// and removed at once. The missing-token test holds the same lock.
static TMP_TOKEN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tmp_token_path() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/tmp/bt_u{}", nix::unistd::getuid().as_raw()))
}

#[test]
fn token_from_tmp_bt_u_uid() {
    let _lock = TMP_TOKEN.lock().unwrap_or_else(|e| e.into_inner());
    let p = tmp_token_path();
    if p.exists() {
        eprintln!("skipped: {} exists on this machine", p.display());
        return;
    }
    let fed = Federation::start();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    std::fs::write(&p, fed.mint_token(READ_CREATE, 600)).unwrap();
    let _remove = Remove(p);
    run_with_token_env(&fed, &fed.store_url("t9"), &[], &[]);
}

#[test]
fn a_missing_token_is_one_clear_error_naming_every_place_looked() {
    let _lock = TMP_TOKEN.lock().unwrap_or_else(|e| e.into_inner());
    if tmp_token_path().exists() {
        eprintln!("skipped: {} exists on this machine", tmp_token_path().display());
        return;
    }
    let fed = Federation::start();
    let creds = tempfile::tempdir().unwrap();
    let env = env_with(&fed, &[("_CONDOR_CREDS", creds.path().to_str().unwrap()), ("BEARER_TOKEN_FILE", "/nonexistent/bt")]);
    let (out, started) = small_run(&fed.store_url("missing"), "tok", &env, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(!started, "the command started without a token:\n{err}");
    for place in [
        "no bearer token found",
        "BEARER_TOKEN (not set)",
        "BEARER_TOKEN_FILE=/nonexistent/bt (no such file)",
        "XDG_RUNTIME_DIR",
        &tmp_token_path().display().to_string(),
        "TOKEN (not set)",
        &format!("{}/scitokens.use (no such file)", creds.path().display()),
        "--token-file",
    ] {
        assert!(err.contains(place), "{place:?} not in:\n{err}");
    }
    assert_eq!(err.matches("baton: error:").count(), 1, "one error, not a cascade:\n{err}");
}

#[test]
fn an_expired_token_is_reported_as_expired() {
    let fed = Federation::start();
    // Long expired (baton sees it from the token itself) ...
    let f = fed.token_file(RW, -3600);
    let env = env_with(&fed, &[("BEARER_TOKEN_FILE", f.to_str().unwrap())]);
    let (out, started) = small_run(&fed.store_url("exp"), "tok", &env, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(!started && err.contains("expired") && err.contains("BEARER_TOKEN_FILE"), "{err}");
    // ... and just expired (the server refuses it first).
    let f = fed.token_file(RW, -5);
    let env = env_with(&fed, &[("BEARER_TOKEN_FILE", f.to_str().unwrap())]);
    let (out, _) = small_run(&fed.store_url("exp"), "tok", &env, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn an_under_scoped_token_says_which_scope_is_missing() {
    let fed = Federation::start();
    let read_only = fed.mint_token("storage.read:/", 600);
    let env = env_with(&fed, &[("BEARER_TOKEN", &read_only)]);
    let (out, started) = small_run(&fed.store_url("scope"), "tok", &env, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(!started, "{err}");
    assert!(err.contains("lacks storage.create:/scope/runs/tok/attempts") && err.contains("storage.read:/"), "{err}");
    assert_no_token_leak(&fed, &read_only, &[&err]);

    // Prune with a token that can create but not delete.
    let (rw, _) = rw_env(&fed);
    ok_run(&fed.store_url("scope"), "tok", &rw);
    ok_run(&fed.store_url("scope"), "tok", &rw);
    let env = env_with(&fed, &[("BEARER_TOKEN", &fed.mint_token(READ_CREATE, 600))]);
    let out = baton_with(&env).args(["prune", "--store", &fed.store_url("scope"), "tok", "--keep", "1"]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("storage.modify") && err.contains("prune"), "{err}");
    // With storage.modify it works.
    let out = baton_with(&rw).args(["prune", "--store", &fed.store_url("scope"), "tok", "--keep", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    verify_ok(&fed.store_url("scope"), "tok", &rw);
}

#[test]
fn public_namespaces_are_read_without_a_token() {
    let fed = Federation::start_with(&["--public-read"]);
    let (rw, _) = rw_env(&fed);
    let store = fed.store_url("pub");
    ok_run(&store, "r", &rw);
    fed.clear_log();
    let (out, _) = restore(&store, "r", &env_with(&fed, &[]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Reads from the cache went without a token.
    assert!(fed.log_entries().iter().filter(|e| e["server"] == "cache").all(|e| e["authorization"] == false));
}

#[test]
fn simulate_runs_on_a_pelican_store_with_the_token_file_flag() {
    let fed = Federation::start();
    let work = tempfile::tempdir().unwrap();
    let tok = fed.token_file(READ_CREATE, 3600);
    // No token in the environment: the `baton run`s simulate starts get --token-file.
    let out = baton_with(&env_with(&fed, &[]))
        .current_dir(work.path())
        .args(["simulate", "--store", &fed.store_url("sim"), "--token-file", tok.to_str().unwrap(), "--work-dir", "sim", "--json"])
        .args(["--evictions", "1", "--mean-interval", "1.5s", "--seed", "5", "--vacate-window", "6s"])
        .arg("--")
        .args(["python3", trainer().to_str().unwrap()])
        .args(TRAINER_ARGS)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["completed"], true, "{r}");
    assert!(r["attempts"].as_array().unwrap().len() >= 2, "{r}");
}

#[test]
fn the_token_file_is_re_read_so_a_refreshed_token_keeps_the_run_going() {
    let fed = Federation::start();
    let slot = tempfile::tempdir().unwrap();
    let tok = slot.path().join("tok");
    // A token that expires a few seconds into the run, as a credmon-managed one would
    // without its refresh.
    std::fs::write(&tok, fed.mint_token(READ_CREATE, 8)).unwrap();
    let env = env_with(&fed, &[("BEARER_TOKEN_FILE", tok.to_str().unwrap())]);
    let go = slot.path().join("go");
    let script = format!(
        r#"D=$BATON_CHECKPOINT_DIR
        head -c 100000 /dev/urandom > $D/a && "$BATON_BIN" commit --epoch 1 || exit 1
        while [ ! -e {go} ]; do sleep 0.05; done
        head -c 100000 /dev/urandom > $D/a && "$BATON_BIN" commit --epoch 2
        exit 0"#,
        go = go.display()
    );
    let t0 = Instant::now();
    let child = spawn_run(slot.path(), &fed.store_url("refresh"), "r", &env, &[], &["sh", "-c", &script]);
    let first = fed.object_path("/test/refresh/runs/r/checkpoints/0000000001.json");
    while !first.exists() {
        assert!(t0.elapsed() < Duration::from_secs(8), "checkpoint 1 was not durable before the token expired:\n{}", fed.server_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The refresh (atomically, as the credmon does), then wait until the old token is dead.
    let fresh = slot.path().join("tok.new");
    std::fs::write(&fresh, fed.mint_token(READ_CREATE, 600)).unwrap();
    std::fs::rename(&fresh, &tok).unwrap();
    while t0.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&go, "").unwrap();
    let out = output_of(child);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    let v = inspect_json(&fed.store_url("refresh"), "r", &env);
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 3, "{v}");
}

#[test]
fn run_ids_from_job_ads_survive_url_escaping_and_director_answers_are_reused() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("ids");
    let run = "ap1.chtc.wisc.edu#1234.0#1700000000+a@b=c";
    fed.clear_log();
    let (out, _) = small_run(&store, run, &env, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    verify_ok(&store, run, &env);
    assert!(fed.object_path(&format!("/test/ids/runs/{run}/checkpoints/0000000001.json")).is_file());
    // One director question per verb and namespace (and discovery), not one per object.
    let log = fed.log_entries();
    let director = log.iter().filter(|e| e["server"] == "federation" && !e["target"].as_str().unwrap().starts_with("/.well-known")).count();
    let data = log.iter().filter(|e| e["server"] != "federation").count();
    assert!(director <= 8 && data > 10, "{director} director requests for {data} data requests:\n{}", fed.log());
}

/// Pelican origins refuse overwrites, so a damaged chunk cannot be repaired in place. A
/// reader marks it; the next upload of the same bytes writes a good copy beside it
/// (`<hash>.1`); readers of old and new checkpoints find the copy.
#[test]
fn a_damaged_chunk_gets_a_good_copy_beside_it_on_a_write_once_origin() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("ckpt/dmg");
    const FIXED: &str =
        r#"python3 -c "import random,sys; sys.stdout.buffer.write(random.Random(3).randbytes(200000))" > "$BATON_CHECKPOINT_DIR/a""#;
    let run = |id: &str| {
        let slot = tempfile::tempdir().unwrap();
        let out = output_of(spawn_run(slot.path(), &store, id, &env, &[], &["sh", "-c", FIXED]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    run("first");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fed.object_path("/test/ckpt/dmg/runs/first/checkpoints/0000000001.json")).unwrap()).unwrap();
    let hash = manifest["files"][0]["chunks"][0]["hash"].as_str().unwrap().to_string();
    let victim = fed.object_path(&format!("/test/ckpt/dmg/chunks/{}/{hash}", &hash[..2]));
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&victim, bytes).unwrap();

    let out = baton_with(&env).args(["verify", "--store", &store]).output().unwrap();
    assert_eq!(out.status.code(), Some(71), "{}{}", text(&out.stdout), text(&out.stderr));
    let err = run("second");
    assert!(err.contains("beside it (copy 1)"), "{err}");
    assert!(fed.object_path(&format!("/test/ckpt/dmg/chunks/{}/{hash}.1", &hash[..2])).is_file());
    verify_ok(&store, "first", &env);
    verify_ok(&store, "second", &env);
}

/// Distinct chunk hashes of a dataset manifest (`data push --json`).
fn dataset_chunks(manifest: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let files = manifest["files"].as_array().unwrap();
    files.iter().flat_map(|f| f["chunks"].as_array().unwrap().iter().map(|c| c["hash"].as_str().unwrap().to_string())).collect()
}

fn push_dataset(store: &str, env: &[(String, String)], dir: &Path, name: &str) -> serde_json::Value {
    let out = baton_with(env).args(["data", "push", "--store", store, "--name", name, "--json"]).arg(dir).output().unwrap();
    crate::data::ok(&out, "data push")
}

/// Every object read since the log was cleared came from the cache the director names
/// first, never from the origin, and `chunks` were among them.
fn assert_read_through_the_cache(fed: &Federation, chunks: &std::collections::BTreeSet<String>) {
    let log = fed.log_entries();
    let gets: Vec<&serde_json::Value> = log.iter().filter(|e| e["method"] == "GET" && e["server"] != "federation").collect();
    let off_cache: Vec<&&serde_json::Value> = gets.iter().filter(|e| e["server"] != "cache" || e["status"] != 200).collect();
    assert!(off_cache.is_empty(), "reads not served by the cache: {off_cache:?}");
    for h in chunks {
        assert!(
            gets.iter().any(|e| e["target"].as_str().unwrap().ends_with(h.as_str())),
            "chunk {h} was not read through the cache:\n{}",
            fed.log()
        );
    }
    assert!(
        gets.iter().any(|e| e["target"].as_str().unwrap().contains("/datasets/shards/versions/")),
        "the manifest was not read through the cache"
    );
}

/// Datasets on Pelican/OSDF are read as checkpoints are: through the cache the director
/// names first (`Link` pri=1), by `data pull` and by `run --data` while the run's
/// checkpoint restores.
#[test]
fn a_dataset_on_pelican_is_pulled_through_the_cache_the_director_names() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("data");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::data::make_dataset(&data, 12, 30_000, 31);
    let chunks = dataset_chunks(&push_dataset(&store, &env, &data, "shards"));
    assert_eq!(chunks.len(), 12, "one chunk per non-empty file");

    fed.clear_log();
    let to = tmp.path().join("pulled");
    let out = baton_with(&env).args(["data", "pull", "--store", &store, "shards", "--json", "--to"]).arg(&to).output().unwrap();
    let stats = crate::data::ok(&out, "data pull");
    assert_eq!(stats["fetched_chunks"], 12, "{stats}");
    crate::data::same_tree(&data, &to);
    assert_read_through_the_cache(&fed, &chunks);

    // A checkpoint to restore, then a run that needs both.
    ok_run(&store, "r", &env);
    fed.clear_log();
    let slot = tempfile::tempdir().unwrap();
    let script = r#"set -e
        test "$BATON_DATA_SHARDS" = "$PWD/in/shards"
        cmp "$BATON_DATA_SHARDS/part-1/f001.bin" "$ORIG/part-1/f001.bin"
        test "$(cat "$BATON_CHECKPOINT_DIR/b")" = hello
        echo "restored $BATON_RESTORED_SEQ""#;
    let mut run_env = env.clone();
    run_env.push(("ORIG".into(), data.display().to_string()));
    let out = output_of(spawn_run(slot.path(), &store, "r", &run_env, &["--data", "shards=in/shards"], &["sh", "-c", script]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("restored 1") && stderr.contains("pulled dataset shards version 1"), "{stdout}\n{stderr}");
    crate::data::same_tree(&data, &slot.path().join("in/shards"));
    assert_read_through_the_cache(&fed, &chunks);
}

/// One bit flipped in one stored chunk of a dataset: the federation's own crc32c agrees
/// with the damaged bytes, so only baton's sha256 can tell. `data pull`, `verify` and
/// `run --data` all refuse it, naming the file; nothing is written and the command does
/// not start. Pushing the directory again writes a good copy beside the damaged chunk
/// (origins refuse overwrites), and then both versions pull.
#[test]
fn a_damaged_dataset_chunk_on_pelican_is_detected_and_a_push_repairs_it() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("data");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::data::make_dataset(&data, 6, 30_000, 32);
    let pushed = push_dataset(&store, &env, &data, "shards");
    let victim_file = pushed["files"].as_array().unwrap().iter().find(|f| f["size"].as_u64() > Some(0)).unwrap();
    let (path, hash) = (victim_file["path"].as_str().unwrap(), victim_file["chunks"][0]["hash"].as_str().unwrap());
    let victim = fed.object_path(&format!("/test/data/chunks/{}/{hash}", &hash[..2]));
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&victim, bytes).unwrap();

    let to = tmp.path().join("pulled");
    let out = baton_with(&env).args(["data", "pull", "--store", &store, "shards", "--to"]).arg(&to).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(71), "{err}");
    assert!(err.contains(&format!("dataset shards version 1, file {path}")), "{err}");
    assert!(!to.exists(), "a failed pull left {}", to.display());

    let out = baton_with(&env).args(["verify", "--store", &store, "--dataset", "shards"]).output().unwrap();
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(71), "{report}{}", text(&out.stderr));
    assert!(report.lines().any(|l| l.starts_with("DAMAGED") && l.contains(path)), "{report}");

    let (out, started) = {
        let slot = tempfile::tempdir().unwrap();
        let out = output_of(spawn_run(slot.path(), &store, "r", &env, &["--data", "shards=in"], &["sh", "-c", "touch started"]));
        (out, slot.path().join("started").exists())
    };
    assert_eq!(out.status.code(), Some(71), "{}", text(&out.stderr));
    assert!(!started, "the command started without its dataset");

    let again = push_dataset(&store, &env, &data, "shards");
    assert_eq!(again["version"], 2);
    assert!(fed.object_path(&format!("/test/data/chunks/{}/{hash}.1", &hash[..2])).is_file(), "no good copy beside the damaged chunk");
    for v in ["shards@1", "shards@2"] {
        let to = tmp.path().join(v);
        let out = baton_with(&env).args(["data", "pull", "--store", &store, v, "--json", "--to"]).arg(&to).output().unwrap();
        crate::data::ok(&out, "data pull after the repair");
        crate::data::same_tree(&data, &to);
    }
    let out = baton_with(&env).args(["verify", "--store", &store, "--dataset", "shards"]).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// A cache that holds a damaged copy of a good chunk (its crc32c is of its own bytes, so
/// the transfer check passes): baton's sha256 catches it, the origin is asked past the
/// cache (the director's origin endpoint), and the pull succeeds without marking the store's good object
/// damaged. Checkpoint restores read chunks the same way.
#[test]
fn a_damaged_copy_in_the_cache_is_read_again_from_the_origin() {
    let fed = Federation::start();
    let (env, _) = rw_env(&fed);
    let store = fed.store_url("data");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::data::make_dataset(&data, 6, 30_000, 33);
    let pushed = push_dataset(&store, &env, &data, "shards");
    let hash = pushed["files"].as_array().unwrap().iter().find(|f| f["size"].as_u64() > Some(0)).unwrap()["chunks"][0]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    fed.clear_log();
    // Every read of that chunk from the cache, however often it is asked.
    fed.set_fault(&format!(r#"{{"kind": "corrupt", "count": 1000, "server": "cache", "path_contains": "{hash}"}}"#));
    let to = tmp.path().join("pulled");
    let out = baton_with(&env).args(["data", "pull", "--store", &store, "shards", "--json", "--to"]).arg(&to).output().unwrap();
    crate::data::ok(&out, "data pull past a damaged cache copy");
    crate::data::same_tree(&data, &to);
    let err = text(&out.stderr);
    assert!(err.contains(&format!("chunk {hash}: the copy a cache served was damaged")), "{err}");
    let log = fed.log_entries();
    let served =
        |server: &str| log.iter().any(|e| e["method"] == "GET" && e["server"] == server && e["target"].as_str().unwrap().contains(&hash));
    assert!(served("cache") && served("origin"), "read from the cache, then from the origin:\n{}", fed.log());
    assert!(log.iter().any(|e| e["fault"] == "corrupt"), "the cache never served the damaged copy");
    assert!(!fed.object_path(&format!("/test/data/damaged/{hash}")).exists(), "the origin's good chunk was marked damaged");
    let out = baton_with(&env).args(["verify", "--store", &store, "--dataset", "shards"]).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}
