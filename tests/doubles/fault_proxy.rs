//! fixtures/fault_proxy.py, the faulty network in front of moto that the torture suite's
//! R2 and R6 run baton through (tests/torture.rs): each fault it claims to inject must
//! reach a plain HTTP client as that fault, and with no fault it must be transparent.

use crate::common::fault_proxy::FaultProxy;
use crate::common::Moto;
use std::io::{Read, Write};
use std::net::TcpStream;

/// One request on a fresh connection: (status line, headers, body), or the I/O error.
fn request(port: u16, method: &str, path: &str, headers: &str, body: &[u8]) -> std::io::Result<(String, String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    // moto checks no signature, but answers object requests without one 403.
    let auth = "Authorization: AWS4-HMAC-SHA256 Credential=AKIATEST/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = vec![];
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    Ok((status.to_string(), headers.to_string(), raw[split + 4..].to_vec()))
}

fn content_length(headers: &str) -> usize {
    headers.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap()
}

#[test]
fn transparent_without_faults_and_each_fault_as_claimed() {
    let moto = Moto::start();
    moto.create_bucket("ckpt");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let clean = FaultProxy::start(&moto.endpoint(), &["--rate", "0"]);
    let (status, _, said) = request(clean.port, "PUT", "/ckpt/obj", "", &body).unwrap();
    assert!(status.contains(" 200"), "{status} {}", String::from_utf8_lossy(&said));
    let (status, headers, got) = request(clean.port, "GET", "/ckpt/obj", "", b"").unwrap();
    assert!(status.contains(" 200"), "{status}");
    assert_eq!((content_length(&headers), got), (body.len(), body.clone()));
    // HEAD: what moto answers, the same Content-Length, and no body.
    let (status, headers, got) = request(clean.port, "HEAD", "/ckpt/obj", "", b"").unwrap();
    let (direct_status, direct_headers, _) = request(moto.port, "HEAD", "/ckpt/obj", "", b"").unwrap();
    assert_eq!(status.split(' ').nth(1), direct_status.split(' ').nth(1));
    assert!(got.is_empty(), "{status}");
    assert_eq!(content_length(&headers), content_length(&direct_headers), "HEAD keeps the server's length");

    let only = |kind: &str| FaultProxy::start(&moto.endpoint(), &["--rate", "1", "--faults", kind, "--stall-seconds", "0.5"]);
    let p = only("5xx");
    let (status, _, got) = request(p.port, "GET", "/ckpt/obj", "", b"").unwrap();
    assert!(status.contains(" 503") || status.contains(" 500"), "{status}");
    assert!(String::from_utf8_lossy(&got).contains("<Code>"), "an S3 error body");
    for kind in ["reset", "stall"] {
        let p = only(kind);
        match request(p.port, "GET", "/ckpt/obj", "", b"") {
            Err(_) => {}
            Ok((s, _, _)) => panic!("{kind}: got an answer: {s}"),
        }
    }
    let p = only("truncate");
    match request(p.port, "GET", "/ckpt/obj", "", b"") {
        Err(_) => {}
        Ok((status, headers, got)) => {
            assert!(status.contains(" 200"), "{status}");
            assert!(got.len() < content_length(&headers), "truncate sent the whole body");
        }
    }
    let p = only("slow");
    let t0 = std::time::Instant::now();
    let (_, _, got) = request(p.port, "GET", "/ckpt/obj", "", b"").unwrap();
    assert_eq!(got, body);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(200), "slow was not slow");
    assert_eq!(p.stats()["faults"]["slow"], 1);

    // Create-only writes: moto refuses the second; through --strip-if-none-match it does not.
    let inm = "If-None-Match: *\r\n";
    let (status, _, _) = request(moto.port, "PUT", "/ckpt/once", inm, b"1").unwrap();
    assert!(status.contains(" 200"), "{status}");
    let (status, _, _) = request(moto.port, "PUT", "/ckpt/once", inm, b"2").unwrap();
    assert!(status.contains(" 412"), "moto itself honours If-None-Match: {status}");
    let p = FaultProxy::start(&moto.endpoint(), &["--rate", "0", "--strip-if-none-match"]);
    let (status, _, _) = request(p.port, "PUT", "/ckpt/once", inm, b"3").unwrap();
    assert!(status.contains(" 200"), "{status}");
    let (_, _, got) = request(moto.port, "GET", "/ckpt/once", "", b"").unwrap();
    assert_eq!(got, b"3");
}
