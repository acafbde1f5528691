//! The local Pelican federation (fixtures/pelican_federation.py) checked on its own, partly
//! with the real pelicanfs client: the Pelican backend's tests are only as good as this
//! double, so it must behave as the Pelican sources (https://github.com/PelicanPlatform/pelican,
//! v7.27 line) and the real client say.

use crate::common::pelican::Federation;

const RW: &str = "storage.read:/ storage.create:/ storage.modify:/";

/// Bytes that differ at every position (a shifted or truncated copy never compares equal).
fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// CRC-32C, bit by bit: independent of the double's table-driven one.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn put(fed: &Federation, token: &str, path: &str, body: &[u8]) -> u16 {
    let url = format!("{}{}?oss.asize={}", fed.origin, path, body.len());
    fed.request("PUT", &url, Some(token), &[], Some(body)).status
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn crc32c_reference_value() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn put_then_pelicanfs_lists_and_reads_it_back() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    let body = payload(300_000);
    assert_eq!(put(&fed, &token, "/test/runs/r1/chunks/ab/obj", &body), 201, "{}", fed.server_log());
    assert_eq!(put(&fed, &token, "/test/runs/r1/top.json", b"{}"), 201);
    assert_eq!(std::fs::read(fed.object_path("/test/runs/r1/chunks/ab/obj")).unwrap(), body);

    let tf = fed.token_file("storage.read:/", 600);
    let ls = fed.pelicanfs(Some(&tf), &["ls", "/test/runs/r1"]);
    assert!(ls.status.success(), "pelicanfs ls failed: {}\n{}", text(&ls.stderr), fed.server_log());
    assert_eq!(text(&ls.stdout), "/test/runs/r1/chunks/\n/test/runs/r1/top.json\n");

    let find = fed.pelicanfs(Some(&tf), &["find", "/test/runs"]);
    assert!(find.status.success(), "pelicanfs find failed: {}", text(&find.stderr));
    assert_eq!(text(&find.stdout), "/test/runs/r1/chunks/ab/obj\n/test/runs/r1/top.json\n");

    let cat = fed.pelicanfs(Some(&tf), &["cat", "/test/runs/r1/chunks/ab/obj"]);
    assert!(cat.status.success(), "pelicanfs cat failed: {}", text(&cat.stderr));
    assert!(cat.stdout == body, "pelicanfs read {} bytes, not the {} written", cat.stdout.len(), body.len());

    // pelicanfs went through discovery, the director and the cache, and no token was ever
    // in a URL.
    let log = fed.log();
    assert!(!log.contains(&token) && !log.contains("authz"), "a token leaked into a URL: {log}");
    let entries = fed.log_entries();
    let seen = |server: &str, method: &str, target: &str| {
        entries.iter().any(|e| e["server"] == server && e["method"] == method && e["target"].as_str().unwrap().starts_with(target))
    };
    assert!(seen("federation", "GET", "/.well-known/pelican-configuration"), "{log}");
    assert!(seen("federation", "PROPFIND", "/test/runs/r1"), "{log}");
    assert!(seen("origin", "PROPFIND", "/test/runs/r1/"), "{log}");
    assert!(seen("cache", "GET", "/test/runs/r1/chunks/ab/obj"), "{log}");
    // No token at all: pelicanfs is refused (401 at the origin), it does not get a listing.
    let anon = fed.pelicanfs(None, &["ls", "/test/runs/r1"]);
    assert!(!anon.status.success(), "listing without a token succeeded: {}", text(&anon.stdout));
}

#[test]
fn pelicanfs_upload_is_chunked_and_readable_at_the_origin() {
    let fed = Federation::start();
    let src = fed.dir.path().join("upload.bin");
    let body = payload(70_000);
    std::fs::write(&src, &body).unwrap();
    let tf = fed.token_file("storage.create:/up", 600);
    let out = fed.pelicanfs(Some(&tf), &["put", src.to_str().unwrap(), "/test/up/a/b.bin"]);
    assert!(out.status.success(), "pelicanfs put failed: {}\n{}", text(&out.stderr), fed.server_log());
    assert_eq!(std::fs::read(fed.object_path("/test/up/a/b.bin")).unwrap(), body);
    let put = fed.log_entries().into_iter().find(|e| e["method"] == "PUT").expect("no PUT logged");
    assert_eq!(put["server"], "origin");
    assert_eq!(put["status"], 201);
}

