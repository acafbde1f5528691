//! A local Pelican federation for tests: fixtures/pelican_federation.py (discovery and
//! director, one origin, one cache, all TLS on 127.0.0.1 with a CA made per start), and
//! the real Python client pelicanfs (fixtures/pelicanfs_check.py) to read what is stored.
//! The double is standard-library Python; pelicanfs needs the .venv that `make venv`
//! (and so `make test`) installs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::root;

/// The venv's python, found the way `moto_bin` finds moto_server: next to `$BATON_TEST_MOTO`
/// when `make test` set it, else `.venv/bin/python`.
pub fn venv_python() -> PathBuf {
    let from_moto = std::env::var_os("BATON_TEST_MOTO").map(PathBuf::from).and_then(|m| m.parent().map(|d| d.join("python")));
    from_moto.filter(|p| p.exists()).unwrap_or_else(|| root().join(".venv/bin/python"))
}

/// The venv's python with pelicanfs in it; a clear failure when `make venv` was not run.
pub fn pelicanfs_python() -> PathBuf {
    let py = venv_python();
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import pelicanfs"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(
        ok,
        "pelicanfs not importable by {}: run `make venv` (or the tests with `make test`), which installs requirements-test.txt",
        py.display()
    );
    py
}

/// The interpreter for the double itself: the venv's if there is one, else python3.
fn double_python() -> PathBuf {
    let py = venv_python();
    if py.exists() {
        py
    } else {
        PathBuf::from("python3")
    }
}

fn double_script() -> PathBuf {
    root().join("fixtures/pelican_federation.py")
}

/// One HTTP answer from `Federation::request`.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the connection closed before Content-Length bytes arrived.
    pub complete: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running federation, stopped (SIGTERM, then SIGKILL) when dropped. Its stdin is a pipe
/// held here, so it also stops if the test process dies without dropping it.
pub struct Federation {
    child: Child,
    _stdin: Option<ChildStdin>,
    /// "127.0.0.1:P", the federation (discovery + director) host for pelican:// URLs.
    pub host: String,
    /// The test CA (PEM) that signed the certificate of all three listeners.
    pub ca: PathBuf,
    /// The origin's export: `<namespace>/x` is `root/x`.
    pub root: PathBuf,
    /// "https://127.0.0.1:P" of each listener.
    pub federation: String,
    pub origin: String,
    pub cache: String,
    /// "/test".
    pub namespace: String,
    pub dir: tempfile::TempDir,
}

impl Federation {
    pub fn start() -> Federation {
        Self::start_with(&[])
    }

