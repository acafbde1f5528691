//! `baton simulate` through the binary: real `baton run`s, real signals, simulated slots.

use crate::common::*;
use std::process::Command;

fn simulate(work: &std::path::Path, args: &[&str], trainer_args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let mut c = baton();
    c.current_dir(work)
        .args(["simulate", "--store", "store", "--work-dir", "sim", "--json"])
        .args(args)
        .arg("--")
        .args(["python3", trainer().to_str().unwrap()])
        .args(trainer_args);
    let out = c.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, v)
}

#[test]
fn seeded_soft_and_hard_evictions_over_three_slot_types_verify_pass() {
    let work = tempfile::tempdir().unwrap();
    let svg = work.path().join("t.svg");
    let (out, r) = simulate(
        work.path(),
        &[
            "--evictions",
            "3",
            "--mean-interval",
            "1.5s",
            "--hard-fraction",
            "0.4",
            "--seed",
            "11",
            "--slots",
            "a100-40gb,t4-16gb,l40s-48gb,cpu",
            "--vacate-window",
            "6s",
            "--verify",
            "--timeline",
            svg.to_str().unwrap(),
        ],
        TRAINER_ARGS,
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}\n{r}", out.status);
    assert_eq!(r["completed"], true);
    assert_eq!(r["verify"]["pass"], true, "{}", r["verify"]);
    assert!(r["verify"]["message"].as_str().unwrap().starts_with("PASS"));
    let attempts = r["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{r}");
    let t = &r["totals"];
    assert_eq!(t["evictions"].as_u64().unwrap() as usize, attempts.len() - 1);
    assert!(t["soft"].as_u64().unwrap() >= 1 && t["hard"].as_u64().unwrap() >= 1, "seed 11 draws both kinds: {t}");
    let goodput = t["goodput"].as_f64().unwrap();
    assert!(goodput > 0.0 && goodput <= 1.0, "{t}");
    // Devices come from the generated machine ads, so they change across attempts, and the
    // trainer saw the previous one.
    let devices: std::collections::BTreeSet<_> = attempts.iter().map(|a| a["device"].as_str().unwrap().to_string()).collect();
    assert!(devices.len() >= 2, "{devices:?}");
    let logs: String = std::fs::read_dir(work.path().join("sim"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("baton.log")).ok())
        .collect();
    assert!(logs.contains("prev_device="), "{logs}");
    assert!(logs.contains("from machine ad MachineMaxVacateTime"), "the window comes from the slot's ad: {logs}");
    // Slots the job left are emptied like a starter's scratch directory, logs and ads kept;
    // the slot it completed on keeps its checkpoint.
    let mut slots: Vec<_> = std::fs::read_dir(work.path().join("sim"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("slot-"))
        .collect();
    slots.sort();
    let last = slots.pop().unwrap();
    assert!(last.join("checkpoint").is_dir(), "{}", last.display());
    for slot in &slots {
        let left: std::collections::BTreeSet<_> =
            std::fs::read_dir(slot).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let kept: std::collections::BTreeSet<_> = ["baton.log", "stdout.log", ".job.ad", ".machine.ad"].map(String::from).into();
        assert_eq!(left, kept, "{}", slot.display());
    }

    // The picture: valid XML with one band per attempt, and a real renderer draws it.
    let check = Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as E; t = E.parse(sys.argv[1]); print(len([g for g in t.iter('{http://www.w3.org/2000/svg}g') if g.get('class') == 'attempt']))"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(check.status.success(), "not valid XML: {}", text(&check.stderr));
    assert_eq!(text(&check.stdout).trim(), attempts.len().to_string());
    let png = work.path().join("t.png");
    let render = Command::new("rsvg-convert")
        .arg(&svg)
        .arg("-o")
        .arg(&png)
        .output()
        .expect("rsvg-convert (librsvg2-bin) is installed by `make test`");
    assert!(render.status.success(), "{}", text(&render.stderr));
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let plan = |seed: &str| {
        let out = baton()
            .args(["simulate", "--plan-only", "--evictions", "6", "--mean-interval", "20s", "--hard-fraction", "0.5", "--seed", seed])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["schedule"]["events"].clone()
    };
    assert_eq!(plan("42"), plan("42"));
    assert_ne!(plan("42"), plan("43"));
    assert_eq!(plan("42").as_array().unwrap().len(), 6);
}

#[test]
fn a_trainer_that_forgets_to_restore_fails_verify() {
    let work = tempfile::tempdir().unwrap();
    let args = [TRAINER_ARGS, &["--bug", "forget-restore"]].concat();
    let (out, r) =
        simulate(work.path(), &["--evictions", "2", "--mean-interval", "1.5s", "--seed", "3", "--slots", "t4-16gb,cpu", "--verify"], &args);
    assert_eq!(out.status.code(), Some(71), "{}\n{r}", text(&out.stderr));
    let msg = r["verify"]["message"].as_str().unwrap();
    assert!(msg.starts_with("FAIL: first differing file"), "{msg}");
}

#[test]
fn bad_simulation_input_gets_one_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let trace = work.path().join("trace.txt");
    std::fs::write(&trace, b"\x89PNG\r\n\x1a\n\x00\x00binary").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--slots", ""], "slot list is empty"),
        (&["--slots", "a100-40gb,tpu-v4"], "unknown slot type \"tpu-v4\""),
        (&["--mean-interval=-5s"], "must be positive"),
        (&["--trace", trace.to_str().unwrap()], "not a trace"),
        (&["--trace", "/no/such/trace"], "cannot read the trace"),
    ];
    for (args, must_say) in cases {
        let out = baton().current_dir(work.path()).arg("simulate").args(args).args(["--", "true"]).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(must_say), "{args:?}: expected {must_say:?} in {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
}
