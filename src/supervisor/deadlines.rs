//! The vacate window's arithmetic: when the trainer is killed, when the flush stops and
//! when baton must be gone, all counted from the first eviction signal.

use std::time::{Duration, Instant};

/// The longest baton waits at exit for the last progress to reach the job ad.
pub const CHIRP_EXIT_WAIT: Duration = Duration::from_secs(1);

/// The deadlines of one eviction.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    since: Instant,
    window: Duration,
    trainer_share: f64,
}

impl Deadlines {
    /// `trainer_share` is the fraction of the window the command gets to save and exit.
    pub fn new(since: Instant, window: Duration, trainer_share: f64) -> Self {
        Deadlines { since, window, trainer_share }
    }

    /// When the eviction signal arrived.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// When the command's process group is killed if it has not exited.
    pub fn trainer(&self) -> Instant {
        self.since + self.window.mul_f64(self.trainer_share)
    }

    /// When baton must be gone: the end of the window less a margin (a tenth of it, at
    /// most 5 s), because HTCondor's hard kill does not wait for a late flush.
    pub fn exit(&self) -> Instant {
        let margin = (self.window / 10).min(Duration::from_secs(5));
        self.since + self.window - margin
    }

    /// When the flush must stop: a slice (a twentieth of the window, at most 1 s) before
    /// the exit deadline is kept for the attempt record.
    pub fn flush(&self) -> Instant {
        let allowance = (self.window / 20).min(Duration::from_secs(1));
        self.exit() - allowance
    }
}

/// How long writing the end record may take: never past the exit deadline (and at most
/// 10 s) during an eviction, 30 s otherwise, so bookkeeping never eats the window.
pub fn record_budget(exit: Option<Instant>, now: Instant) -> Duration {
    match exit {
        Some(d) => d.saturating_duration_since(now).min(Duration::from_secs(10)),
        None => Duration::from_secs(30),
    }
}

/// How long to wait for the last job-ad update at exit: best effort, and never past the
/// exit deadline.
pub fn chirp_budget(exit: Option<Instant>, now: Instant) -> Duration {
    exit.map(|d| d.saturating_duration_since(now)).unwrap_or(CHIRP_EXIT_WAIT).min(CHIRP_EXIT_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_trainer_gets_its_share_of_the_window() {
        let t0 = Instant::now();
        assert_eq!(Deadlines::new(t0, secs(30.0), 0.5).trainer(), t0 + secs(15.0));
        assert_eq!(Deadlines::new(t0, secs(30.0), 0.8).trainer(), t0 + secs(24.0));
        assert_eq!(Deadlines::new(t0, secs(30.0), 0.0).trainer(), t0);
        assert_eq!(Deadlines::new(t0, secs(30.0), 1.0).trainer(), t0 + secs(30.0));
    }

    #[test]
    fn exit_margin_is_a_tenth_of_the_window_at_most_five_seconds() {
        let t0 = Instant::now();
        assert_eq!(Deadlines::new(t0, secs(30.0), 0.5).exit(), t0 + secs(27.0));
        assert_eq!(Deadlines::new(t0, secs(10.0), 0.5).exit(), t0 + secs(9.0));
        assert_eq!(Deadlines::new(t0, secs(50.0), 0.5).exit(), t0 + secs(45.0));
        assert_eq!(Deadlines::new(t0, secs(300.0), 0.5).exit(), t0 + secs(295.0));
    }

    #[test]
    fn flush_stops_a_twentieth_of_the_window_at_most_one_second_before_exit() {
        let t0 = Instant::now();
        assert_eq!(Deadlines::new(t0, secs(10.0), 0.5).flush(), t0 + secs(8.5));
        assert_eq!(Deadlines::new(t0, secs(20.0), 0.5).flush(), t0 + secs(17.0));
        assert_eq!(Deadlines::new(t0, secs(30.0), 0.5).flush(), t0 + secs(26.0));
        assert_eq!(Deadlines::new(t0, secs(300.0), 0.5).flush(), t0 + secs(294.0));
    }

    #[test]
    fn an_empty_window_has_every_deadline_at_the_signal() {
        let t0 = Instant::now();
        let d = Deadlines::new(t0, Duration::ZERO, 0.5);
        assert_eq!((d.since(), d.trainer(), d.flush(), d.exit()), (t0, t0, t0, t0));
    }

    #[test]
    fn deadlines_come_in_order() {
        let t0 = Instant::now();
        for window in [1.0, 5.0, 30.0, 120.0, 3600.0] {
            let d = Deadlines::new(t0, secs(window), 0.5);
            assert!(d.since() <= d.trainer() && d.trainer() <= d.flush() && d.flush() <= d.exit(), "window {window}");
            assert!(d.exit() <= t0 + secs(window));
        }
    }

    #[test]
    fn the_end_record_never_outlives_the_exit_deadline() {
        let now = Instant::now();
        assert_eq!(record_budget(None, now), secs(30.0));
        assert_eq!(record_budget(Some(now + secs(3.0)), now), secs(3.0));
        assert_eq!(record_budget(Some(now + secs(60.0)), now), secs(10.0));
        assert_eq!(record_budget(Some(now), now + secs(1.0)), Duration::ZERO);
    }

    #[test]
    fn the_last_job_ad_update_waits_at_most_a_second_and_never_past_exit() {
        let now = Instant::now();
        assert_eq!(chirp_budget(None, now), CHIRP_EXIT_WAIT);
        assert_eq!(chirp_budget(Some(now + secs(60.0)), now), CHIRP_EXIT_WAIT);
        assert_eq!(chirp_budget(Some(now + secs(0.25)), now), secs(0.25));
        assert_eq!(chirp_budget(Some(now), now + secs(1.0)), Duration::ZERO);
    }
}