#[test]
fn director_redirects_like_pelican() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    let url = format!("{}/test/a/b", fed.federation);

    let get = fed.request("GET", &url, Some(&token), &[], None);
    assert_eq!(get.status, 307);
    assert_eq!(get.header("Location"), Some(format!("{}/test/a/b", fed.cache).as_str()));
    let link = get.header("Link").unwrap();
    let cache_at = link.find(&format!("<{}/test/a/b>; rel=\"duplicate\"; pri=1; depth=1", fed.cache));
    let origin_at = link.find(&format!("<{}/test/a/b>; rel=\"duplicate\"; pri=2; depth=1", fed.origin));
    assert!(cache_at.is_some() && origin_at.is_some(), "Link: {link}");
    assert_eq!(
        get.header("X-Pelican-Namespace"),
        Some(format!("namespace=/test, require-token=true, collections-url={}", fed.origin).as_str())
    );
    assert_eq!(get.header("X-Pelican-Authorization"), Some(format!("issuer={}", fed.federation).as_str()));
    assert!(get.header("Server").unwrap().starts_with("pelican/"));

    // Writes and listings go to the origin only; the query (oss.asize) goes along; the
    // token does not (no ?authz= by default).
    for verb in ["PUT", "DELETE", "PROPFIND"] {
        let r = fed.request(verb, &format!("{url}?oss.asize=3"), Some(&token), &[], if verb == "PUT" { Some(b"abc") } else { None });
        assert_eq!(r.status, 307, "{verb}");
        assert_eq!(r.header("Location"), Some(format!("{}/test/a/b?oss.asize=3", fed.origin).as_str()), "{verb}");
        let link = r.header("Link").unwrap();
        assert!(link.contains(&fed.origin) && !link.contains(&fed.cache), "{verb}: {link}");
    }
    // The explicit origin route, which pelicanfs uses for uploads.
    let r = fed.request("GET", &format!("{}/api/v1.0/director/origin/test/a/b", fed.federation), None, &[], None);
    assert_eq!(r.header("Location"), Some(format!("{}/test/a/b", fed.origin).as_str()));

    // JSON errors.
    let r = fed.request("POST", &url, Some(&token), &[], Some(b"x"));
    assert_eq!(r.status, 405);
    assert!(r.text().contains("\"status\": \"error\""), "{}", r.text());
    let r = fed.request("GET", &format!("{}/elsewhere/x", fed.federation), None, &[], None);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("\"msg\""), "{}", r.text());
    // A namespace matches whole path components.
    assert_eq!(fed.request("GET", &format!("{}/testing/x", fed.federation), None, &[], None).status, 404);
    // Discovery.
    let d = fed.request("GET", &format!("{}/.well-known/pelican-configuration", fed.federation), None, &[], None);
    let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(v["director_endpoint"], fed.federation.as_str());
    assert!(!fed.log().contains(&token));
}

#[test]
fn authz_in_location_is_a_switch() {
    let fed = Federation::start_with(&["--authz-in-location"]);
    let token = fed.mint_token(RW, 600);
    let r = fed.request("GET", &format!("{}/test/a", fed.federation), Some(&token), &[], None);
    assert_eq!(r.status, 307);
    let loc = r.header("Location").unwrap();
    assert!(loc.starts_with(&format!("{}/test/a?authz=", fed.cache)) && loc.contains(&token[..20]), "{loc}");
}

#[test]
fn objects_are_write_once() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    assert_eq!(put(&fed, &token, "/test/m/1.json", b"first"), 201);
    assert_eq!(put(&fed, &token, "/test/m/1.json", b"second"), 403);
    let url = format!("{}/test/m/1.json", fed.origin);
    let r = fed.request("PUT", &url, Some(&token), &[("If-None-Match", "*")], Some(b"third"));
    assert_eq!(r.status, 412);
    assert_eq!(std::fs::read(fed.object_path("/test/m/1.json")).unwrap(), b"first");
    // oss.asize must match the body.
    let r = fed.request("PUT", &format!("{}/test/m/2.json?oss.asize=99", fed.origin), Some(&token), &[], Some(b"short"));
    assert_eq!(r.status, 400);
    assert!(!fed.object_path("/test/m/2.json").exists());
    // Chunked bodies are accepted.
    let body = payload(200_000);
    let r = fed.request_chunked("PUT", &format!("{}/test/m/3.bin", fed.origin), Some(&token), &[], &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(std::fs::read(fed.object_path("/test/m/3.bin")).unwrap(), body);
}

#[test]
fn overwrite_needs_the_switch_and_storage_modify() {
    let fed = Federation::start_with(&["--allow-overwrite"]);
    let create = fed.mint_token("storage.read:/ storage.create:/", 600);
    let modify = fed.mint_token("storage.modify:/", 600);
    assert_eq!(put(&fed, &create, "/test/p", b"one"), 201);
    assert_eq!(put(&fed, &create, "/test/p", b"two"), 403, "storage.create must not modify");
    assert_eq!(put(&fed, &modify, "/test/p", b"two"), 200);
    assert_eq!(std::fs::read(fed.object_path("/test/p")).unwrap(), b"two");
}

