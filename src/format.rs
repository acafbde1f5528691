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

/// A span of time for people: `0.42 s`, `12.3 s`, `4.5 min`, `3.1 h`.
pub fn seconds(s: f64) -> String {
    match s {
        s if !s.is_finite() => "unbounded".into(),
        s if s < 10.0 => format!("{s:.2} s"),
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
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
    fn spans_of_time_pick_their_unit() {
        assert_eq!(seconds(0.4242), "0.42 s");
        assert_eq!(seconds(75.0), "75.0 s");
        assert_eq!(seconds(270.0), "4.5 min");
        assert_eq!(seconds(3.0 * 3600.0), "3.0 h");
        assert_eq!(seconds(f64::INFINITY), "unbounded");
    }

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
