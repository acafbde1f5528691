//! How an attempt ended and what baton exits with, from how the command ended.

use crate::attempt::Ending;
use crate::error::ExitCode;
use crate::process::Exit;

/// The attempt's ending and baton's exit status. `evicted`: an eviction signal arrived
/// (before or after the command ended). `final_lost`: the command exited 0 but its final
/// checkpoint did not become durable, which makes a finished run a failed one: the next
/// attempt would start from older work.
pub fn decide(evicted: bool, exit: Exit, final_lost: bool) -> (Ending, i32) {
    match (evicted, exit) {
        (_, Exit::Code(0)) if final_lost => (Ending::BatonError, ExitCode::Checkpoint as i32),
        (true, _) => (Ending::Evicted, exit.status()),
        (false, Exit::Code(0)) => (Ending::Completed, 0),
        (false, Exit::Code(c)) => (Ending::Failed, c),
        (false, Exit::Signal(s)) => (Ending::Killed, 128 + s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGKILL: i32 = 9;
    const SIGTERM: i32 = 15;

    #[test]
    fn a_clean_exit_with_a_durable_final_checkpoint_completes() {
        assert_eq!(decide(false, Exit::Code(0), false), (Ending::Completed, 0));
    }

    #[test]
    fn a_lost_final_checkpoint_is_baton_s_failure() {
        assert_eq!(decide(false, Exit::Code(0), true), (Ending::BatonError, 72));
        // An eviction during the flush does not excuse it.
        assert_eq!(decide(true, Exit::Code(0), true), (Ending::BatonError, 72));
    }

    #[test]
    fn a_non_zero_exit_fails_with_the_command_s_code() {
        assert_eq!(decide(false, Exit::Code(1), false), (Ending::Failed, 1));
        assert_eq!(decide(false, Exit::Code(85), false), (Ending::Failed, 85));
    }

    #[test]
    fn a_signal_baton_did_not_send_is_a_kill() {
        assert_eq!(decide(false, Exit::Signal(SIGKILL), false), (Ending::Killed, 128 + SIGKILL));
    }

    #[test]
    fn an_eviction_passes_the_command_s_status_through() {
        assert_eq!(decide(true, Exit::Code(0), false), (Ending::Evicted, 0));
        assert_eq!(decide(true, Exit::Code(85), false), (Ending::Evicted, 85));
        assert_eq!(decide(true, Exit::Signal(SIGTERM), false), (Ending::Evicted, 128 + SIGTERM));
        assert_eq!(decide(true, Exit::Signal(SIGKILL), false), (Ending::Evicted, 128 + SIGKILL));
    }

    #[test]
    fn a_lost_final_checkpoint_only_counts_after_a_clean_exit() {
        assert_eq!(decide(false, Exit::Code(3), true), (Ending::Failed, 3));
        assert_eq!(decide(true, Exit::Signal(SIGTERM), true), (Ending::Evicted, 128 + SIGTERM));
    }
}
