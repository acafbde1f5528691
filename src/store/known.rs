//! The chunks this process knows are durable in the store, shared by restore (every
//! chunk it read whole) and upload (every chunk it wrote or found), so that an upload
//! can skip even the existence check for them.
//!
//! Knowledge goes stale: `baton prune` deletes chunks that no manifest references and
//! that are older than its grace period (default 1 h). A long-running `baton run` that
//! trusted its memory for hours committed manifests naming chunks a prune had deleted
//! meanwhile. So an entry is trusted for `TRUST` only, well inside the default grace,
//! and the store is asked again after that.
//!
//! It also holds the chunks this process found damaged in the store (restore's
//! fallback read them and they did not match their hash): an upload of the same bytes
//! must write them again, not reuse the damaged object, or the damage spreads into every
//! later checkpoint that holds those bytes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a chunk seen in the store is taken to be there without asking again.
pub const TRUST: Duration = Duration::from_secs(10 * 60);
/// File layouts remembered at most (a few hundred bytes each for a checkpoint's files).
pub const MAX_LAYOUTS: usize = 10_000;

#[derive(Clone)]
pub struct KnownChunks {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    damaged: Arc<Mutex<HashSet<String>>>,
    /// Chunks this process wrote a good copy of, over or beside a damaged one: the
    /// store's markers for them are answered (see `store::damage`).
    repaired: Arc<Mutex<HashSet<String>>>,
    /// How this process last stored each file path (`chunking::Layout`): the next
    /// capture of the file is cut with it as a hint. Knowledge of the file's bytes, not
    /// of the store: a chunk the hint recognises is still looked up here and in the
    /// store like any other.
    layouts: Arc<Mutex<HashMap<String, Arc<crate::chunking::Layout>>>>,
    trust: Duration,
}

impl Default for KnownChunks {
    fn default() -> Self {
        KnownChunks::trusting_for(TRUST)
    }
}

impl KnownChunks {
    pub fn trusting_for(trust: Duration) -> Self {
        KnownChunks { seen: Arc::default(), damaged: Arc::default(), repaired: Arc::default(), layouts: Arc::default(), trust }
    }

    /// Seen in the store within the trust window.
    pub fn contains(&self, h: &str) -> bool {
        self.seen.lock().map(|s| s.get(h).is_some_and(|at| at.elapsed() < self.trust)).unwrap_or(false)
    }

    /// The chunk is in the store now.
    pub fn insert(&self, h: String) {
        if let Ok(mut d) = self.damaged.lock() {
            d.remove(&h);
        }
        if let Ok(mut s) = self.seen.lock() {
            s.insert(h, Instant::now());
        }
    }

    /// The stored object of this chunk did not hold its bytes.
    pub fn mark_damaged(&self, h: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.remove(h);
        }
        if let Ok(mut d) = self.damaged.lock() {
            d.insert(h.to_string());
        }
    }

    /// This process wrote a good copy of a damaged chunk.
    pub fn insert_repaired(&self, h: String) {
        if let Ok(mut r) = self.repaired.lock() {
            r.insert(h.clone());
        }
        self.insert(h);
    }

    /// How `path` was last stored by this process, if it was.
    pub fn layout(&self, path: &str) -> Option<Arc<crate::chunking::Layout>> {
        self.layouts.lock().ok().and_then(|l| l.get(path).cloned())
    }

    /// Remember how `path` was stored. Bounded: past [`MAX_LAYOUTS`] paths (a dataset of
    /// many files) nothing more is remembered, and the hint is only lost speed.
    pub fn remember_layout(&self, path: &str, layout: crate::chunking::Layout) {
        if let Ok(mut l) = self.layouts.lock() {
            if l.len() < MAX_LAYOUTS || l.contains_key(path) {
                l.insert(path.to_string(), Arc::new(layout));
            }
        }
    }

    pub fn was_repaired(&self, h: &str) -> bool {
        self.repaired.lock().map(|r| r.contains(h)).unwrap_or(false)
    }

    pub fn is_damaged(&self, h: &str) -> bool {
        self.damaged.lock().map(|d| d.contains(h)).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knowledge_expires_and_is_renewed_by_seeing_the_chunk_again() {
        let known = KnownChunks::trusting_for(Duration::from_millis(50));
        known.insert("a".into());
        assert!(known.contains("a") && !known.contains("b"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!known.contains("a"), "trusted past its window");
        known.insert("a".into());
        assert!(known.contains("a"));
    }

    #[test]
    fn a_damaged_chunk_is_not_known_until_written_again() {
        let known = KnownChunks::default();
        known.insert("a".into());
        known.mark_damaged("a");
        assert!(!known.contains("a") && known.is_damaged("a"));
        known.insert("a".into());
        assert!(known.contains("a") && !known.is_damaged("a"));
    }
}
