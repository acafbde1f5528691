//! ClassAd files in the job's sandbox (`_CONDOR_JOB_AD`, `_CONDOR_MACHINE_AD`) may be
//! damaged: arbitrary bytes through the reader baton uses (`htcondor::Ad::read_checked`),
//! then every question baton asks of a job and a machine ad (run id, job ids, vacate
//! window, checkpoint exit code, the device from the GPU attributes), and every
//! attribute evaluated. Never a panic, and time and memory stay bounded (libFuzzer's
//! -timeout and -rss_limit_mb). A line that parses reads the same again from
//! `Name = <raw text>`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use baton::classad::{Ad, Value};
use baton::htcondor::{self, Sandbox};
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for every input.
fn ad_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        // No GPU from nvidia-smi: the device comes from the machine ad or is `cpu`.
        std::env::set_var("CUDA_VISIBLE_DEVICES", "-1");
        let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        dir.join(format!("baton-fuzz-classad-{}.ad", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = ad_file();
    std::fs::write(path, data).expect("write the ad file");
    let read = htcondor::Ad::read_checked(path).expect("read the ad file");
    for e in &read.errors {
        let _ = e.to_string();
    }
    // The same file as the job ad and as the machine ad.
    let sandbox = Sandbox { job: Some(read.ad.clone()), job_path: Some(path.clone()), machine: Some(read.ad), scratch: None };
    let _ = sandbox.run_id_problem();
    let _ = sandbox.job_ids();
    let _ = sandbox.run_id();
    let _ = sandbox.vacate_window();
    let _ = sandbox.checkpoint_exit_code();
    let _ = baton::device::detect_info(&sandbox);

    // Every attribute, through every getter, and nested ads and lists evaluated in turn.
    let (ad, _) = Ad::parse_bytes(data);
    walk(&ad, 0);

    // `raw` is the value's text as written: it reads back as the same value.
    for a in ad.iter() {
        let (again, errors) = Ad::parse(&format!("{} = {}", a.name, a.raw));
        assert!(errors.is_empty(), "{:?} = {:?}: {errors:?}", a.name, a.raw);
        let v = again.get(&a.name).expect("the attribute");
        assert_eq!(format!("{v:?}"), format!("{:?}", a.value), "{:?} = {:?}", a.name, a.raw);
    }
});

fn walk(ad: &Ad, depth: usize) {
    if depth > 4 {
        return;
    }
    for a in ad.iter() {
        let _ = ad.string(&a.name);
        let _ = ad.int(&a.name);
        let _ = ad.real(&a.name);
        let _ = ad.bool(&a.name);
        let _ = ad.raw(&a.name);
        if let Some(items) = ad.list(&a.name) {
            for v in &items {
                if let Value::Ad(inner) = v {
                    walk(inner, depth + 1);
                }
            }
        }
        if let Some(inner) = ad.ad(&a.name) {
            walk(&inner, depth + 1);
        }
    }
}
