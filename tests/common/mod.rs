//! Test harness: the real binary, the example trainer (examples/trainer.py), the doubles
//! and data under fixtures/, and a real S3 server (moto) started on 127.0.0.1 for the
//! tests that need one.

pub mod chirp;
pub mod fault_proxy;
pub mod pelican;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

pub fn baton() -> Command {
    let mut c = Command::new(baton_bin());
    // Tests must not see the developer's own store or run settings.
    for k in [
        "BATON_STORE",
        "BATON_RUN_ID",
        "BATON_SOCKET",
        "BATON_NODES",
        "BATON_NODE_RANK",
        "_CONDOR_JOB_AD",
        "_CONDOR_MACHINE_AD",
        "_CONDOR_SCRATCH_DIR",
    ] {
        c.env_remove(k);
    }
    c.env("BATON_LOG", "baton=info");
    c
}

pub fn trainer() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| root().join("examples/trainer.py"))
}

/// A test double or test data file under fixtures/.
pub fn fixture(name: &str) -> PathBuf {
    root().join("fixtures").join(name)
}

/// Small, fast trainer settings: 5 epochs of 20 steps of 50 ms.
pub const TRAINER_ARGS: &[&str] = &["--epochs", "5", "--steps-per-epoch", "20", "--step-seconds", "0.05", "--blob-mb", "1"];

/// The digest line of an uninterrupted run of the trainer without baton.
pub fn reference_digest(args: &[&str]) -> String {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let key = args.join(" ");
    let cache = CACHE.get_or_init(Default::default);
    if let Some(d) = cache.lock().unwrap().get(&key) {
        return d.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut fast: Vec<&str> = args.to_vec();
    if let Some(i) = fast.iter().position(|a| *a == "--step-seconds") {
        fast[i + 1] = "0";
    }
    let out = Command::new("python3")
        .arg(trainer())
        .args(&fast)
        .env("BATON_CHECKPOINT_DIR", dir.path().join("ckpt"))
        .env_remove("BATON_SOCKET")
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "reference run failed");
    let d = digest_of(&out.stdout).expect("reference run printed no digest");
    cache.lock().unwrap().insert(key, d.clone());
    d
}

pub fn digest_of(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout).lines().find_map(|l| l.strip_prefix("digest: ").map(|s| s.trim().to_string()))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A small deterministic PRNG so a failing schedule can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator for a seed chosen by the caller (a torture trial's own seed).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// An index in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform(0.0, n as f64) as usize).min(n.saturating_sub(1))
    }
    pub fn from_time() -> Rng {
        let seed = std::env::var("BATON_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
        eprintln!("random schedule seed: {seed} (replay with BATON_TEST_SEED={seed})");
        Rng(seed | 1)
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); check /proc for its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string));
            state.as_deref() != Some("Z")
        }
        Err(_) => false,
    }
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn output_of(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// Where `make test` installed moto; a clear failure when it did not.
fn moto_bin() -> PathBuf {
    let p = std::env::var_os("BATON_TEST_MOTO").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/moto_server"));
    assert!(p.exists(), "moto_server not found at {}: run the tests with `make test`, which installs it into .venv", p.display());
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A moto S3 server on 127.0.0.1, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// With `INITIAL_NO_AUTH_ACTION_COUNT`, moto checks credentials after that many requests.
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let mut cmd = Command::new(moto_bin());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start moto_server");
        let m = Moto { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "bucket creation failed: {resp}");
    }

    /// The environment a user would set for this server.
    pub fn env(&self, key: &str, secret: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), key.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One start of `baton run` on a fresh, empty slot directory.
pub fn spawn_run(slot: &Path, store: &str, run_id: &str, env: &[(String, String)], extra: &[&str], cmd: &[&str]) -> Child {
    let mut c = baton();
    c.current_dir(slot)
        .arg("run")
        .args(["--store", store, "--run-id", run_id])
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Run the trainer under baton, SIGTERM it after each delay in `evict_after` on a new
/// empty slot, then let a last attempt finish. Returns (final digest, all stderr).
/// Wait until a Python child of `parent` has installed a SIGTERM handler (bit 15 of
/// `SigCgt` in /proc/PID/status). Past `limit`, go on: the test then shows what happened.
pub fn wait_for_sigterm_handler(parent: u32, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let ready = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else { return false };
            let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(parent) || !head.contains("python") {
                return false;
            }
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
        });
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run_with_evictions(
    store: &str,
    run_id: &str,
    env: &[(String, String)],
    trainer_args: &[&str],
    evict_after: &[f64],
) -> (String, String) {
    let mut cmd = vec!["python3", trainer().to_str().unwrap()];
    cmd.extend_from_slice(trainer_args);
    let mut logs = String::new();
    for (i, delay) in evict_after.iter().enumerate() {
        let slot = tempfile::tempdir().unwrap();
        let child = spawn_run(slot.path(), store, run_id, env, &[], &cmd);
        // The delay counts from when the trainer can take the signal: counted from the
        // spawn, a loaded machine (a full `make test`) spent it all on baton's restore and
        // Python's start, and every attempt died before its first commit.
        wait_for_sigterm_handler(child.id(), Duration::from_secs(120));
        std::thread::sleep(Duration::from_secs_f64(*delay));
        send_signal(child.id(), libc::SIGTERM);
        let out = output_of(child);
        let err = text(&out.stderr);
        logs.push_str(&format!("--- attempt {} (SIGTERM after {delay:.2} s) ---\n{err}", i + 1));
        // 143: the trainer saved and exited on the signal; 0: it had already finished.
        let code = out.status.code();
        assert!(code == Some(143) || code == Some(0), "attempt {} ended with {:?}:\n{err}", i + 1, out.status);
        if code == Some(0) {
            return (digest_of(&out.stdout).unwrap_or_default(), logs);
        }
    }
    let slot = tempfile::tempdir().unwrap();
    let out = output_of(spawn_run(slot.path(), store, run_id, env, &[], &cmd));
    logs.push_str(&format!("--- final attempt ---\n{}", text(&out.stderr)));
    assert!(out.status.success(), "final attempt failed: {:?}\n{logs}", out.status);
    (digest_of(&out.stdout).expect("no digest printed"), logs)
}
