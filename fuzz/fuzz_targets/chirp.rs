//! Chirp: what the starter's proxy sends back (the client reads reply lines out of a
//! byte stream and takes an integer code from each), and the request lines baton
//! writes for any name and value. The first input byte picks which.
#![no_main]

use baton::chirp::{check_name, encode_set_delayed, escape_arg, parse_reply, take_reply_line, ChirpValue, MAX_EXPR_BYTES};
use libfuzzer_sys::fuzz_target;

/// CHIRP_LINE_MAX, the longest request or reply line (chirp.rs's `LINE_MAX`).
const LINE_MAX: usize = 5120;
/// What one socket read adds to the buffer at most (chirp.rs reads 512 bytes at a time).
const READ: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 4 == 0 {
        return replies(rest);
    }
    // The name up to the first NUL, the value after it.
    let (name, value) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut word = [0u8; 8];
    let n = value.len().min(8);
    word[..n].copy_from_slice(&value[..n]);
    let value = match mode % 4 {
        1 => ChirpValue::Str(String::from_utf8_lossy(value).into_owned()),
        2 => ChirpValue::Real(f64::from_le_bytes(word)),
        _ => ChirpValue::Int(i64::from_le_bytes(word)),
    };
    request(name, value);
});

/// The proxy's bytes arrive in reads of up to 512 bytes (the first byte of each piece
/// says how many); every complete line is a reply to parse.
fn replies(mut data: &[u8]) {
    let mut buf = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let n = (usize::from(n) * 2 + 1).min(READ).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        data = &rest[n..];
        loop {
            match take_reply_line(&mut buf) {
                Ok(Some(line)) => {
                    assert!(!line.contains('\n'));
                    match parse_reply(&line) {
                        Ok(code) => assert_eq!(parse_reply(&format!("{code}\r")), Ok(code)),
                        Err(e) => assert!(e.starts_with("the Chirp proxy sent")),
                    }
                }
                Ok(None) => {
                    // The client reads again only while the buffer is within the limit.
                    assert!(buf.len() <= LINE_MAX && !buf.contains(&b'\n'));
                    break;
                }
                Err(_) => return, // over-long line: the client gives up on this proxy
            }
        }
    }
}

/// A request line for the name and value: one line, newline-terminated, within the
/// proxy's line limit when the name is one baton sends, and an expression the starter
/// accepts (at most 993 bytes once the Chirp escaping is undone).
fn request(name: &[u8], value: ChirpValue) {
    let name = String::from_utf8_lossy(name);
    let line = encode_set_delayed(&name, &value);
    assert!(line.ends_with('\n'));
    let body = &line[..line.len() - 1];
    if check_name(&name).is_err() {
        let _ = escape_arg(&name);
        return;
    }
    assert!(!body.contains(['\n', '\r']), "{line:?}");
    assert!(line.len() <= LINE_MAX, "{} bytes", line.len());
    let expr = body.strip_prefix("set_job_attr_delayed ").and_then(|r| r.strip_prefix(name.as_ref())).and_then(|r| r.strip_prefix(' '));
    let expr = expr.unwrap_or_else(|| panic!("{line:?}"));
    let unescaped = unescape(expr);
    assert!(unescaped.len() <= MAX_EXPR_BYTES, "{} bytes", unescaped.len());
    assert!(unescaped.bytes().all(|b| (0x20..0x7f).contains(&b)), "{unescaped:?}");
    if let ChirpValue::Str(_) = value {
        assert!(unescaped.starts_with('"') && unescaped.ends_with('"') && unescaped.len() >= 2);
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            assert!(!matches!(c, ' ' | '\t'), "unescaped separator in {s:?}");
            out.push(c);
        }
    }
    out
}
