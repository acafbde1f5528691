//! Whose CPU comes first. While the command trains, baton's uploads (reading, cutting,
//! hashing, compressing, writing a directory store) run on threads of a lower priority,
//! so the training loop and its data loaders come first and the uploads take what is
//! left. Restores, and the flush once the command is evicted or has ended, run at normal
//! priority: the next attempt or the vacate deadline is waiting on them.
//!
//! A thread cannot raise its priority again without privileges (RLIMIT_NICE is 0 on most
//! execute points), so there are two pools: tokio's blocking pool at normal priority, and
//! a second pool whose threads lower their own priority when they start. Work picks its
//! pool when it is handed out, a chunk at a time, so an eviction that arrives in the
//! middle of a file has the rest of that file read, hashed and compressed at normal
//! priority; only the pieces already running finish where they are.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// How far the background pool's threads lower their priority (added to the process's
/// nice value); 0 while nothing is in the background.
static BACKGROUND: AtomicI32 = AtomicI32::new(0);
/// Built on first use, with the nice value of that moment, and kept for the process's life.
static POOL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();

/// The command is training: CPU work handed out from now on runs at `nice` (1-19; 0 keeps
/// everything at normal priority).
pub fn background(nice: i32) {
    BACKGROUND.store(nice.clamp(0, 19), Ordering::SeqCst);
}

/// The command is evicted or gone: CPU work handed out from now on runs at normal priority.
pub fn foreground() {
    BACKGROUND.store(0, Ordering::SeqCst);
}

/// Run CPU-bound `f` off the async threads, on the pool of the current priority.
pub async fn run<F, R>(f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match background_pool() {
        Some(pool) => pool.spawn_blocking(f).await,
        None => tokio::task::spawn_blocking(f).await,
    }
}

fn background_pool() -> Option<&'static tokio::runtime::Runtime> {
    let nice = BACKGROUND.load(Ordering::SeqCst);
    if nice == 0 {
        return None;
    }
    let pool = POOL.get_or_init(|| {
        let built = tokio::runtime::Builder::new_current_thread()
            .thread_name("baton-background")
            .on_thread_start(move || lower_this_thread(nice))
            .build();
        match built {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!("no background pool ({e}); uploads run at normal priority");
                None
            }
        }
    });
    pool.as_ref()
}

/// Lower the calling thread's priority by `by` (Linux's nice value is per thread; an
/// execute point may already run the job niced, so this adds to what the thread has).
fn lower_this_thread(by: i32) {
    let tid = nix::unistd::gettid().as_raw();
    let nice = (this_thread_nice() + by).min(19);
    // SAFETY: setpriority has no memory effects; the tid is this thread's own.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        tracing::debug!("could not lower a background thread to nice {nice}: {}", std::io::Error::last_os_error());
    }
}

/// The calling thread's nice value.
fn this_thread_nice() -> i32 {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: as above; -1 is a valid answer, so errno is the only error sign, and this is
    // only read where the call cannot fail (the thread's own tid).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test owns the process-wide mode: tests run in threads of one process.
    #[tokio::test]
    async fn background_work_runs_niced_and_foreground_work_does_not() {
        let base = this_thread_nice();
        background(7);
        let bg = run(this_thread_nice).await.unwrap();
        foreground();
        let fg = run(this_thread_nice).await.unwrap();
        assert_eq!(bg, (base + 7).min(19), "a background thread lowers its priority");
        assert_eq!(fg, base, "foreground work stays at the process's priority");
    }
}
