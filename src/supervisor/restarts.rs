//! In-place restarts after the checkpoint exit code, bounded. HTCondor's exit-85
//! trainers run for minutes between checkpoints; one that exits with the code again
//! moments after each start (a bug, or a code that means something else to it) is
//! restarted after growing pauses, then given up on, instead of thousands of times a
//! second, each time with a new manifest.

use std::time::Duration;

/// A command that exits with the checkpoint code sooner than this after its start made
/// no progress worth a restart at full speed.
pub const QUICK_RUN: Duration = Duration::from_secs(10);
/// Quick restarts in a row before baton gives up.
pub const MAX_QUICK_RESTARTS: u32 = 8;
/// The pause before the second quick restart in a row; it doubles up to `MAX_PAUSE`.
/// The first is immediate: one quick exit is normal (a trainer that restarts to pick up
/// a new setting, say).
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start the command again after this pause.
    Restart(Duration),
    /// Too many quick restarts in a row: stop.
    GiveUp { restarts: u32 },
}

#[derive(Debug, Default)]
pub struct Restarts {
    /// Quick restarts in a row.
    quick: u32,
}

impl Restarts {
    /// The command exited with the checkpoint exit code `ran` after it was started.
    pub fn after_exit(&mut self, ran: Duration) -> Next {
        self.quick = if ran >= QUICK_RUN { 0 } else { self.quick + 1 };
        if self.quick >= MAX_QUICK_RESTARTS {
            return Next::GiveUp { restarts: self.quick };
        }
        match self.quick {
            0 | 1 => Next::Restart(Duration::ZERO),
            k => Next::Restart(FIRST_PAUSE.saturating_mul(1 << (k - 2).min(16)).min(MAX_PAUSE)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(50);

    #[test]
    fn runs_of_real_work_restart_at_once() {
        let mut r = Restarts::default();
        for _ in 0..100 {
            assert_eq!(r.after_exit(QUICK_RUN), Next::Restart(Duration::ZERO));
        }
    }

    #[test]
    fn quick_exits_back_off_then_give_up() {
        let mut r = Restarts::default();
        let pauses: Vec<Next> = (0..MAX_QUICK_RESTARTS).map(|_| r.after_exit(QUICK)).collect();
        assert_eq!(pauses[0], Next::Restart(Duration::ZERO));
        assert_eq!(pauses[1], Next::Restart(Duration::from_millis(250)));
        assert_eq!(pauses[2], Next::Restart(Duration::from_millis(500)));
        assert_eq!(pauses[6], Next::Restart(MAX_PAUSE));
        assert_eq!(pauses[7], Next::GiveUp { restarts: MAX_QUICK_RESTARTS });
    }

    #[test]
    fn a_run_of_real_work_resets_the_count() {
        let mut r = Restarts::default();
        for _ in 0..MAX_QUICK_RESTARTS - 1 {
            r.after_exit(QUICK);
        }
        assert_eq!(r.after_exit(QUICK_RUN * 2), Next::Restart(Duration::ZERO));
        assert_eq!(r.after_exit(QUICK), Next::Restart(Duration::ZERO));
    }
}
