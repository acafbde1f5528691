//! Which signals mean what to `baton run`, and when the first eviction signal arrived.
//!
//! Signals are delivered to the event loop as a stream (the loop acts, handlers only
//! record). The loop may be busy for a moment (copying a large checkpoint at commit
//! time), so a second, tiny handler stamps the arrival time of the first eviction
//! signal: the vacate window is counted from when HTCondor sent it, not from when the
//! loop got to it.

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Signals that mean "you are being evicted" (HTCondor's kill_sig is one of these).
pub const EVICTION: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];
pub use signal_hook::consts::SIGCHLD as CHILD;

static FIRST_EVICTION_NS: AtomicU64 = AtomicU64::new(0);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime is async-signal-safe and writes only into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64).max(1)
}

/// Install the handlers and return the stream of signals for the event loop.
pub fn install() -> std::io::Result<signal_hook_tokio::Signals> {
    for sig in EVICTION {
        // SAFETY: the action only reads the clock and stores into an atomic, both
        // async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, || {
                let _ = FIRST_EVICTION_NS.compare_exchange(0, monotonic_ns(), Ordering::SeqCst, Ordering::SeqCst);
            })?;
        }
    }
    signal_hook_tokio::Signals::new(EVICTION.iter().copied().chain([SIGCHLD]))
}

/// When the first eviction signal arrived, as an `Instant` (now, if none was stamped).
pub fn first_eviction() -> Instant {
    let at = FIRST_EVICTION_NS.load(Ordering::SeqCst);
    if at == 0 {
        return Instant::now();
    }
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(at));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// Die quietly on a closed pipe, as Unix tools do (Rust ignores SIGPIPE by default and
/// turns it into an error on every later write).
pub fn default_sigpipe() {
    // SAFETY: restoring the default disposition has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `baton commit` is part of the trainer's process group, so it receives the forwarded
/// eviction signal too; it must finish telling the supervisor about the checkpoint
/// rather than die halfway (the trainer would see a failed commit and lose it).
pub fn ignore_eviction_signals() {
    for sig in EVICTION {
        // SAFETY: setting a disposition to SIG_IGN has no memory effects.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}
