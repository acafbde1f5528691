//! The Chirp proxy double, fixtures/chirp_server.py (a stand-in for the HTCondor starter's
//! Chirp proxy): `Proxy` starts one and reads what it recorded, `Session` speaks the
//! wire protocol to it directly. Standard-library Python; needs only python3.

use serde_json::Value as Json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::root;

pub struct Proxy {
    child: Child,
    pub dir: tempfile::TempDir,
    port: u16,
    pub cookie: String,
}

impl Proxy {
    pub fn start(flags: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(root().join("fixtures/chirp_server.py"))
            .arg("--config")
            .arg(dir.path().join("chirp.config"))
            .arg("--record")
            .arg(dir.path().join("record.jsonl"))
            .args(["--lifetime", "120"])
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be on PATH");
        let mut ready = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready);
        assert!(ready.starts_with("listening 127.0.0.1 "), "chirp_server.py did not start: {ready:?}");
        let config = std::fs::read_to_string(dir.path().join("chirp.config")).unwrap();
        let words: Vec<&str> = config.split_whitespace().collect();
        assert_eq!(words.len(), 3, "config {config:?}");
        assert_eq!(words[0], "127.0.0.1");
        assert_eq!(ready.split_whitespace().nth(2), Some(words[1]), "the printed port is the config's");
        let (port, cookie) = (words[1].parse().unwrap(), words[2].to_string());
        Proxy { child, dir, port, cookie }
    }

    pub fn connect(&self) -> Session {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Session { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    /// A connection past the cookie handshake.
    pub fn session(&self) -> Session {
        let mut s = self.connect();
        assert_eq!(s.cmd(&format!("cookie {}", self.cookie)), "0");
        s
    }

    pub fn events(&self, kind: &str) -> Vec<Json> {
        let text = std::fs::read_to_string(self.dir.path().join("record.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str::<Json>(l).unwrap()).filter(|e| e["event"] == kind).collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Session {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl Session {
    /// Send one line (the newline is added) and read the reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply().expect("a reply")
    }

    pub fn send(&mut self, line: &str) {
        self.stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    pub fn reply(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim_end_matches('\n').to_string()),
        }
    }

    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}
