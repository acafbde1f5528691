//! Store URLs as users write them (`--store`, `BATON_STORE`, submit files): the store
//! URL parser and the Pelican URL parser on arbitrary text. Never a panic; what parses
//! keeps the invariants the backends rely on, and its Display form parses back to the
//! same URL (the simulator hands `to_string()` to the `baton run` it starts).
#![no_main]

use baton::pelican::url::{PelicanUrl, Scheme};
use baton::store::StoreUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(u) = PelicanUrl::parse(s) {
        check_pelican(&u);
        assert!(PelicanUrl::is_pelican(s), "{s:?} parses but is not routed to Pelican");
        let shown = u.to_string();
        assert_eq!(PelicanUrl::parse(&shown).as_ref(), Ok(&u), "{s:?} -> {shown:?}");
        let _ = u.federation_base();
    }
    let Ok(u) = StoreUrl::parse(s) else { return };
    match &u {
        StoreUrl::Dir(p) => assert!(!p.as_os_str().is_empty()),
        StoreUrl::S3 { bucket, prefix } => {
            assert!(!bucket.is_empty() && !bucket.contains('/'), "{s:?}: bucket {bucket:?}");
            assert!(!prefix.starts_with('/') && !prefix.ends_with('/'), "{s:?}: prefix {prefix:?}");
            assert!(prefix.is_empty() || prefix.split('/').all(|p| p != "." && p != ".."), "{s:?}: prefix {prefix:?}");
        }
        StoreUrl::Pelican(p) => check_pelican(p),
    }
    let shown = u.to_string();
    assert_eq!(StoreUrl::parse(&shown).as_ref(), Ok(&u), "{s:?} -> {shown:?}");
});

fn check_pelican(u: &PelicanUrl) {
    assert!(!u.host.is_empty() && !u.host.contains(['/', '@', '?', '#']), "host {:?}", u.host);
    assert!(u.path.starts_with('/') && !u.path.ends_with('/') && u.path.len() > 1, "path {:?}", u.path);
    for part in u.path[1..].split('/') {
        assert!(!part.is_empty() && part != "." && part != "..", "path {:?}", u.path);
        assert!(!part.chars().any(char::is_control), "path {:?}", u.path);
    }
    if u.scheme != Scheme::Pelican {
        assert_eq!(u.host, baton::pelican::url::OSDF_HOST);
    }
    if let Some(n) = &u.token_name {
        assert!(!n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    }
}
