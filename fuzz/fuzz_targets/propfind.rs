//! WebDAV PROPFIND answers come from whatever server a federation points at: the
//! 207 Multi-Status parser, and the href and date parsers it uses, on arbitrary text.
//! Never a panic; every entry's path is decoded, without a trailing `/` or `//`.
#![no_main]

use baton::pelican::propfind::{href_path, parse, parse_http_date};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(entries) = parse(&text) {
        for e in &entries {
            check_path(&e.path);
        }
    }
    let (path, _) = href_path(&text);
    check_path(&path);
    if let Some(t) = parse_http_date(&text) {
        // Whatever it accepts is a time baton can do arithmetic on (listing ages).
        let _ = t.checked_sub(0);
    }
});

fn check_path(p: &str) {
    assert!(!p.ends_with('/'), "{p:?} ends with /");
    assert!(!p.contains("//"), "{p:?} has //");
}