    /// With extra `serve` flags: "--public-read", "--allow-overwrite", "--authz-in-location",
    /// "--propfind-no-file-resourcetype", "--namespace", "/other".
    pub fn start_with(flags: &[&str]) -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("export");
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("federation.log")).unwrap();
        let mut child = Command::new(double_python())
            .arg(double_script())
            .arg("serve")
            .arg("--root")
            .arg(&root)
            .arg("--tls-dir")
            .arg(dir.path().join("tls"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--exit-on-stdin-eof")
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fixtures/pelican_federation.py");
        let stdin = child.stdin.take();
        let start = Instant::now();
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).expect("ready file is JSON");
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the Pelican double exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(dir.path().join("federation.log")).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!(
                    "the Pelican double was not ready within 20 s:\n{}",
                    std::fs::read_to_string(dir.path().join("federation.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let s = |k: &str| info[k].as_str().unwrap_or_else(|| panic!("ready file lacks {k}")).to_string();
        Federation {
            host: s("federation_host"),
            ca: PathBuf::from(s("ca")),
            root,
            federation: s("federation"),
            origin: s("origin"),
            cache: s("cache"),
            namespace: s("namespace"),
            child,
            _stdin: stdin,
            dir,
        }
    }

    /// `pelican://127.0.0.1:P/test/<prefix>`.
    pub fn store_url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("pelican://{}{}", self.host, self.namespace)
        } else {
            format!("pelican://{}{}/{}", self.host, self.namespace, prefix)
        }
    }

    /// What a process needs to trust the federation's certificates.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SSL_CERT_FILE".into(), self.ca.display().to_string())]
    }

    /// A bearer token (a JWT; the double does not check signatures) with this space-separated
    /// scope, e.g. "storage.read:/ storage.create:/runs", expiring in `exp_in_secs`
    /// (negative: already expired). Issued by this federation.
    pub fn mint_token(&self, scope: &str, exp_in_secs: i64) -> String {
        let out = Command::new(double_python())
            .arg(double_script())
            .args(["mint-token", "--scope", scope, &format!("--exp-in={exp_in_secs}"), "--issuer", &self.federation])
            .output()
            .unwrap();
        assert!(out.status.success(), "mint-token failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A fresh token written to a file under the test's tempdir (for BEARER_TOKEN_FILE).
    pub fn token_file(&self, scope: &str, exp_in_secs: i64) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = self.dir.path().join(format!("token-{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        std::fs::write(&p, self.mint_token(scope, exp_in_secs) + "\n").unwrap();
        p
    }

    /// One HTTPS request to any of the listeners (`url` absolute, sent as given, redirects
    /// not followed), with an optional bearer token and body.
    pub fn request(&self, method: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        self.request_opts(method, url, token, headers, body, false)
    }

    /// `request` with the body sent as `Transfer-Encoding: chunked`.
    pub fn request_chunked(&self, method: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.request_opts(method, url, token, headers, Some(body), true)
    }

    fn request_opts(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        chunked: bool,
    ) -> Resp {
        let mut c = Command::new(double_python());
        c.arg(double_script()).args(["request", "--ca"]).arg(&self.ca);
        for (k, v) in headers {
            c.arg("-H").arg(format!("{k}: {v}"));
        }
        let body_file = body.map(|b| {
            let mut f = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
            f.write_all(b).unwrap();
            f
        });
        if let Some(f) = &body_file {
            c.arg("--data-file").arg(f.path());
        }
        if chunked {
            c.arg("--chunked");
        }
        c.env_remove("PELICAN_DOUBLE_TOKEN");
        if let Some(t) = token {
            c.env("PELICAN_DOUBLE_TOKEN", t);
        }
        let out = c.arg(method).arg(url).output().unwrap();
        assert!(out.status.success(), "request {method} {url} failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("request printed JSON");
        Resp {
            status: v["status"].as_u64().unwrap() as u16,
            headers: v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
                .collect(),
            body: hex::decode(v["body_hex"].as_str().unwrap()).unwrap(),
            complete: v["complete"].as_bool().unwrap(),
        }
    }

    /// Arm a fault: `{"kind": "truncate"|"bad-digest"|"429"|"stall"|"500"|"director-429",
    /// "count": N, "method": "GET", "path_contains": "...", "server": "origin|cache|federation",
    /// "retry_after": S, "stall_seconds": S}`.
    pub fn set_fault(&self, json: &str) {
        let r = self.request(
            "POST",
            &format!("{}/_double/faults", self.federation),
            None,
            &[("Content-Type", "application/json")],
            Some(json.as_bytes()),
        );
        assert_eq!(r.status, 200, "arming fault {json} failed: {}", r.text());
    }

    pub fn clear_faults(&self) {
        let r = self.request("DELETE", &format!("{}/_double/faults", self.federation), None, &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Raw JSON of every request the three listeners saw: [{"server", "method", "target",
    /// "status", "authorization": bool, "fault"}, ...]. Tokens are never in it (unless a
    /// client put one in a URL, which is what tests look for).
    pub fn log(&self) -> String {
        let r = self.request("GET", &format!("{}/_double/log", self.federation), None, &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    pub fn log_entries(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.log()).unwrap().as_array().unwrap().clone()
    }

    pub fn clear_log(&self) {
        let r = self.request("DELETE", &format!("{}/_double/log", self.federation), None, &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// The double's own stderr so far (one line per request), for failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("federation.log")).unwrap_or_default()
    }

    /// The file behind `<namespace>/<path>` in the origin's export.
    pub fn object_path(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        let ns = self.namespace.trim_start_matches('/');
        let rel = rel.strip_prefix(ns).unwrap_or(rel).trim_start_matches('/');
        self.root.join(rel)
    }

    /// Run fixtures/pelicanfs_check.py (the real pelicanfs client) against this federation:
    /// `args` is e.g. ["ls", "/test/x"], ["cat", "/test/x/y"], ["find", "/test"].
    pub fn pelicanfs(&self, token_file: Option<&Path>, args: &[&str]) -> Output {
        let mut c = Command::new(pelicanfs_python());
        c.arg(root().join("fixtures/pelicanfs_check.py")).args(["--federation-host", &self.host]).arg("--ca").arg(&self.ca);
        if let Some(t) = token_file {
            c.arg("--token-file").arg(t);
        }
        for k in ["BEARER_TOKEN", "BEARER_TOKEN_FILE", "TOKEN", "_CONDOR_CREDS", "SSL_CERT_FILE"] {
            c.env_remove(k);
        }
        c.args(args).output().unwrap()
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        super::send_signal(self.child.id(), libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
