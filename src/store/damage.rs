//! Damaged chunks: what any baton process found broken in the store, shared through the
//! store itself, and where a good copy of a damaged chunk goes.
//!
//! A chunk is named by its content, so every later checkpoint holding the same bytes
//! names the same object: a damaged object, once reused, spreads into all of them. Any
//! reader that finds a chunk damaged (restore, a run's fallback, `verify`) leaves a
//! marker, `damaged/<hash>`, and every upload lists the markers before it reuses
//! anything: a marked chunk is written again, never reused.
//!
//! Where the good copy goes depends on the backend:
//! - a store that overwrites (directory, S3) gets it in place, over the damaged object,
//!   and the marker is removed: readers need to know nothing;
//! - a write-once store (a Pelican origin refuses overwrites) gets it beside the damaged
//!   object, as copy `chunks/<xx>/<hash>.<n>` (n = 1, 2, ...). A marker
//!   `damaged/<hash>.<n>` condemns copy n in turn. Readers that find the object under the
//!   plain name damaged (or gone) try the copies in order.

use bytes::Bytes;
use std::collections::BTreeSet;

use super::{chunk_key, PutOutcome, Result, Store};
use crate::error::{Classify, ErrorKind};

/// Copies of one chunk a write-once store may hold beside the first: enough for damage
/// that strikes the same chunk again and again, few enough to bound a reader's search.
pub const MAX_COPIES: u32 = 16;

const MARKERS: &str = "damaged/";

/// The key of copy `copy` of a chunk: copy 0 is the chunk's own name.
pub(crate) fn copy_key(hash: &str, copy: u32) -> String {
    match copy {
        0 => chunk_key(hash),
        n => format!("{}.{n}", chunk_key(hash)),
    }
}

fn marker_key(hash: &str, copy: u32) -> String {
    match copy {
        0 => format!("{MARKERS}{hash}"),
        n => format!("{MARKERS}{hash}.{n}"),
    }
}

