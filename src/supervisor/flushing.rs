//! Flushing: the command is gone; what it committed is made durable before baton's
//! deadline.

use std::time::Instant;

use super::events::{Events, FlushEvent};
use super::{Supervisor, Timing};
use crate::chirp;
use crate::process;

impl Supervisor {
    /// Wait for the uploads still outstanding, until the flush deadline if evicted.
    pub(super) async fn flush(&mut self, events: &mut Events) -> Timing {
        let drain_seconds = self.deadlines().map(|d| d.since().elapsed().as_secs_f64());
        let start = Instant::now();
        let flushed_any = !self.ledger.outstanding().is_empty();
        while !self.ledger.outstanding().is_empty() {
            let deadline = self.flush_deadline();
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                tracing::info!(
                    "flushing {} checkpoint(s), {:.1} s left before the hard kill",
                    self.ledger.outstanding().len(),
                    left.as_secs_f64()
                );
            }
            match events.next_while_flushing(deadline).await {
                FlushEvent::Upload(done) => {
                    // A conflict found now is logged; it neither stops the flush nor
                    // changes the exit status.
                    if let Err(conflict) = self.on_upload_done(done) {
                        self.conflict.get_or_insert(conflict);
                    }
                }
                FlushEvent::Eviction(sig) => {
                    self.on_eviction_signal(sig);
                    process::reap(None);
                }
                FlushEvent::Child => {
                    process::reap(None);
                }
                FlushEvent::Overdue => {
                    tracing::error!(
                        "FLUSH INCOMPLETE: checkpoint(s) {:?} could not be made durable before the vacate deadline; the newest durable checkpoint stays the latest",
                        self.ledger.outstanding()
                    );
                    break;
                }
            }
        }
        let flush_seconds = start.elapsed().as_secs_f64();
        if let (Some(c), true) = (&self.chirp, flushed_any) {
            c.report(chirp::flush_attrs(flush_seconds));
        }
        if self.ledger.outstanding().is_empty() {
            let _ = std::fs::remove_dir_all(self.state_dir.join("staging"));
        }
        Timing { flush_seconds, drain_seconds }
    }
}
