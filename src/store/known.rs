//! The set of chunks this process knows are durable in the store, shared by restore
//! (every chunk it read whole) and upload (every chunk it wrote or found), so that an
//! upload can skip even the existence check for them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Chunks this process knows are durable in the store: skip even the HEAD for them.
#[derive(Default, Clone)]
pub struct KnownChunks(Arc<Mutex<HashSet<String>>>);

impl KnownChunks {
    pub fn contains(&self, h: &str) -> bool {
        self.0.lock().map(|s| s.contains(h)).unwrap_or(false)
    }
    pub fn insert(&self, h: String) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(h);
        }
    }
}
