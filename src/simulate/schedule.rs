//! When evictions happen: a fixed count or a mean interval (exponential inter-arrival,
//! as independent preemptions arrive), drawn from a seed, or read from a trace file.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The scheduler's soft kill (a signal), then SIGKILL when the vacate window ends.
    Soft,
    /// SIGKILL with no warning: the machine is gone.
    Hard,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Eviction {
    /// Seconds after the simulation starts.
    pub at: f64,
    pub kind: Kind,
}

/// A small, fast, seedable generator (xorshift64*), so a schedule is the same on every
/// machine for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

/// Upper bound on generated events for an open-ended schedule.
const MAX_EVENTS: usize = 10_000;

/// `count` evictions (or, with `None`, evictions until the command finishes), with
/// exponential inter-arrival times of mean `mean_interval` seconds; each is hard with
/// probability `hard_fraction`.
pub fn generate(seed: u64, count: Option<usize>, mean_interval: f64, hard_fraction: f64) -> Vec<Eviction> {
    let mut rng = Rng::new(seed);
    let mut t = 0.0;
    (0..count.unwrap_or(MAX_EVENTS))
        .map(|_| {
            t += rng.exponential(mean_interval);
            let kind = if rng.unit() < hard_fraction { Kind::Hard } else { Kind::Soft };
            Eviction { at: t, kind }
        })
        .collect()
}

/// A trace: one eviction per line, `<seconds> [soft|hard]`, `#` comments, blank lines.
pub fn parse_trace(text: &str) -> Result<Vec<Eviction>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let at_s = parts.next().unwrap_or("");
        let at: f64 = humantime::parse_duration(at_s)
            .map(|d| d.as_secs_f64())
            .or_else(|_| at_s.parse::<f64>())
            .map_err(|_| format!("line {}: {at_s:?} is not a time (write seconds like 12.5 or a duration like 2m)", i + 1))?;
        if !at.is_finite() || at < 0.0 {
            return Err(format!("line {}: the time must be zero or positive", i + 1));
        }
        let kind = match parts.next() {
            None | Some("soft") => Kind::Soft,
            Some("hard") => Kind::Hard,
            Some(other) => return Err(format!("line {}: {other:?} is not soft or hard", i + 1)),
        };
        if let Some(extra) = parts.next() {
            return Err(format!("line {}: unexpected {extra:?} (expected `<seconds> [soft|hard]`)", i + 1));
        }
        if out.last().is_some_and(|e: &Eviction| e.at > at) {
            return Err(format!("line {}: times must be in increasing order", i + 1));
        }
        out.push(Eviction { at, kind });
    }
    if out.is_empty() {
        return Err("no evictions in the trace (expected lines like `30 soft` or `1m hard`)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(generate(7, Some(5), 30.0, 0.3), generate(7, Some(5), 30.0, 0.3));
        assert_ne!(generate(7, Some(5), 30.0, 0.3), generate(8, Some(5), 30.0, 0.3));
    }

    #[test]
    fn intervals_have_the_requested_mean() {
        let s = generate(1, Some(10_000), 30.0, 0.25);
        let mean = s.last().unwrap().at / s.len() as f64;
        assert!((mean - 30.0).abs() < 1.5, "mean {mean}");
        let hard = s.iter().filter(|e| e.kind == Kind::Hard).count() as f64 / s.len() as f64;
        assert!((hard - 0.25).abs() < 0.02, "hard fraction {hard}");
        assert!(s.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn traces_parse_and_junk_is_refused() {
        let t = parse_trace("# a trace\n10 soft\n1m hard\n\n75.5\n").unwrap();
        assert_eq!(
            t,
            vec![Eviction { at: 10.0, kind: Kind::Soft }, Eviction { at: 60.0, kind: Kind::Hard }, Eviction { at: 75.5, kind: Kind::Soft },]
        );
        assert!(parse_trace("").unwrap_err().contains("no evictions"));
        assert!(parse_trace("PK\u{3}\u{4}binary").unwrap_err().contains("not a time"));
        assert!(parse_trace("10 gentle").unwrap_err().contains("not soft or hard"));
        assert!(parse_trace("20\n10").unwrap_err().contains("increasing"));
        assert!(parse_trace("-5").is_err());
    }
}
