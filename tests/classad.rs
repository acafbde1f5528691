//! baton's ClassAd reader against the real ClassAd library (PyPI `htcondor`, module
//! `classad2`, installed into .venv by `make test`): ads printed exactly as HTCondor
//! prints them are read by both, and baton must agree with classad2 on every value
//! it evaluates. Then `baton run` on sandboxes made of the committed fixtures.

use crate::common::*;
use baton::classad::{self, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The venv's Python, next to the moto_server `make test` points BATON_TEST_MOTO at.
fn python() -> PathBuf {
    let p = std::env::var_os("BATON_TEST_MOTO")
        .map(|m| PathBuf::from(m).with_file_name("python3"))
        .unwrap_or_else(|| root().join(".venv/bin/python3"));
    assert!(p.exists(), "{} not found: run the tests with `make test`, which installs requirements-test.txt into .venv", p.display());
    let ok = Command::new(&p).args(["-c", "import classad2"]).output().expect("run python");
    assert!(
        ok.status.success(),
        "{} cannot import classad2 (PyPI package htcondor): run the tests with `make test`, which installs requirements-test.txt into .venv\n{}",
        p.display(),
        text(&ok.stderr)
    );
    p
}

/// Reads ad files with classad2 and prints what it evaluates, as JSON.
/// `file PATH`: the whole file as one ad, as HTCondor reads a sandbox ad.
/// `lines PATH`: each line on its own, to see which lines HTCondor can read at all.
/// `random PATH SEED`: write an ad of random values, printed as HTCondor prints them.
const ORACLE: &str = r#"
import json, random, sys
import classad2
from classad2 import ClassAd, ExprTree, ParserType, Value

def enc(v, scope):
    if isinstance(v, Value):  # an IntEnum: before int
        return {"undefined": True} if v == Value.Undefined else {"error": True}
    if isinstance(v, bool): return {"bool": v}
    if isinstance(v, int): return {"int": v}
    if isinstance(v, float): return {"real": repr(v)}
    if isinstance(v, str): return {"string": v}
    if isinstance(v, list):
        return {"list": [enc(x.eval(scope) if isinstance(x, ExprTree) else x, scope) for x in v]}
    if isinstance(v, ClassAd): return {"ad": {k: enc(v.eval(k), v) for k in v.keys()}}
    return {"other": repr(v)}

def read(text):
    try:
        return classad2.parseOne(text, ParserType.Old)
    except Exception:
        return ClassAd()

mode, path = sys.argv[1], sys.argv[2]
if mode == "file":
    ad = read(open(path, encoding="utf-8").read())
    print(json.dumps({k: enc(ad.eval(k), ad) for k in ad.keys()}))
elif mode == "lines":
    out = []
    for line in open(path, encoding="utf-8", newline="\n").read().split("\n"):
        ad = read(line)
        if len(ad) == 1:
            k = list(ad.keys())[0]
            out.append({"name": k, "value": enc(ad.eval(k), ad)})
        else:
            out.append(None)
    print(json.dumps(out))
elif mode == "random":
    rng = random.Random(int(sys.argv[3]))
    alphabet = ['"', '\\', ' ', '\t', 'a', 'Z', '0', '#', '/', '*', '{', '}', '[', ']', ';', ',', '=', 'é', '日', "'"]
    def s(): return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    def scalar():
        k = rng.randint(0, 5)
        if k == 0: return s()
        if k == 1: return rng.randint(-2**63, 2**63 - 1)
        if k == 2: return rng.choice([rng.uniform(-1e6, 1e6), rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300), 0.0, -0.0])
        if k == 3: return rng.random() < 0.5
        if k == 4: return rng.randint(-1000, 1000)
        return s()
    def value(depth):
        k = rng.randint(0, 9)
        if depth < 3 and k == 8: return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        if depth < 3 and k == 9: return ClassAd({"n%d" % i: value(depth + 1) for i in range(rng.randint(0, 4))})
        return scalar()
    ad = ClassAd()
    for i in range(400):
        ad["R%03d" % i] = value(0)
    lines = ad.printOld().splitlines()
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(sorted(lines, key=lambda l: l.encode())) + "\n")
    garbled = []
    for line in lines:
        back = read(line)
        # Read back, it must print as it was printed.
        if len(back) != 1 or back.printOld().rstrip("\n") != line:
            garbled.append(line.split(" = ", 1)[0])
    print(json.dumps(garbled))
