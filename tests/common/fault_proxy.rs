//! fixtures/fault_proxy.py in front of an S3 server: seeded 5xx, resets, stalls,
//! truncated and slow responses, or a server that ignores `If-None-Match`.

use super::fixture;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct FaultProxy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl FaultProxy {
    /// `args` are the proxy's own flags (`--rate`, `--faults`, `--seed`, ...).
    pub fn start(upstream: &str, args: &[&str]) -> FaultProxy {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg(fixture("fault_proxy.py"))
            .args(["--upstream", upstream, "--port", "0"])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--stats")
            .arg(dir.path().join("stats.json"))
            .arg("--control")
            .arg(dir.path().join("control"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fault_proxy.py");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse().ok()) {
                break p;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "fault_proxy.py did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        FaultProxy { child, port, dir }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From the next request on, inject faults with this probability.
    pub fn set_rate(&self, rate: f64) {
        let tmp: PathBuf = self.dir.path().join("control.tmp");
        std::fs::write(&tmp, format!("{rate}\n")).unwrap();
        std::fs::rename(tmp, self.dir.path().join("control")).unwrap();
    }

    /// `{"requests": n, "faults": {kind: count}, "stripped_if_none_match": n}`.
    pub fn stats(&self) -> serde_json::Value {
        std::fs::read(self.dir.path().join("stats.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// The environment a user would set to reach the S3 server through this proxy.
    pub fn env(&self, key: &str, secret: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), key.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
