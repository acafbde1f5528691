//! RFC 3230 instance digests: after a transfer baton asks the server for the object's
//! crc32c (`Want-Digest: crc32c`) and compares it with its own. This is a transfer check
//! only; end-to-end integrity is baton's own sha256 of every chunk.

/// The request header value.
pub const WANT: &str = "crc32c";

pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The form servers send: 8 lowercase hex digits.
#[cfg(test)]
pub fn crc32c_hex(data: &[u8]) -> String {
    format!("{:08x}", crc32c(data))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch {
        ours: String,
        theirs: String,
    },
    /// The server sent no crc32c digest (no header, or only other algorithms).
    Absent,
}

/// The crc32c value in a `Digest:` header (`crc32c=e3069283, md5=...`), as a number.
pub fn crc32c_of_header(header: &str) -> Option<Result<u32, String>> {
    header.split(',').find_map(|part| {
        let (alg, value) = part.trim().split_once('=')?;
        if !alg.trim().eq_ignore_ascii_case("crc32c") {
            return None;
        }
        let v = value.trim().trim_matches('"');
        Some(u32::from_str_radix(v, 16).map_err(|_| v.chars().take(40).collect()))
    })
}

/// Compare what the server says with the bytes at hand.
pub fn check(header: Option<&str>, data: &[u8]) -> Verdict {
    let ours = crc32c(data);
    match header.and_then(crc32c_of_header) {
        None => Verdict::Absent,
        Some(Ok(theirs)) if theirs == ours => Verdict::Match,
        Some(Ok(theirs)) => Verdict::Mismatch { ours: format!("{ours:08x}"), theirs: format!("{theirs:08x}") },
        Some(Err(bad)) => Verdict::Mismatch { ours: format!("{ours:08x}"), theirs: format!("unparsable {bad:?}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_hex(b"123456789"), "e3069283");
        assert_eq!(crc32c_hex(b""), "00000000");
    }

    #[test]
    fn header_forms() {
        let data = b"123456789";
        assert_eq!(check(Some("crc32c=e3069283"), data), Verdict::Match);
        assert_eq!(check(Some("md5=abc==, CRC32C=E3069283"), data), Verdict::Match);
        assert_eq!(check(Some("crc32c=\"e3069283\""), data), Verdict::Match);
        assert_eq!(check(Some("md5=XrY7u+Ae7tCTyyK7j1rNww=="), data), Verdict::Absent);
        assert_eq!(check(None, data), Verdict::Absent);
        assert_eq!(check(Some("crc32c=00000001"), data), Verdict::Mismatch { ours: "e3069283".into(), theirs: "00000001".into() });
        assert!(matches!(check(Some("crc32c=zz"), data), Verdict::Mismatch { .. }));
        // Leading zeros may be dropped by some servers.
        assert_eq!(check(Some("crc32c=0"), b""), Verdict::Match);
    }
}