"#;

fn oracle(args: &[&str]) -> Json {
    let out = Command::new(python()).arg("-c").arg(ORACLE).args(args).output().expect("run the classad2 oracle");
    assert!(out.status.success(), "classad2 oracle {args:?} failed:\n{}", text(&out.stderr));
    if out.stdout.is_empty() {
        return Json::Null;
    }
    serde_json::from_slice(&out.stdout).expect("oracle JSON")
}

fn ads_dir() -> PathBuf {
    root().join("fixtures/ads")
}

const FIXTURES: &[&str] = &["machine-a100.ad", "machine-mixed.ad", "machine-cuda.ad", "job.ad", "kitchen-sink.ad"];

/// baton's value in the oracle's JSON shape; `None` where baton left it unevaluated.
fn as_json(v: &Value) -> Option<Json> {
    use serde_json::json;
    Some(match v {
        Value::Undefined => json!({ "undefined": true }),
        Value::Error => json!({ "error": true }),
        Value::Bool(b) => json!({ "bool": b }),
        Value::Int(i) => json!({ "int": i }),
        Value::Real(r) => json!({ "real": r.to_string() }),
        Value::String(s) => json!({ "string": s }),
        Value::List(l) => json!({ "list": l.iter().map(as_json).collect::<Option<Vec<_>>>()? }),
        Value::Ad(a) => {
            let mut m = serde_json::Map::new();
            for attr in a.iter() {
                m.insert(attr.name.clone(), as_json(&a.eval(&attr.name)?)?);
            }
            json!({ "ad": m })
        }
        Value::Expr(_) => return None,
    })
}

/// Do baton's and classad2's values agree? Reals compare bit for bit (NaN with NaN).
fn agree(baton: &Json, htcondor: &Json) -> bool {
    match (baton, htcondor) {
        (Json::Object(b), Json::Object(h)) if b.contains_key("real") && h.contains_key("real") => {
            let parse = |v: &Json| v.as_str().and_then(|s| s.parse::<f64>().ok());
            match (parse(&b["real"]), parse(&h["real"])) {
                (Some(x), Some(y)) => (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits(),
                _ => false,
            }
        }
        (Json::Object(b), Json::Object(h)) => {
            b.len() == h.len()
                && b.iter().all(|(k, bv)| h.iter().find(|(hk, _)| hk.eq_ignore_ascii_case(k)).is_some_and(|(_, hv)| agree(bv, hv)))
        }
        (Json::Array(b), Json::Array(h)) => b.len() == h.len() && b.iter().zip(h).all(|(x, y)| agree(x, y)),
        _ => baton == htcondor,
    }
}

/// Compare a whole file: every attribute classad2 reads, baton reads the same, or
/// leaves unevaluated. Returns the names baton left unevaluated.
fn compare_file(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let (ad, errors) = classad::Ad::parse_bytes(&bytes);
    assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    let expected = oracle(&["file", path.to_str().unwrap()]);
    let expected = expected.as_object().unwrap();
    let lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(expected.len(), lines, "{}: classad2 did not read every line", path.display());
    assert_eq!(ad.len(), lines, "{}", path.display());
    let mut unevaluated = Vec::new();
    for (name, want) in expected {
        let got = ad.eval(name).unwrap_or_else(|| panic!("{}: baton has no {name}", path.display()));
        match as_json(&got) {
            Some(got) => assert!(agree(&got, want), "{}: {name}: baton read {got}, classad2 {want}", path.display()),
            None => unevaluated.push(name.clone()),
        }
    }
    unevaluated.sort();
    unevaluated
}

#[test]
fn fixtures_are_what_classad2_prints() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python()).arg(ads_dir().join("generate.py")).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in FIXTURES {
        let fresh = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(ads_dir().join(name)).unwrap();
        assert_eq!(
            fresh, committed,
            "fixtures/ads/{name} differs from what generate.py prints now; regenerate it (see fixtures/ads/README.md)"
        );
    }
}