#[test]
fn tokens_are_checked_for_scope_and_expiry() {
    let fed = Federation::start();
    let url = format!("{}/test/runs/x/obj", fed.origin);

    let none = fed.request("PUT", &url, None, &[], Some(b"data"));
    assert_eq!(none.status, 401);
    assert!(none.header("WWW-Authenticate").unwrap().starts_with("Bearer"));

    let read_only = fed.mint_token("storage.read:/", 600);
    let r = fed.request("PUT", &url, Some(&read_only), &[], Some(b"data"));
    assert_eq!(r.status, 403);
    assert!(r.text().contains("storage.create"), "{}", r.text());

    // Scope paths are relative to the namespace and match whole components.
    let other = fed.mint_token("storage.create:/runs/xy", 600);
    assert_eq!(fed.request("PUT", &url, Some(&other), &[], Some(b"data")).status, 403);
    let right = fed.mint_token("storage.create:/runs/x", 600);
    assert_eq!(fed.request("PUT", &url, Some(&right), &[], Some(b"data")).status, 201);

    let expired = fed.mint_token(RW, -30);
    let r = fed.request("GET", &url, Some(&expired), &[], None);
    assert_eq!(r.status, 401);
    assert!(r.text().contains("expired"), "{}", r.text());
    assert!(r.header("WWW-Authenticate").unwrap().contains("invalid_token"));

    // Reading needs storage.read, on the cache as on the origin; DELETE needs storage.modify.
    assert_eq!(fed.request("GET", &format!("{}/test/runs/x/obj", fed.cache), Some(&right), &[], None).status, 403);
    assert_eq!(fed.request("GET", &format!("{}/test/runs/x/obj", fed.cache), Some(&read_only), &[], None).status, 200);
    assert_eq!(fed.request("DELETE", &url, Some(&right), &[], None).status, 403);
    let modify = fed.mint_token("storage.modify:/", 600);
    assert_eq!(fed.request("DELETE", &url, Some(&modify), &[], None).status, 204);
    assert_eq!(fed.request("DELETE", &url, Some(&modify), &[], None).status, 404);
    // The cache is read-only.
    assert_eq!(fed.request("PUT", &format!("{}/test/runs/y", fed.cache), Some(&right), &[], Some(b"d")).status, 405);
}

#[test]
fn propfind_lists_one_level() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    for p in ["/test/d/x", "/test/d/y", "/test/d/sub/z"] {
        assert_eq!(put(&fed, &token, p, b"12345"), 201);
    }
    let url = format!("{}/test/d", fed.origin);
    let r = fed.request("PROPFIND", &url, Some(&token), &[("Depth", "1")], None);
    assert_eq!(r.status, 207);
    let xml = r.text();
    let hrefs: Vec<&str> = xml.split("<D:href>").skip(1).map(|s| s.split("</D:href>").next().unwrap()).collect();
    assert_eq!(hrefs, ["/test/d/", "/test/d/sub/", "/test/d/x", "/test/d/y"], "{xml}");
    assert!(xml.contains("<D:getcontentlength>5</D:getcontentlength>"), "{xml}");
    assert_eq!(xml.matches("<D:collection/>").count(), 2, "{xml}");

    let r = fed.request("PROPFIND", &format!("{url}/x"), Some(&token), &[("Depth", "0")], None);
    assert_eq!(r.status, 207);
    assert_eq!(r.text().matches("<D:response>").count(), 1);
    assert_eq!(fed.request("PROPFIND", &url, Some(&token), &[("Depth", "infinity")], None).status, 403);
    assert_eq!(fed.request("PROPFIND", &format!("{url}/nope"), Some(&token), &[("Depth", "1")], None).status, 404);
    assert_eq!(fed.request("PROPFIND", &url, None, &[("Depth", "1")], None).status, 401);
}

#[test]
fn range_and_digest() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    let body = payload(10_000);
    assert_eq!(put(&fed, &token, "/test/o", &body), 201);
    let url = format!("{}/test/o", fed.origin);
    let r = fed.request("GET", &url, Some(&token), &[("Range", "bytes=100-199")], None);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &body[100..200]);
    assert_eq!(r.header("Content-Range"), Some("bytes 100-199/10000"));
    let r = fed.request("GET", &url, Some(&token), &[("Range", "bytes=9990-")], None);
    assert_eq!(r.body, &body[9990..]);
    assert_eq!(fed.request("GET", &url, Some(&token), &[("Range", "bytes=10000-")], None).status, 416);

    let head = fed.request("HEAD", &url, Some(&token), &[("Want-Digest", "crc32c")], None);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Digest"), Some(format!("crc32c={:08x}", crc32c(&body)).as_str()));
    assert_eq!(head.header("Content-Length"), Some("10000"));
}