/// (hash, copy) for `<hash>` or `<hash>.<n>`, only in the forms baton writes.
pub fn parse_copy_name(name: &str) -> Option<(&str, u32)> {
    let (hash, copy) = match name.split_once('.') {
        None => (name, 0),
        Some((hash, n)) => {
            let copy: u32 = n.parse().ok()?;
            if copy == 0 || copy > MAX_COPIES || n != copy.to_string() {
                return None;
            }
            (hash, copy)
        }
    };
    (hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some((hash, copy))
}

/// The markers in a store: every (hash, copy) some baton process found damaged.
#[derive(Debug, Default, Clone)]
pub struct Damaged(BTreeSet<(String, u32)>);

impl Damaged {
    pub fn contains(&self, hash: &str, copy: u32) -> bool {
        self.0.contains(&(hash.to_string(), copy))
    }

    /// Any copy of this chunk is marked.
    pub fn touches(&self, hash: &str) -> bool {
        self.0.range((hash.to_string(), 0)..=(hash.to_string(), MAX_COPIES)).next().is_some()
    }

    pub fn insert(&mut self, hash: &str, copy: u32) {
        self.0.insert((hash.to_string(), copy));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.0.iter().map(|(h, c)| (h.as_str(), *c))
    }
}

impl Store {
    /// Whether a put that is not create-only replaces what is there.
    pub fn overwrites(&self) -> bool {
        self.backend.overwrites()
    }

    /// Leave the marker that says copy `copy` of chunk `hash` did not hold its bytes.
    /// Best effort: a reader that cannot write (a read-only token, a full disk) still
    /// reports the damage to its user, and its own process never reuses the chunk.
    pub async fn report_damaged(&self, hash: &str, copy: u32, detail: &str) {
        let body = serde_json::json!({
            "hash": hash,
            "copy": copy,
            "detail": detail,
            "seen": crate::attempt::now(),
            "host": nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
        });
        let key = marker_key(hash, copy);
        match self.backend.put(&key, Bytes::from(body.to_string()), true).await {
            Ok(_) => tracing::debug!("marked {key}: {detail}"),
            Err(e) => {
                tracing::warn!("chunk {hash} is damaged, and the marker that keeps other uploads from reusing it could not be written: {e}")
            }
        }
    }

    /// Every marker in the store. A store that cannot list `damaged/` because it was never
    /// made (a write-once store's missing collection) has none.
    pub async fn damaged_chunks(&self) -> Result<Damaged> {
        let mut found = Damaged::default();
        let listed = match self.backend.list(MARKERS).await {
            Ok(listed) => listed,
            Err(e) if e.kind() == ErrorKind::Integrity => return Ok(found),
            Err(e) => return Err(e),
        };
        for o in listed {
            if let Some((hash, copy)) = o.key.strip_prefix(MARKERS).and_then(parse_copy_name) {
                found.insert(hash, copy);
            }
        }
        Ok(found)
    }

    /// The copies of `hash` beside the first (1, 2, ...), ascending: only a write-once
    /// store that had a damaged chunk written again holds any.
    pub async fn chunk_copies(&self, hash: &str) -> Result<Vec<u32>> {
        let dir = format!("chunks/{}/", &hash[..2]);
        let mut copies: Vec<u32> = self
            .backend
            .list_names(&dir)
            .await?
            .iter()
            .filter_map(|name| parse_copy_name(name))
            .filter(|&(h, copy)| h == hash && copy > 0)
            .map(|(_, copy)| copy)
            .collect();
        copies.sort_unstable();
        Ok(copies)
    }

    pub async fn get_chunk_copy(&self, hash: &str, copy: u32, limit: u64) -> Result<Bytes> {
        self.backend.get(&copy_key(hash, copy), limit).await
    }

    /// `get_chunk_copy` past any cache (`Backend::get_from_origin`); `None` when the
    /// store has no cache in front of it.
    pub async fn get_chunk_copy_from_origin(&self, hash: &str, copy: u32, limit: u64) -> Result<Option<Bytes>> {
        self.backend.get_from_origin(&copy_key(hash, copy), limit).await
    }

    pub async fn delete_chunk_copy(&self, hash: &str, copy: u32) -> Result<()> {
        self.backend.delete(&copy_key(hash, copy)).await
    }

    pub async fn delete_marker(&self, hash: &str, copy: u32) -> Result<()> {
        self.backend.delete(&marker_key(hash, copy)).await
    }

    /// Write `stored` (the chunk's encoded bytes, checked by the caller) as a good copy
    /// of a chunk that is damaged in the store, and say which copy now holds it.
    ///
    /// In place where the store overwrites, removing the marker; otherwise as the first
    /// copy no marker condemns, which may already be there (another writer repaired it,
    /// with the same bytes, since the name is their hash).
    pub async fn write_good_copy(&self, hash: &str, stored: Bytes, damaged: &Damaged) -> Result<u32> {
        if self.overwrites() {
            self.backend.put(&chunk_key(hash), stored, false).await?;
            if damaged.contains(hash, 0) {
                if let Err(e) = self.delete_marker(hash, 0).await {
                    // The chunk is good now; a stale marker costs one more rewrite later.
                    tracing::debug!("chunk {hash} was written again; its damage marker stays: {e}");
                }
            }
            return Ok(0);
        }
        for copy in 1..=MAX_COPIES {
            if damaged.contains(hash, copy) {
                continue;
            }
            let key = copy_key(hash, copy);
            match self.backend.head(&key).await {
                Ok(Some(_)) => return Ok(copy),
                Ok(None) => {}
                Err(e) if e.kind() == ErrorKind::Integrity => continue,
                Err(e) => return Err(e),
            }
            match self.backend.put(&key, stored.clone(), true).await? {
                PutOutcome::Created | PutOutcome::AlreadyExists => return Ok(copy),
            }
        }
        Err(super::StoreError::Damaged {
            key: chunk_key(hash),
            detail: format!(
                "this chunk and all {MAX_COPIES} copies of it that a write-once store may hold are marked damaged; remove the copies and the markers under damaged/ once the store is sound"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn copy_names_round_trip_and_nothing_else_parses() {
        for copy in [0, 1, 7, MAX_COPIES] {
            let key = copy_key(H, copy);
            assert_eq!(parse_copy_name(key.rsplit('/').next().unwrap()), Some((H, copy)), "{key}");
            let marker = marker_key(H, copy);
            assert_eq!(parse_copy_name(marker.strip_prefix(MARKERS).unwrap()), Some((H, copy)), "{marker}");
        }
        let bad = [
            format!("{H}.0"),
            format!("{H}.01"),
            format!("{H}.{}", MAX_COPIES + 1),
            format!("{H}.x"),
            format!("{H}."),
            H[..63].to_string(),
            H.to_uppercase(),
            ".tmp-1-2".to_string(),
        ];
        for name in bad {
            assert_eq!(parse_copy_name(&name), None, "{name}");
        }
    }

    #[test]
    fn damaged_touches_any_copy_of_its_hash_only() {
        let mut d = Damaged::default();
        d.insert(H, 3);
        assert!(d.touches(H) && d.contains(H, 3) && !d.contains(H, 0));
        let other = H.replace('0', "f");
        assert!(!d.touches(&other));
    }

    #[tokio::test]
    async fn a_write_once_store_gets_the_first_unmarked_copy() {
        let store = Store::from_backend(std::sync::Arc::new(super::super::MemoryBackend::write_once()), "memory (write-once)");
        let mut damaged = Damaged::default();
        damaged.insert(H, 0);
        assert_eq!(store.write_good_copy(H, Bytes::from_static(b"a"), &damaged).await.unwrap(), 1);
        // Written already: found again, not written twice.
        assert_eq!(store.write_good_copy(H, Bytes::from_static(b"a"), &damaged).await.unwrap(), 1);
        damaged.insert(H, 1);
        assert_eq!(store.write_good_copy(H, Bytes::from_static(b"a"), &damaged).await.unwrap(), 2);
        assert_eq!(store.chunk_copies(H).await.unwrap(), [1, 2]);
    }

    #[tokio::test]
    async fn a_store_that_overwrites_is_repaired_in_place_and_forgets_the_marker() {
        let store = Store::memory();
        store.put_chunk(H, Bytes::from_static(b"bad")).await.unwrap();
        store.report_damaged(H, 0, "test").await;
        let damaged = store.damaged_chunks().await.unwrap();
        assert!(damaged.contains(H, 0));
        assert_eq!(store.write_good_copy(H, Bytes::from_static(b"good"), &damaged).await.unwrap(), 0);
        assert_eq!(&store.get_chunk(H, 100).await.unwrap()[..], b"good");
        assert!(store.damaged_chunks().await.unwrap().is_empty());
        assert!(store.chunk_copies(H).await.unwrap().is_empty());
    }
}