#[test]
fn baton_reads_every_fixture_attribute_as_classad2_evaluates_it() {
    let unevaluated: Vec<(String, Vec<String>)> = FIXTURES.iter().map(|f| (f.to_string(), compare_file(&ads_dir().join(f)))).collect();
    // Only what is beyond the small evaluator (comparisons, TARGET., function calls)
    // is left unevaluated; everything else must have been compared above.
    let start = vec!["Start".to_string()];
    assert_eq!(
        unevaluated,
        [
            ("machine-a100.ad".into(), start.clone()),
            ("machine-mixed.ad".into(), start.clone()),
            ("machine-cuda.ad".into(), start),
            ("job.ad".into(), vec!["Requirements".to_string()]),
            ("kitchen-sink.ad".into(), vec!["XCall".into(), "XCompare".into(), "XTarget".into()]),
        ]
    );
    // Spot checks of what baton makes of them.
    let (sink, _) = classad::Ad::parse(&std::fs::read_to_string(ads_dir().join("kitchen-sink.ad")).unwrap());
    assert_eq!(sink.string("STrailingBackslash").as_deref(), Some("ends in \\"));
    assert_eq!(sink.string("SBackslashes").as_deref(), Some(r"C:\dir\file \\ twin \n not-a-newline"));
    assert_eq!(sink.int("EVacate"), Some(600));
    assert!(sink.real("RInf").unwrap().is_infinite());
    let (job, _) = classad::Ad::parse(&std::fs::read_to_string(ads_dir().join("job.ad")).unwrap());
    assert_eq!(job.string("Arguments").as_deref(), Some(r#"--data C:\data\ --name "resnet \"50\"" --glob *.pt"#));
}

/// One line each: what does classad2 make of it, and does baton agree? baton may
/// refuse a line classad2 reads only for the attributes in `allowed`.
fn compare_lines(path: &Path, allowed: &[String]) {
    let bytes = std::fs::read(path).unwrap();
    let (ad, errors) = classad::Ad::parse_bytes(&bytes);
    let expected = oracle(&["lines", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, want) in expected.as_array().unwrap().iter().enumerate() {
        let n = i + 1;
        let line = lines[i];
        let failed = errors.iter().find(|e| e.line == n);
        match (want.is_null(), failed) {
            (true, Some(_)) => {}
            (true, None) if line.trim().is_empty() => {}
            (true, None) => panic!("line {n} {line:?}: classad2 cannot read it, baton read it"),
            (false, Some(e)) => {
                let name = want["name"].as_str().unwrap_or_default();
                assert!(allowed.iter().any(|a| a == name), "line {n} {line:?}: classad2 reads {want}, baton refused it: {e}");
            }
            (false, None) => {
                let name = want["name"].as_str().unwrap();
                let got = ad.eval(name).unwrap_or_else(|| panic!("line {n}: baton has no {name}"));
                let got = as_json(&got).unwrap_or_else(|| panic!("line {n} {line:?}: baton left it unevaluated"));
                assert!(agree(&got, &want["value"]), "line {n} {line:?}: baton read {got}, classad2 {}", want["value"]);
            }
        }
    }
}

#[test]
fn random_values_printed_by_classad2_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("BATON_TEST_SEED").unwrap_or_else(|_| {
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_007).to_string()
    });
    eprintln!("random ad seed {seed} (replay with BATON_TEST_SEED={seed})");
    for (i, s) in [seed.as_str(), "1", "2"].iter().enumerate() {
        let path = dir.path().join(format!("random{i}.ad"));
        // HTCondor's printer writes a string ending in a backslash as `"...\"`, which
        // reads back as a literal quote unless it ends the line: a list or nested ad
        // holding one does not read back as printed, by HTCondor or by anyone. For
        // those lines (the oracle names them) classad2 reads garbage or nothing, and
        // baton may refuse them; every other line must read back identically.
        let garbled: Vec<String> = serde_json::from_value(oracle(&["random", path.to_str().unwrap(), s])).unwrap();
        compare_lines(&path, &garbled);
    }
}

#[test]
fn hostile_lines_are_refused_where_htcondor_refuses_them() {
    let lines = [
        "Good = 1",
        "S = \"unterminated",
        "S2 = \"a\\\"  ",
        "L = { \"a\\\" }",
        "F = 010",
        "G = 5.",
        "H = 1.5e",
        "D = { 1, 2",
        "N = [ a = 1; b = ",
        "J = [ x ]",
        "no equals here",
        "= 3",
        "Bin = \u{1}\u{2}\u{3}",
        "At = @",
        "Deep = [[[[[[[[[[",
        "Str = \"a\" \"b\"",
        "Junk = 1 )",
        "Pair = 1 2",
        "Under = 1_000",
        "Ok = \"fine\"",
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.ad");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    // classad2 reads a value out of these by ignoring what follows the first
    // expression; baton refuses them rather than guess.
    compare_lines(&path, &["Str", "Junk", "Pair", "Under"].map(String::from));
    let (ad, errors) = classad::Ad::parse_bytes(&std::fs::read(&path).unwrap());
    assert_eq!((ad.int("Good"), ad.string("Ok").as_deref()), (Some(1), Some("fine")));
    assert_eq!(errors.len(), lines.len() - 2, "{errors:?}");
}

// ---------------------------------------------------------------------------------
// `baton run` on sandboxes made of the fixtures

struct Sandbox {
    dir: tempfile::TempDir,
    store: tempfile::TempDir,
}

impl Sandbox {
    fn new(machine: Option<&str>, job: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        if let Some(m) = machine {
            std::fs::copy(ads_dir().join(m), dir.path().join(".machine.ad")).unwrap();
        }
        std::fs::copy(ads_dir().join(job), dir.path().join(".job.ad")).unwrap();
        Sandbox { dir, store: tempfile::tempdir().unwrap() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> &str {
        self.store.path().to_str().unwrap()
    }

    /// `baton run` as the starter would start it, with no --run-id.
    fn baton_run(&self, extra_env: &[(&str, &str)], script: &str) -> Output {
        let s = self.path();
        let mut c = baton();
        c.current_dir(s)
            .env("_CONDOR_SCRATCH_DIR", s)
            .env("_CONDOR_JOB_AD", s.join(".job.ad"))
            .env("_CONDOR_MACHINE_AD", s.join(".machine.ad"))
            .env_remove("CUDA_VISIBLE_DEVICES")
            .args(["run", "--store", self.store(), "--", "sh", "-c", script]);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn inspect(&self, run: &str) -> Json {
        let o = baton().args(["inspect", "--store", self.store(), run, "--json"]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

const RUN_ID: &str = "ap1.chtc.wisc.edu#1234.0#1700000000";

/// Exits with the checkpoint code (85, from the job ad) once, then prints what it was given.
const CHECKPOINT_ONCE: &str = r#"mkdir -p "$BATON_CHECKPOINT_DIR"
if [ -e "$BATON_CHECKPOINT_DIR/once" ]; then echo "$BATON_DEVICE|$BATON_RUN_ID|$BATON_RESTORED_SEQ"; exit 0; fi
echo step > "$BATON_CHECKPOINT_DIR/once"; exit 85"#;

#[test]
fn baton_run_takes_device_run_id_window_and_exit_code_from_the_ads() {
    for (machine, device, window) in [
        ("machine-a100.ad", "NVIDIA A100-SXM4-40GB", 600.0),
        ("machine-mixed.ad", "NVIDIA A100-SXM4-40GB + Tesla T4", 120.0),
        ("machine-cuda.ad", "Tesla V100-SXM2-32GB", 600.0),
    ] {
        let sb = Sandbox::new(Some(machine), "job.ad");
        let out = sb.baton_run(&[], CHECKPOINT_ONCE);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{machine}: {stderr}");
        // The restart after exit 85 saw the checkpoint taken at that exit.
        assert_eq!(stdout.trim(), format!("{device}|{RUN_ID}|1"), "{machine}: {stderr}");
        assert!(!stderr.contains("WARN"), "{machine}: the fixtures are clean, yet: {stderr}");
        let v = sb.inspect(RUN_ID);
        let start = &v["attempts"][0]["start"];
        assert_eq!(start["vacate_window_seconds"].as_f64(), Some(window), "{machine}: {v}");
        assert_eq!(start["vacate_window_source"], "machine ad MachineMaxVacateTime", "{machine}");
        assert_eq!(start["device"], device, "{machine}");
        assert_eq!(start["htcondor"]["num_job_starts"], 3, "{machine}: {start}");
        let reasons: Vec<&str> = v["checkpoints"].as_array().unwrap().iter().filter_map(|c| c["manifest"]["reason"].as_str()).collect();
        assert_eq!(reasons.len(), 2, "{machine}: a checkpoint at exit 85 and a final one: {v}");
    }
}

#[test]
fn a_missing_machine_ad_is_a_warning_and_the_device_comes_from_elsewhere() {
    let sb = Sandbox::new(None, "job.ad");
    let missing = sb.path().join(".machine.ad");
    let out = sb.baton_run(&[], "echo \"$BATON_DEVICE|$BATON_RUN_ID\"");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("cpu|{RUN_ID}"));
    assert!(stderr.contains("_CONDOR_MACHINE_AD") && stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("does not exist") && stderr.contains("continues without the machine ad"), "{stderr}");
    let start = &sb.inspect(RUN_ID)["attempts"][0]["start"];
    assert_eq!(start["vacate_window_seconds"].as_f64(), Some(30.0), "{start}");

    // With a GPU visible, nvidia-smi names it. This fake refuses HTCondor's short
    // UUID for -i (untested against a real nvidia-smi) and answers the full listing.
    let bin = tempfile::tempdir().unwrap();
    let smi = bin.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\ncase \"$*\" in *' -i '*) echo 'No devices were found' >&2; exit 6;; esac\n\
         echo '0, GPU-0b1c2d3e-1111-2222-3333-444455556666, Tesla T4, 15360, 7.5, 550.54.15'\n\
         echo '1, GPU-fd425f30-3936-73ad-2528-bd8348d2f942, NVIDIA L40S, 46068, 8.9, 550.54.15'\n",
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let sb = Sandbox::new(None, "job.ad");
    let out = sb.baton_run(&[("PATH", &path), ("CUDA_VISIBLE_DEVICES", "GPU-fd425f30")], "echo \"$BATON_DEVICE\"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "NVIDIA L40S");
}

#[test]
fn damaged_ads_are_warnings_naming_the_file_and_line() {
    let sb = Sandbox::new(Some("machine-a100.ad"), "job.ad");
    // A machine ad with junk between good lines, and a job ad without its ids.
    let machine = sb.path().join(".machine.ad");
    let mut bytes = b"\xff\xfe binary \x00 junk\nGPUs_DeviceName = \"unterminated\n".to_vec();
    bytes.extend(std::fs::read(&machine).unwrap());
    std::fs::write(&machine, bytes).unwrap();
    let job = sb.path().join(".job.ad");
    std::fs::write(&job, "Owner = \"alice\"\nSuccessCheckpointExitCode = 85\n").unwrap();
    let out = sb.baton_run(&[], "echo \"$BATON_DEVICE\"");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "no run id anywhere: {stderr}");
    assert!(stderr.contains("no run id"), "{stderr}");
    assert!(stderr.contains(&format!("{} (_CONDOR_JOB_AD) has neither", job.display())) && stderr.contains("--run-id"), "{stderr}");
    let m = machine.display().to_string();
    assert!(stderr.contains(&format!("{m} line 1: the line is not valid UTF-8")), "{stderr}");
    assert!(stderr.contains(&format!("{m} line 2 (GPUs_DeviceName): unterminated string")), "{stderr}");

    let o = baton()
        .current_dir(sb.path())
        .env("_CONDOR_JOB_AD", &job)
        .env("_CONDOR_MACHINE_AD", &machine)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .args(["run", "--store", sb.store(), "--run-id", "r1", "--", "sh", "-c", "echo \"$BATON_DEVICE\""])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "NVIDIA A100-SXM4-40GB", "the good lines still count");
    assert!(!text(&o.stderr).contains("cannot name the run"), "--run-id given, yet a run-id warning: {}", text(&o.stderr));
}
