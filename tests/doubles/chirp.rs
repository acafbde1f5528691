//! fixtures/chirp_server.py, the stand-in for the HTCondor starter's Chirp proxy that
//! baton's Chirp tests (src/chirp.rs, tests/chirp.rs) run against, must answer as the
//! starter does (HTCondor's src/condor_starter.V6.1/io_proxy_handler.cpp): these tests
//! speak the protocol to it directly, and run HTCondor's own Python client
//! (`htcondor2.htchirp`, PyPI `htcondor` in .venv) against it when that is installed.

use crate::common::chirp::Proxy;
use crate::common::root;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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
