//! Manifests come back from an untrusted store: arbitrary bytes through the same entry
//! point restore uses (`Manifest::from_store`). Never a panic; and whatever validates
//! must be restorable: every path stays inside the target directory, and the manifest
//! serializes and parses back to itself.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use baton::capture::join_inside;
use baton::chunking::MAX_CHUNK;
use baton::manifest::{Manifest, ManifestError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The name it is stored under, as restore passes it: a fixed one (mostly refused as
    // misplaced) and, when the bytes are JSON of the right shape, the one they claim.
    let _ = Manifest::from_store(data, "r", 1);
    let Ok(claimed) = serde_json::from_slice::<Manifest>(data) else { return };
    let m = match Manifest::from_store(data, &claimed.run_id, claimed.seq) {
        Ok(m) => m,
        Err(ManifestError::Misplaced { .. }) => panic!("refused as misplaced under the name it claims"),
        Err(_) => return,
    };
    check_restorable(&m);

    // Serialize -> parse gives the same manifest back.
    let bytes = m.to_bytes();
    let again = Manifest::from_store(&bytes, &m.run_id, m.seq).expect("a valid manifest's own bytes validate");
    assert_eq!(again, m, "serialize -> parse changed the manifest");
    assert_eq!(again.to_bytes(), bytes, "serialization is not stable");
});

/// What restore relies on once `validate` has passed.
fn check_restorable(m: &Manifest) {
    let root = Path::new("/restore/target");
    let mut seen = HashSet::new();
    for f in &m.files {
        let p = f.path.as_str();
        assert!(!p.is_empty() && !p.starts_with('/'), "{p:?}: absolute or empty");
        assert!(p.len() <= 4095, "{p:?}: longer than PATH_MAX");
        for part in p.split('/') {
            assert!(!part.is_empty() && part != "." && part != "..", "{p:?}: bad component {part:?}");
            assert!(part.len() <= 255, "{p:?}: component longer than NAME_MAX");
        }
        assert!(!p.chars().any(char::is_control), "{p:?}: control character");
        let joined = join_inside(root, p).unwrap_or_else(|| panic!("{p:?}: restore's join_inside refuses it"));
        assert!(joined.starts_with(root) && joined != root, "{p:?} joins to {}", joined.display());
        assert!(seen.insert(p), "{p:?}: listed twice");
        let mut total = 0u64;
        for c in &f.chunks {
            assert!(c.hash.len() == 64 && c.hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(c.size > 0 && c.size <= u64::from(MAX_CHUNK));
            total = total.checked_add(c.size).expect("chunk sizes overflow");
        }
        assert_eq!(total, f.size, "{p:?}: chunks do not add up to the size");
        assert!(f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
    // No file where restore must make a directory.
    for f in &m.files {
        let mut dir = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(part);
            assert!(!seen.contains(dir.as_str()), "{:?} lies under the file {dir:?}", f.path);
        }
    }
    let _ = m.logical_bytes();
    let _ = m.chunk_hashes().count();
}
