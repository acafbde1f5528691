//! `baton advise`, `simulate --interval-sweep` and the run overview of `baton inspect`,
//! through the binary.

use crate::common::*;
use std::path::Path;
use std::process::Command;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// The picture is valid XML with one band per attempt, and a real renderer draws it.
fn check_svg(svg: &Path, attempts: usize) {
    let check = Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as E; t = E.parse(sys.argv[1]); print(len([g for g in t.iter('{http://www.w3.org/2000/svg}g') if g.get('class') == 'attempt']))"])
        .arg(svg)
        .output()
        .unwrap();
    assert!(check.status.success(), "not valid XML: {}", text(&check.stderr));
    assert_eq!(text(&check.stdout).trim(), attempts.to_string());
    let png = svg.with_extension("png");
    let render = Command::new("rsvg-convert")
        .arg(svg)
        .arg("-o")
        .arg(&png)
        .output()
        .expect("rsvg-convert (librsvg2-bin) is installed by `make test`");
    assert!(render.status.success(), "{}", text(&render.stderr));
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

/// Hard evictions (no warning, so every one loses the work since the last checkpoint),
/// one every 2 s of running on average, and a checkpoint that costs the trainer a
/// measurable fraction of a second (1 MiB generated in Python, then `baton commit`). The
/// sweep measures goodput at four intervals a factor ~3 apart on the same schedule;
/// `baton advise` on the records of the best one must land within a factor 3 of it,
/// i.e. on it or a neighbour, and its 90% interval on the rate must hold the true one.
#[test]
fn advise_agrees_with_the_interval_sweep() {
    let work = tempfile::tempdir().unwrap();
    let mut c = baton();
    c.current_dir(work.path())
        .args(["simulate", "--store", "store", "--work-dir", "sim", "--json", "--slots", "cpu", "--seed", "7"])
        .args(["--mean-interval", "2s", "--hard-fraction", "1", "--interval-sweep", "0.1s,0.3s,1s,3s"])
        .arg("--")
        .args([
            "python3",
            trainer().to_str().unwrap(),
            "--epochs",
            "2",
            "--steps-per-epoch",
            "20",
            "--step-seconds",
            "0.05",
            "--blob-mb",
            "1",
        ]);
    let sweep = json_of(&c.output().unwrap());
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{sweep}");
    for p in points {
        assert_eq!(p["completed"], true, "{p}");
    }
    let best = sweep["best_interval_seconds"].as_f64().unwrap();
    let goodputs: Vec<f64> = points.iter().map(|p| p["totals"]["goodput"].as_f64().unwrap()).collect();
    // The curve has an inside: checkpointing every 0.1 s (mostly saving) or every 3 s
    // (longer than most attempts live) are both worse than the best.
    let best_goodput = goodputs.iter().cloned().fold(0.0, f64::max);
    assert!(goodputs[0] < best_goodput && goodputs[3] < best_goodput, "{goodputs:?}");
    let run = points.iter().find(|p| p["interval_seconds"].as_f64() == Some(best)).unwrap()["run_id"].as_str().unwrap().to_string();

    let out = baton().current_dir(work.path()).args(["advise", "--store", "store", &run, "--json"]).output().unwrap();
    let a = json_of(&out);
    let recommended = a["recommended_seconds"].as_f64().unwrap();
    assert!(recommended / best < 3.0 && best / recommended < 3.0, "advised {recommended} s, sweep's best {best} s: {a}");
    let m = &a["measured"];
    assert!(m["lossy_evictions"].as_u64().unwrap() >= 2 && m["lossy_evictions"] == m["evictions"], "all hard: {m}");
    assert_eq!(m["includes_trainer_save"], true, "{m}");
    let rate = &a["lossy_rate"];
    let (lo, hi) = (rate["low"].as_f64().unwrap(), rate["high"].as_f64().unwrap());
    assert!(lo < 0.5 && 0.5 < hi, "the true rate, 1 per 2 s, is outside the 90% interval: {rate}");
    let (short, long) = (a["range_seconds"][0].as_f64().unwrap(), a["range_seconds"][1].as_f64().unwrap());
    assert!(short < recommended && recommended < long, "{a}");

    // The text says the same, and `inspect RUN` carries the one-line summary.
    let out = baton().current_dir(work.path()).args(["advise", "--store", "store", &run]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains(&format!("recommended      {}", baton::format::seconds(recommended))), "{said}");
    let out = baton().current_dir(work.path()).args(["inspect", "--store", "store", &run]).output().unwrap();
    let said = text(&out.stdout);
    assert!(said.contains(&format!("interval advice: checkpoint every {}", baton::format::seconds(recommended))), "{said}");
}

const SHORT: &[&str] = &["--epochs", "2", "--steps-per-epoch", "10", "--step-seconds", "0.05", "--blob-mb", "1"];

fn run_to_completion(store: &str, run: &str, extra: &[&str]) {
    let slot = tempfile::tempdir().unwrap();
    let mut cmd = vec!["python3", trainer().to_str().unwrap()];
    cmd.extend_from_slice(SHORT);
    cmd.extend_from_slice(extra);
    let out = output_of(spawn_run(slot.path(), store, run, &[], &["--device", "cpu"], &cmd));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn inspect_lists_every_run_and_draws_one() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    // Run "evicted" is evicted once (the trainer saves on SIGTERM), then completes on a
    // new slot; run "straight" completes at once. Both end with the same weights, so
    // their final checkpoints share every chunk.
    run_with_evictions(s, "evicted", &[], SHORT, &[0.6]);
    run_to_completion(s, "straight", &[]);
    // Run "other" trains another model (another seed): nothing in common.
    run_to_completion(s, "other", &["--seed", "1"]);

    let v = json_of(&baton().args(["inspect", "--store", s, "--json"]).output().unwrap());
    let runs = v.as_array().unwrap();
    assert_eq!(runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect::<Vec<_>>(), ["evicted", "other", "straight"], "{v}");
    let (e, other, st) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(other["shared_bytes"], 0, "{other}");
    assert!(other["stored_bytes"].as_u64().unwrap() > 100_000, "{other}");
    assert_eq!((e["attempts"].as_u64(), e["evictions"].as_u64()), (Some(2), Some(1)), "{e}");
    assert_eq!((st["attempts"].as_u64(), st["evictions"].as_u64()), (Some(1), Some(0)), "{st}");
    for r in [e, st] {
        assert_eq!(r["latest_reason"], "final", "{r}");
        assert!(r["checkpoints"].as_u64().unwrap() >= 2 && r["latest_seq"] == r["checkpoints"], "{r}");
        let g = r["goodput"].as_f64().unwrap();
        assert!(g > 0.0 && g <= 1.0, "{r}");
        assert!(r["devices"].as_array().unwrap().iter().all(|d| !d.as_str().unwrap().is_empty()), "{r}");
        let stored = r["stored_bytes"].as_u64().unwrap();
        assert!(stored > 100_000, "a 1 MiB blob of floats stays large compressed: {r}");
        assert_eq!(r["shared_bytes"].as_u64().unwrap(), stored, "the same final state in both runs: {r}");
        assert!(r["manifest_bytes"].as_u64().unwrap() > 0);
    }
    // The evicted run lost less than it trained.
    assert!(e["goodput"].as_f64().unwrap() > 0.3, "{e}");

    let out = baton().args(["inspect", "--store", s]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].starts_with("RUN") && lines[0].contains("EVICTIONS") && lines[0].contains("GOODPUT") && lines[0].contains("SHARED"),
        "{t}"
    );
    assert!(lines[1].starts_with("evicted ") && lines[1].contains("final") && lines[3].starts_with("straight "), "{t}");

    let svg = store.path().join("evicted.svg");
    let out = baton().args(["inspect", "--store", s, "evicted", "--timeline", svg.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    check_svg(&svg, 2);
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.contains("class=\"eviction\"") && picture.contains("class=\"checkpoint\""), "{picture}");
}

/// Copy every file of run `from` into run `to` (the run id inside the records too).
fn copy_run(runs: &Path, from: &str, to: &str) {
    for sub in ["checkpoints", "attempts"] {
        let dst = runs.join(to).join(sub);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(runs.join(from).join(sub)).unwrap() {
            let e = e.unwrap();
            let body = std::fs::read_to_string(e.path()).unwrap();
            std::fs::write(dst.join(e.file_name()), body.replace(&format!("\"run_id\": \"{from}\""), &format!("\"run_id\": \"{to}\"")))
                .unwrap();
        }
    }
}

#[test]
fn inspect_lists_five_hundred_runs_quickly() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let slot = tempfile::tempdir().unwrap();
    let cmd = ["python3", trainer().to_str().unwrap(), "--epochs", "2", "--steps-per-epoch", "2", "--step-seconds", "0", "--blob-mb", "1"];
    let out = output_of(spawn_run(slot.path(), s, "seed-run", &[], &["--device", "cpu"], &cmd));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = store.path().join("runs");
    for i in 0..499 {
        copy_run(&runs, "seed-run", &format!("r{i:03}"));
    }
    // One run's newest manifest is damaged: the overview says so and falls back to the
    // one before for its progress.
    let damaged = runs.join("r250/checkpoints/0000000002.json");
    std::fs::write(&damaged, b"{ not a manifest").unwrap();

    let start = std::time::Instant::now();
    let out = baton().env("BATON_LOG", "baton=debug").args(["inspect", "--store", s, "--json"]).output().unwrap();
    let took = start.elapsed();
    let v = json_of(&out);
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 500);
    assert!(runs.iter().all(|r| r["attempts"] == 1 && r["checkpoints"] == 2 && r["latest_seq"] == 2), "{}", runs[0]);
    let r250 = runs.iter().find(|r| r["run_id"] == "r250").unwrap();
    assert!(r250["latest_error"].as_str().unwrap().contains("checkpoint 2"), "{r250}");
    assert_eq!(r250["epoch"], 1, "progress from checkpoint 1: {r250}");
    assert!(runs.iter().filter(|r| r["run_id"] != "r250").all(|r| r["latest_reason"] == "final" && r.get("latest_error").is_none()));
    // Every run's newest checkpoint is the same state: all of it shared.
    assert!(runs.iter().filter(|r| r["run_id"] != "r250").all(|r| r["shared_bytes"] == r["stored_bytes"]));
    // Two listings, then per run the newest manifest and the two attempt records: no
    // run's older manifests (one more read for r250, whose newest is damaged).
    let err = text(&out.stderr);
    assert!(err.contains("overview of 500 runs: 2 listings") && err.contains(" 1501 reads,"), "{err}");
    eprintln!("inspect of 500 runs: {took:?}");
    assert!(took.as_secs() < 60, "{took:?}");
}
