//! The Pelican client's errors, which are transient, and what the servers' error
//! answers say.

use reqwest::header::HeaderMap;
use std::time::Duration;

use crate::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not found{}", note(detail))]
    NotFound { path: String, detail: String },
    /// No usable token; the message says where baton looked and what to do.
    #[error("{0}")]
    Token(String),
    /// 401/403, explained (expired, missing scope, ...).
    #[error("{0}")]
    Denied(String),
    #[error("{what}: HTTP {status}{}", note(detail))]
    Http { what: String, status: u16, detail: String, retry_after: Option<Duration> },
    #[error("{what}: {detail}")]
    Connect { what: String, detail: String },
    /// Reset, truncated or stalled transfers.
    #[error("{what}: {detail}")]
    Transfer { what: String, detail: String },
    /// The server's digest disagrees with the bytes received.
    #[error("{what}: {detail}")]
    Integrity { what: String, detail: String },
    #[error("{what}: object is {size} bytes, more than the {limit} bytes baton accepts for it")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// An answer baton cannot use.
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
    /// What sits on the server is not what baton wrote, and origins refuse overwrites.
    #[error("{what}: {detail}")]
    Damaged { what: String, detail: String },
    #[error("{last} (gave up after {tries} tries in {secs:.1} s)")]
    GaveUp { tries: u32, secs: f64, last: Box<Error> },
}

pub(super) fn note(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Http { status, .. } if *status == 429 || (*status >= 500 && !matches!(status, 501 | 505 | 507)) => ErrorKind::Transient,
            // A digest mismatch after a transfer is a transfer that went wrong: the next
            // try (or another cache) can bring the right bytes.
            Error::Connect { .. } | Error::Transfer { .. } | Error::Integrity { .. } => ErrorKind::Transient,
            Error::NotFound { .. } | Error::TooLarge { .. } | Error::Damaged { .. } => ErrorKind::Integrity,
            // The retry budget is spent: a caller that retried again would multiply it.
            // What failed underneath is `last()`.
            Error::GaveUp { .. } => ErrorKind::Permanent,
            Error::Token(_) | Error::Denied(_) | Error::Http { .. } | Error::Protocol { .. } => ErrorKind::Permanent,
        }
    }
}

impl Error {
    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error under any "gave up after N tries".
    pub fn last(&self) -> &Error {
        match self {
            Error::GaveUp { last, .. } => last.last(),
            e => e,
        }
    }

    pub fn from_reqwest(what: &str, e: &reqwest::Error) -> Error {
        let detail = root_cause(e);
        let what = what.to_string();
        if detail.contains("certificate") {
            // Not transient: retrying does not make a certificate trusted.
            Error::Protocol {
                what,
                detail: format!("{detail}: the server's TLS certificate is not trusted; for a federation with a private CA, set SSL_CERT_FILE to its PEM bundle"),
            }
        } else if e.is_connect() {
            Error::Connect { what, detail }
        } else if e.is_timeout() {
            Error::Transfer { what, detail: format!("no data for too long ({detail})") }
        } else if e.is_builder() {
            Error::Protocol { what, detail }
        } else {
            Error::Transfer { what, detail }
        }
    }
}

pub(super) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string().chars().take(300).collect()
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Pelican).
pub(super) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The `msg` of a Pelican JSON error (`{"status":"error","msg":"..."}`), else the start of the body.
pub(super) fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.get("msg").or_else(|| v.get("message")).or_else(|| v.get("error")).and_then(|m| m.as_str()) {
            return m.chars().take(300).collect();
        }
    }
    String::from_utf8_lossy(body).split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn transient_or_not() {
        let http = |status| Error::Http { what: "x".into(), status, detail: String::new(), retry_after: None };
        for s in [429, 500, 502, 503, 504] {
            assert!(http(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 405, 412, 501, 507] {
            assert!(!http(s).is_transient(), "{s}");
        }
        assert!(Error::Integrity { what: "x".into(), detail: "y".into() }.is_transient());
        assert!(!Error::Token("t".into()).is_transient());
    }

    #[test]
    fn pelican_error_bodies_and_retry_after() {
        assert_eq!(error_message(br#"{"status":"error","msg":"No namespace found for path"}"#), "No namespace found for path");
        assert_eq!(error_message(b"<html>\n  oops </html>"), "<html> oops </html>");
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), None);
    }
}
