//! fixtures/chirp_server.py, the stand-in for the HTCondor starter's Chirp proxy that
//! baton's Chirp tests (src/chirp.rs) run against, must answer as the starter does
//! (src/condor_starter.V6.1/io_proxy_handler.cpp): these tests speak the protocol to
//! it directly, and run HTCondor's own Python client (`htcondor2.htchirp`, PyPI
//! `htcondor` in .venv) against it when that is installed.

use crate::common;

use serde_json::Value as Json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Proxy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    cookie: String,
}

impl Proxy {
    fn start(flags: &[&str]) -> Proxy {
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

    fn connect(&self) -> Session {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Session { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    /// A connection past the cookie handshake.
    fn session(&self) -> Session {
        let mut s = self.connect();
        assert_eq!(s.cmd(&format!("cookie {}", self.cookie)), "0");
        s
    }

    fn events(&self, kind: &str) -> Vec<Json> {
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

struct Session {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Session {
    /// Send one line (the newline is added) and read the reply line.
    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply().expect("a reply")
    }

    fn send(&mut self, line: &str) {
        self.stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn reply(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.reader.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim_end_matches('\n').to_string()),
        }
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

#[test]
fn handshake_then_set_job_attr_delayed() {
    let p = Proxy::start(&[]);
    let mut s = p.session();
    assert_eq!(s.cmd(r#"set_job_attr_delayed ChirpBatonDevice "NVIDIA\ H100\ 80GB""#), "0");
    assert_eq!(s.cmd("set_job_attr_delayed ChirpBatonEpoch 3"), "0");
    assert_eq!(s.cmd("set_job_attr_delayed ChirpBatonFlushSeconds 0.25"), "0");
    let sets = p.events("set");
    assert_eq!(sets[0]["value"]["string"], "NVIDIA H100 80GB");
    assert_eq!(sets[0]["expr"], r#""NVIDIA H100 80GB""#);
    assert_eq!(sets[1]["value"]["int"], 3);
    assert_eq!(sets[2]["value"]["real"], "0.25");
    assert_eq!(p.events("cookie"), [serde_json::json!({"event": "cookie", "conn": 1, "ok": true})]);
}

/// A backslash makes the next character literal (the starter's sscanf_chirp), then the
/// ClassAd string escapes apply.
#[test]
fn escapes_are_undone_in_two_layers() {
    let p = Proxy::start(&[]);
    let mut s = p.session();
    let cases = [
        (r#""a\ b""#, "a b"),
        (r#""back\\\\slash""#, r"back\slash"),
        (r#""\\"quoted\\"""#, r#""quoted""#),
        (r#""new\\nline\\ttab""#, "new\nline\ttab"),
        (r#""\\303\\251\\001""#, "é\u{1}"),
        (r#""""#, ""),
        (r#""'?""#, "'?"),
    ];
    for (arg, _) in &cases {
        assert_eq!(s.cmd(&format!("set_job_attr_delayed ChirpX {arg}")), "0", "{arg}");
    }
    let got: Vec<String> = p.events("set").iter().map(|e| e["value"]["string"].as_str().unwrap().to_string()).collect();
    let want: Vec<String> = cases.iter().map(|c| c.1.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn a_wrong_cookie_or_no_cookie_is_refused_and_closed() {
    let p = Proxy::start(&["--cookie", "sesame"]);
    let mut s = p.connect();
    assert_eq!(s.cmd("cookie sesame2"), "-1");
    assert!(s.closed());
    let mut s = p.connect();
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX 1"), "-1");
    assert!(s.closed());
    assert!(p.events("set").is_empty());
    let mut s = p.connect();
    assert_eq!(s.cmd("cookie sesame"), "0");
}

/// The starter's answers, including its quirks: a refused name gets `1`, not a negative
/// code, and the `Chirp` prefix is matched regardless of case.
#[test]
fn answers_like_the_starter() {
    let p = Proxy::start(&[]);
    let mut s = p.session();
    assert_eq!(s.cmd("set_job_attr_delayed BatonEpoch 3"), "1");
    assert_eq!(s.cmd("set_job_attr_delayed chirpLower 3"), "0");
    let fits = format!("\"{}\"", "x".repeat(991));
    assert_eq!(s.cmd(&format!("set_job_attr_delayed ChirpX {fits}")), "0");
    let too_long = format!("\"{}\"", "x".repeat(992));
    assert_eq!(s.cmd(&format!("set_job_attr_delayed ChirpX {too_long}")), "-127");
    // Stricter than the starter, which would answer 0 and drop these silently.
    assert_eq!(s.cmd(r#"set_job_attr_delayed ChirpX "epoch 3""#), "-8", "an unescaped space splits the value");
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX 5."), "-8");
    assert_eq!(s.cmd(r#"set_job_attr_delayed ChirpX "unterminated"#), "-8");
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX \"raw\\\ttab\""), "-8", "a raw (escaped) tab inside the ClassAd string");
    assert_eq!(s.cmd(r#"set_job_attr_delayed ChirpX "\\x41""#), "-8");
    assert_eq!(s.cmd(r#"set_job_attr_delayed ChirpX "\\303""#), "-8", "half a UTF-8 character");
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX"), "-8");
    assert_eq!(s.cmd("frobnicate"), "-8");
    for lit in ["-42", "9223372036854775807", "1e20", "-0.5", ".5", r#"real("INF")"#, r#"-real("INF")"#, r#"real("NaN")"#, "true"] {
        assert_eq!(s.cmd(&format!("set_job_attr_delayed ChirpX {lit}")), "0", "{lit}");
    }
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX 9223372036854775808"), "-8");
    // The session survives all of that.
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX 1"), "0");
}

#[test]
fn at_most_100_distinct_attributes() {
    let p = Proxy::start(&[]);
    let mut s = p.session();
    for i in 0..100 {
        assert_eq!(s.cmd(&format!("set_job_attr_delayed ChirpN{i} {i}")), "0");
    }
    assert_eq!(s.cmd("set_job_attr_delayed ChirpN100 1"), "1");
    assert_eq!(s.cmd("set_job_attr_delayed ChirpN7 70"), "0", "a known name may still change");
}

#[test]
fn an_over_long_line_is_refused_and_closed() {
    let p = Proxy::start(&[]);
    let mut s = p.session();
    let line = format!("set_job_attr_delayed ChirpX \"{}\"", "x".repeat(5120));
    assert_eq!(s.cmd(&line), "-5");
    assert!(s.closed());
}

#[test]
fn get_job_attr_delayed_reads_back_the_expression() {
    let p = Proxy::start(&[]);
    let mut s = p.session();
    assert_eq!(s.cmd(r#"set_job_attr_delayed ChirpX "a\ b""#), "0");
    assert_eq!(s.cmd("get_job_attr_delayed ChirpX"), "5");
    let mut body = [0u8; 5];
    s.reader.read_exact(&mut body).unwrap();
    assert_eq!(&body, br#""a b""#);
    assert_eq!(s.cmd("get_job_attr_delayed ChirpY"), "-3");
}

#[test]
fn fault_switches() {
    let p = Proxy::start(&["--fail-set"]);
    let mut s = p.session();
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX 1"), "-1");
    assert_eq!(p.events("set")[0]["reply"], -1);

    let p = Proxy::start(&["--close"]);
    assert!(p.connect().closed());

    let p = Proxy::start(&["--close-first", "1"]);
    assert!(p.connect().closed());
    let mut s = p.session();
    assert_eq!(s.cmd("set_job_attr_delayed ChirpX 1"), "0");

    let p = Proxy::start(&["--hang"]);
    let mut s = p.connect();
    s.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s.send(&format!("cookie {}", p.cookie));
    assert_eq!(s.reply(), None, "a hanging proxy never answers");
}

/// HTCondor's own Python client against the fixture: what it sends (values quoted with
/// `classad2.quote`) must decode to exactly what was meant. It also shows the client's
/// quirk: a refused name (reply 1) raises nothing.
#[test]
fn htcondors_python_client_talks_to_the_fixture() {
    let python = std::env::var_os("BATON_TEST_MOTO")
        .map(|m| PathBuf::from(m).with_file_name("python3"))
        .unwrap_or_else(|| root().join(".venv/bin/python3"));
    let importable = Command::new(&python).args(["-c", "import classad2, htcondor2.htchirp"]).output();
    if !matches!(importable, Ok(ref o) if o.status.success()) {
        eprintln!("NOTE: skipping: {} cannot import htcondor2.htchirp (install requirements-test.txt into .venv)", python.display());
        return;
    }
    const SCRIPT: &str = r#"
import json, sys
import classad2
from htcondor2.htchirp import HTChirp
values = json.load(open(sys.argv[1]))
host, port, cookie = open(sys.argv[2]).read().split()
with HTChirp(host=host, port=int(port), cookie=cookie) as chirp:
    for i, v in enumerate(values):
        chirp.set_job_attr_delayed("ChirpS%d" % i, classad2.quote(v))
    chirp.set_job_attr_delayed("ChirpI", "-7")
    chirp.set_job_attr_delayed("ChirpR", "0.1")
    chirp.set_job_attr_delayed("NotChirp", "1")  # refused with 1: no exception
    print(chirp.get_job_attr_delayed("ChirpS0"))
"#;
    let values = [
        "NVIDIA H100 80GB HBM3",
        r"C:\dir\ back\\slash\",
        r#"say "hi" \"there\""#,
        "new\nline, tab\tand cr\r",
        "bell\x07 esc\x1b del\x7f",
        "ünïcödé 日本 😀",
        "",
        "  spaces  ",
    ];
    let p = Proxy::start(&[]);
    let file = p.dir.path().join("values.json");
    std::fs::write(&file, serde_json::to_vec(&values).unwrap()).unwrap();
    let out = Command::new(&python).args(["-c", SCRIPT]).arg(&file).arg(p.dir.path().join("chirp.config")).output().unwrap();
    assert!(out.status.success(), "htchirp failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), r#""NVIDIA H100 80GB HBM3""#);
    let sets = p.events("set");
    assert_eq!(sets.len(), values.len() + 3);
    for (v, set) in values.iter().zip(&sets) {
        assert_eq!(set["reply"], 0, "{set}");
        assert_eq!(set["value"]["string"], *v, "{set}");
    }
    assert_eq!(sets[values.len()]["value"]["int"], -7);
    assert_eq!(sets[values.len() + 1]["value"]["real"], "0.1");
    assert_eq!(sets[values.len() + 2]["reply"], 1);
    // HTChirp() connects once to check the cookie, then once more for the session.
    assert_eq!(p.events("cookie").len(), 2);
}

// ------------------------------------------------------------------------------------
// baton itself reporting through the proxy

const ARGS: [&str; 6] = ["--epochs", "3", "--steps-per-epoch", "5", "--step-seconds", "0.02"];

fn run_under(p: &Proxy, store: &std::path::Path, run_id: &str) -> std::process::Child {
    let slot = tempfile::tempdir().unwrap();
    let mut cmd = vec!["python3", common::trainer().to_str().unwrap()];
    cmd.extend_from_slice(&ARGS);
    let env = [("_CONDOR_CHIRP_CONFIG".to_string(), p.dir.path().join("chirp.config").display().to_string())];
    let child = common::spawn_run(slot.path(), store.to_str().unwrap(), run_id, &env, &[], &cmd);
    // The slot directory may go once the process holds its cwd.
    std::mem::forget(slot);
    child
}

/// The last value each attribute was set to.
fn last_values(p: &Proxy) -> std::collections::BTreeMap<String, Json> {
    p.events("set").into_iter().map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e["value"].clone())).collect()
}

#[test]
fn baton_reports_device_progress_and_flush_into_the_job_ad() {
    let p = Proxy::start(&[]);
    let store = tempfile::tempdir().unwrap();
    let out = common::output_of(run_under(&p, store.path(), "chirped"));
    let err = common::text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v = last_values(&p);
    assert_eq!(v["ChirpBatonDevice"]["string"], "cpu", "{v:?}");
    // The final checkpoint (after the three epoch commits) is the last durable one.
    let o = common::baton().args(["inspect", "--store", store.path().to_str().unwrap(), "chirped", "--json"]).output().unwrap();
    let run: Json = serde_json::from_slice(&o.stdout).unwrap();
    let last_seq = run["checkpoints"].as_array().unwrap().last().unwrap()["seq"].clone();
    assert_eq!(v["ChirpBatonSeq"]["int"], last_seq, "{v:?}");
    let last_epoch = run["checkpoints"].as_array().unwrap().iter().filter_map(|c| c["manifest"]["epoch"].as_i64()).last();
    assert_eq!(v["ChirpBatonEpoch"]["int"].as_i64(), last_epoch, "{v:?}");
    assert_eq!(last_epoch, Some(2), "the trainer commits epochs 0, 1, 2");
    let t = v["ChirpBatonTime"]["int"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - 120..=now).contains(&t), "ChirpBatonTime {t} is not a recent unix time");
    assert!(v["ChirpBatonFlushSeconds"]["real"].as_str().unwrap().parse::<f64>().unwrap() >= 0.0, "{v:?}");
}

#[test]
fn a_failing_or_hung_chirp_proxy_never_disturbs_training() {
    let reference = common::reference_digest(&ARGS);
    for flags in [&["--fail-set"][..], &["--hang"][..], &["--close"][..]] {
        let p = Proxy::start(flags);
        let store = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let out = common::output_of(run_under(&p, store.path(), "unchirped"));
        let err = common::text(&out.stderr);
        assert!(out.status.success(), "{flags:?}: {err}");
        assert_eq!(common::digest_of(&out.stdout).as_deref(), Some(reference.as_str()), "{flags:?}: {err}");
        // Training takes about a second; a proxy that never answers may cost baton its
        // one-second wait at exit, not a per-report timeout.
        assert!(started.elapsed() < Duration::from_secs(20), "{flags:?} took {:?}", started.elapsed());
    }
    // No proxy at all: the config names a port nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(dir.path().join("chirp.config"), format!("127.0.0.1 {port} cookie\n")).unwrap();
    let slot = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut cmd = vec!["python3", common::trainer().to_str().unwrap()];
    cmd.extend_from_slice(&ARGS);
    let env = [("_CONDOR_CHIRP_CONFIG".to_string(), dir.path().join("chirp.config").display().to_string())];
    let out = common::output_of(common::spawn_run(slot.path(), store.path().to_str().unwrap(), "noproxy", &env, &[], &cmd));
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(common::digest_of(&out.stdout).as_deref(), Some(reference.as_str()));
}
