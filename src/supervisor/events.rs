//! The event loop's inputs: signals, commit requests, upload outcomes and deadlines,
//! each handed to the loop as one event to act on.

use futures::StreamExt;
use signal_hook_tokio::Signals;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::Interval;

use super::uploader::Done;
use crate::commit;
use crate::signals::CHILD as SIGCHLD;

/// How often the loop checks on the command even when no SIGCHLD came.
const TICK: Duration = Duration::from_millis(250);

/// While the command runs or drains.
pub enum Event {
    Eviction(i32),
    /// A child changed state: maybe the command, maybe a descendant to reap.
    Child,
    Commit(commit::Incoming),
    Upload(Done),
    /// The command overran its share of the vacate window.
    TrainerOverdue,
    /// The pause before an in-place restart is over.
    RestartDue,
    Tick,
}

/// While flushing: the command is gone, so no commits come.
pub enum FlushEvent {
    Eviction(i32),
    Child,
    Upload(Done),
    /// The flush deadline passed.
    Overdue,
}

pub struct Events {
    signals: Signals,
    commits: mpsc::Receiver<commit::Incoming>,
    uploads: mpsc::UnboundedReceiver<Done>,
    tick: Interval,
}

impl Events {
    pub fn new(signals: Signals, commits: mpsc::Receiver<commit::Incoming>, uploads: mpsc::UnboundedReceiver<Done>) -> Self {
        Events { signals, commits, uploads, tick: tokio::time::interval(TICK) }
    }

    /// The next event while the command runs; `trainer_deadline` when it is draining and
    /// has not been killed yet, `restart_at` when an in-place restart is pausing.
    pub async fn next(&mut self, trainer_deadline: Option<Instant>, restart_at: Option<Instant>) -> Event {
        tokio::select! {
            Some(sig) = self.signals.next() => if sig == SIGCHLD { Event::Child } else { Event::Eviction(sig) },
            Some(incoming) = self.commits.recv() => Event::Commit(incoming),
            Some(done) = self.uploads.recv() => Event::Upload(done),
            _ = expiry(trainer_deadline) => Event::TrainerOverdue,
            _ = expiry(restart_at) => Event::RestartDue,
            _ = self.tick.tick() => Event::Tick,
        }
    }

    /// The next event while flushing; `flush_deadline` during an eviction.
    pub async fn next_while_flushing(&mut self, flush_deadline: Option<Instant>) -> FlushEvent {
        tokio::select! {
            Some(done) = self.uploads.recv() => FlushEvent::Upload(done),
            Some(sig) = self.signals.next() => if sig == SIGCHLD { FlushEvent::Child } else { FlushEvent::Eviction(sig) },
            _ = expiry(flush_deadline) => FlushEvent::Overdue,
        }
    }
}

/// Completes at the deadline; never without one.
async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// An eviction signal that arrived before the command started (SIGCHLDs then are
/// from nothing of ours).
pub fn eviction_pending(signals: &mut Signals) -> Option<i32> {
    while let Some(Some(sig)) = futures::FutureExt::now_or_never(signals.next()) {
        if sig != SIGCHLD {
            return Some(sig);
        }
    }
    None
}