#[test]
fn faults_fire_then_disarm() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    let body = payload(50_000);
    assert_eq!(put(&fed, &token, "/test/f/obj", &body), 201);
    let url = format!("{}/test/f/obj", fed.cache);

    fed.set_fault(r#"{"kind": "truncate", "count": 1, "method": "GET", "path_contains": "/f/"}"#);
    let cut = fed.request("GET", &url, Some(&token), &[], None);
    assert_eq!(cut.status, 200);
    assert_eq!(cut.header("Content-Length"), Some("50000"));
    assert!(!cut.complete && cut.body.len() < body.len(), "truncate did not cut: {} bytes", cut.body.len());
    let whole = fed.request("GET", &url, Some(&token), &[], None);
    assert!(whole.complete && whole.body == body, "the fault fired twice");

    fed.set_fault(r#"{"kind": "429", "count": 2, "retry_after": 7}"#);
    for _ in 0..2 {
        let r = fed.request("GET", &url, Some(&token), &[], None);
        assert_eq!(r.status, 429);
        assert_eq!(r.header("Retry-After"), Some("7"));
    }
    assert_eq!(fed.request("GET", &url, Some(&token), &[], None).status, 200);

    fed.set_fault(r#"{"kind": "bad-digest"}"#);
    let good = format!("crc32c={:08x}", crc32c(&body));
    let r = fed.request("HEAD", &url, Some(&token), &[("Want-Digest", "crc32c")], None);
    assert_ne!(r.header("Digest"), Some(good.as_str()));
    let r = fed.request("HEAD", &url, Some(&token), &[("Want-Digest", "crc32c")], None);
    assert_eq!(r.header("Digest"), Some(good.as_str()));

    fed.set_fault(r#"{"kind": "director-429"}"#);
    let dir = format!("{}/test/f/obj", fed.federation);
    let r = fed.request("GET", &dir, None, &[], None);
    assert_eq!(r.status, 429);
    assert!(r.text().contains("\"status\": \"error\""));
    assert_eq!(fed.request("GET", &dir, None, &[], None).status, 307);

    fed.set_fault(r#"{"kind": "stall", "stall_seconds": 1.5, "server": "origin"}"#);
    let t = std::time::Instant::now();
    let r = fed.request("HEAD", &format!("{}/test/f/obj", fed.origin), Some(&token), &[], None);
    assert_eq!(r.status, 200);
    assert!(t.elapsed().as_secs_f64() >= 1.5, "no stall");

    fed.set_fault(r#"{"kind": "500", "count": 5}"#);
    fed.clear_faults();
    assert_eq!(fed.request("GET", &url, Some(&token), &[], None).status, 200);

    let faults: Vec<String> = fed.log_entries().iter().filter_map(|e| e["fault"].as_str().map(str::to_string)).collect();
    assert_eq!(faults, ["truncate", "429", "429", "bad-digest", "director-429", "stall"]);
}

/// `corrupt` stands for a cache holding a damaged copy: one byte differs, and the digest
/// the server sends is of what it sent, so the transfer check passes.
#[test]
fn a_corrupt_fault_serves_a_damaged_copy_with_a_matching_digest() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    let body = payload(20_000);
    assert_eq!(put(&fed, &token, "/test/c/obj", &body), 201);
    let url = format!("{}/test/c/obj", fed.cache);
    fed.set_fault(r#"{"kind": "corrupt", "server": "cache", "path_contains": "/c/"}"#);
    let r = fed.request("GET", &url, Some(&token), &[("Want-Digest", "crc32c")], None);
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    let differ: Vec<usize> = (0..body.len()).filter(|&i| r.body[i] != body[i]).collect();
    assert_eq!(differ, [body.len() / 2], "one byte flipped in the middle");
    assert_eq!(r.header("Digest"), Some(format!("crc32c={:08x}", crc32c(&r.body)).as_str()));
    // One shot, and the origin was never affected.
    let r = fed.request("GET", &url, Some(&token), &[], None);
    assert_eq!(r.body, body);
    assert_eq!(std::fs::read(fed.object_path("/test/c/obj")).unwrap(), body);
}

#[test]
fn paths_cannot_escape_the_export() {
    let fed = Federation::start();
    let token = fed.mint_token(RW, 600);
    std::fs::write(fed.dir.path().join("secret"), b"s").unwrap();
    for target in ["/test/../secret", "/test/%2e%2e/secret", "/test/a/../../secret"] {
        let r = fed.request("GET", &format!("{}{target}", fed.origin), Some(&token), &[], None);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
}
