//! How baton writes sizes, times and checkpoints for people: one place, so logs, the
//! CLI's tables and the simulation report agree.

use crate::manifest::Manifest;

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

fn scaled(n: u64) -> (f64, usize) {
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    (v, i)
}

/// `1.5 GiB`, `512 B`: for log lines.
pub fn bytes(n: u64) -> String {
    match scaled(n) {
        (_, 0) => format!("{n} B"),
        (v, i) => format!("{v:.1} {}", UNITS[i]),
    }
}

/// `1.5G`, `512B`: for table columns.
pub fn bytes_short(n: u64) -> String {
    match scaled(n) {
        (_, 0) => format!("{n}B"),
        (v, i) => format!("{v:.1}{}", &UNITS[i][..1]),
    }
}

/// Seconds since the Unix epoch as RFC 3339 (UTC, whole seconds).
pub fn time(unix: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `checkpoint 7 (epoch 3, step 1200)`.
pub fn checkpoint(m: &Manifest) -> String {
    let mut s = format!("checkpoint {}", m.seq);
    if let Some(e) = m.epoch {
        s.push_str(&format!(" (epoch {e}"));
        if let Some(st) = m.step {
            s.push_str(&format!(", step {st}"));
        }
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_the_same_in_logs_and_tables() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes_short(512), "512B");
        assert_eq!(bytes_short(3 << 29), "1.5G");
        assert_eq!(bytes_short(1 << 20), "1.0M");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0.0), "1970-01-01T00:00:00Z");
    }
}
