//! Hashing ahead: during an eviction, a large checkpoint file's sha256 is taken while
//! the trainer is still writing it, so that the flush after its commit has less left to
//! hash.
//!
//! A file's sha256 is a chain: one core, about 1.8 GB/s here, and it can only start once
//! the bytes are there. It is the serial part of an eviction flush (for a checkpoint that
//! changed in places, nearly all of it; docs/performance.md), and it used to begin at the
//! commit, after the trainer's own save on SIGTERM, which takes a good part of the same
//! time again on one core. So from the eviction signal until the trainer commits or
//! exits, a [`Follower`] thread reads each large file that changed since the signal as
//! far as it has been written, in blocks of [`BLOCK`], and keeps, per block, the xxh3-128
//! fingerprint of the bytes it hashed and the sha256 state after them ([`Ahead`]).
//!
//! Nothing read ahead is trusted. The upload reads the committed file as always and
//! feeds it to a [`FileHash`], which takes the sha256 state after a block only when every
//! block up to it has the same fingerprint now as then, and hashes the rest itself from
//! the first block that differs (a file rewritten, truncated or changed in place after
//! it was read ahead) or that was not read ahead. So the file's sha256 is the one a
//! single pass over the committed bytes gives, at the cost of an xxh3 (many times
//! cheaper) for the blocks read ahead. A trainer that built bytes to collide with its
//! own earlier bytes on purpose could only break its own checkpoint, as with the
//! chunker's hint (`chunking::Chunker`).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use xxhash_rust::xxh3::Xxh3Default;

use crate::capture;

/// The unit of reading ahead and of checking it: small enough that a change costs
/// little rehashing, large enough that its fingerprint and saved state cost nothing.
pub const BLOCK: u64 = 1 << 20;
/// Only files at least this large are followed: the upload hashes smaller ones inline,
/// as it cuts them (`upload::HASH_APART`, equal).
pub const FOLLOW_FROM: u64 = 16 << 20;
/// How long the follower sleeps when nothing has grown, at first and at most: a trainer
/// starts writing moments after the signal, and a large checkpoint directory costs a
/// stat per file per look.
const NAP_FIRST: Duration = Duration::from_millis(2);
const NAP_MOST: Duration = Duration::from_millis(50);

/// A file identity: (device, inode).
pub type Identity = (u64, u64);

/// What was read ahead of one file: its first blocks, in order from offset 0.
#[derive(Debug, Default)]
pub struct Ahead {
    blocks: Vec<Block>,
}

#[derive(Debug)]
struct Block {
    fingerprint: u128,
    /// The file's sha256 state after this block and every one before it.
    state: Sha256,
}

impl Ahead {
    pub fn bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK
    }

    /// The state after the first `n` blocks.
    fn state_after(&self, n: usize) -> Sha256 {
        match n {
            0 => Sha256::new(),
            n => self.blocks[n - 1].state.clone(),
        }
    }

    /// Read the next block of `file` at the end of what has been read, if the file holds
    /// it whole. False when it does not (yet).
    fn read_next(&mut self, file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<bool> {
        let at = self.bytes();
        if file.metadata()?.len() < at + BLOCK {
            return Ok(false);
        }
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], at + got as u64)? {
                0 => return Ok(false), // truncated since the size was read
                n => got += n,
            }
        }
        let mut state = self.state_after(self.blocks.len());
        state.update(&buf[..]);
        self.blocks.push(Block { fingerprint: xxhash_rust::xxh3::xxh3_128(buf), state });
        Ok(true)
    }
}

/// A file's sha256 over its bytes as they come, in order, using what was read ahead
/// where the bytes are the same (see the module's comment).
pub struct FileHash {
    size: u64,
    /// Bytes whose hashing was taken from what was read ahead.
    reused: u64,
    mode: Mode,
}

enum Mode {
    /// Comparing with what was read ahead: `matched` blocks are the same; the bytes of
    /// the next block so far, and their fingerprint so far.
    Checking {
        ahead: Arc<Ahead>,
        matched: usize,
        xxh: Box<Xxh3Default>,
        pending: Vec<Bytes>,
        pending_len: u64,
    },
    Hashing(Sha256),
}

impl FileHash {
    pub fn new(ahead: Option<Arc<Ahead>>) -> FileHash {
        let mode = match ahead {
            Some(ahead) if !ahead.blocks.is_empty() => {
                Mode::Checking { ahead, matched: 0, xxh: Box::default(), pending: Vec::new(), pending_len: 0 }
            }
            _ => Mode::Hashing(Sha256::new()),
        };
        FileHash { size: 0, reused: 0, mode }
    }

    pub fn update(&mut self, mut data: Bytes) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            match &mut self.mode {
                Mode::Hashing(h) => {
                    h.update(&data);
                    return;
                }
                Mode::Checking { ahead, matched, xxh, pending, pending_len } => {
                    let take = (BLOCK - *pending_len).min(data.len() as u64) as usize;
                    let piece = data.split_to(take);
                    xxh.update(&piece);
                    pending.push(piece);
                    *pending_len += take as u64;
                    if *pending_len < BLOCK {
                        continue;
                    }
                    if xxh.digest128() == ahead.blocks[*matched].fingerprint {
                        *matched += 1;
                        pending.clear();
                        *pending_len = 0;
                        xxh.reset();
                        if *matched == ahead.blocks.len() {
                            self.reused = *matched as u64 * BLOCK;
                            self.mode = Mode::Hashing(ahead.state_after(*matched));
                        }
                    } else {
                        self.reused = *matched as u64 * BLOCK;
                        self.mode = Mode::Hashing(Self::catch_up(ahead, *matched, pending));
                    }
                }
            }
        }
    }

    /// The state after the blocks that matched, and the bytes since hashed onto it.
    fn catch_up(ahead: &Ahead, matched: usize, pending: &[Bytes]) -> Sha256 {
        let mut h = ahead.state_after(matched);
        for p in pending {
            h.update(p);
        }
        h
    }

    /// The hex sha256, the bytes hashed, and how many of them were hashed ahead.
    pub fn finish(self) -> (String, u64, u64) {
        let (h, reused) = match self.mode {
            Mode::Hashing(h) => (h, self.reused),
            Mode::Checking { ahead, matched, pending, .. } => (Self::catch_up(&ahead, matched, &pending), matched as u64 * BLOCK),
        };
        (hex::encode(h.finalize()), self.size, reused)
    }
}

/// Follows the files of a checkpoint directory as they are written, from the eviction
/// signal until [`Follower::finish`] (at the trainer's commit or exit).
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<HashMap<Identity, Ahead>>>,
}

impl Follower {
    /// Call it before the trainer can act on the signal: the files as they are now are
    /// what "changed since" is measured against (a look taken later, by a thread that
    /// started late, could take a file the trainer had just written for an old one).
    pub fn start(dir: PathBuf) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let watch = Watch::new(dir);
        let thread = std::thread::Builder::new().name("baton-hash-ahead".into()).spawn(move || follow(watch, &flag));
        match thread {
            Ok(thread) => Follower { stop, thread: Some(thread) },
            Err(e) => {
                tracing::debug!("not hashing ahead: cannot start a thread: {e}");
                Follower { stop, thread: None }
            }
        }
    }

    /// Stop following (within one block's hashing) and hand over what was read ahead,
    /// by file identity.
    pub fn finish(mut self) -> HashMap<Identity, Arc<Ahead>> {
        self.stop.store(true, Ordering::Relaxed);
        let got = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        got.into_iter().filter(|(_, a)| !a.blocks.is_empty()).map(|(id, a)| (id, Arc::new(a))).collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One file being followed.
struct Following {
    file: std::fs::File,
    ahead: Ahead,
}

/// The checkpoint directory as the follower sees it.
struct Watch {
    dir: PathBuf,
    /// What the files were at the signal: only those written since are followed.
    before: HashMap<String, capture::FileStamp>,
    files: HashMap<Identity, Following>,
    buf: Vec<u8>,
}

impl Watch {
    fn new(dir: PathBuf) -> Watch {
        let before = capture::stamps(&dir).unwrap_or_default().into_iter().map(|s| (s.rel.clone(), s)).collect();
        Watch { dir, before, files: HashMap::new(), buf: vec![0u8; BLOCK as usize] }
    }

    /// Read every whole block written since the last look; whether there was any.
    fn look(&mut self, stop: &AtomicBool) -> bool {
        let mut grew = false;
        for s in capture::stamps(&self.dir).unwrap_or_default() {
            if s.size() < FOLLOW_FROM || self.before.get(&s.rel) == Some(&s) {
                continue;
            }
            let f = match self.files.entry(s.identity()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match open_same(&self.dir.join(&s.rel), s.identity()) {
                    Some(file) => v.insert(Following { file, ahead: Ahead::default() }),
                    None => continue,
                },
            };
            // Shorter than what was read: truncated, and being written again.
            if f.file.metadata().map(|m| m.len() < f.ahead.bytes()).unwrap_or(true) {
                f.ahead = Ahead::default();
            }
            while !stop.load(Ordering::Relaxed) {
                match f.ahead.read_next(&f.file, &mut self.buf) {
                    Ok(true) => grew = true,
                    Ok(false) | Err(_) => break,
                }
            }
        }
        grew
    }

    fn into_ahead(self) -> HashMap<Identity, Ahead> {
        self.files.into_iter().map(|(id, f)| (id, f.ahead)).collect()
    }
}

fn follow(mut watch: Watch, stop: &AtomicBool) -> HashMap<Identity, Ahead> {
    let mut nap = NAP_FIRST;
    while !stop.load(Ordering::Relaxed) {
        if watch.look(stop) {
            nap = NAP_FIRST;
        } else {
            std::thread::sleep(nap);
            nap = (nap * 2).min(NAP_MOST);
        }
    }
    watch.into_ahead()
}

/// `path` opened, if it is still the file of that identity.
fn open_same(path: &Path, id: Identity) -> Option<std::fs::File> {
    let file = std::fs::File::open(path).ok()?;
    let m = file.metadata().ok()?;
    ((m.dev(), m.ino()) == id).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + seed as usize) % 251) as u8).collect()
    }

    fn ahead_of(data: &[u8]) -> Ahead {
        let mut a = Ahead::default();
        let mut h = Sha256::new();
        for block in data.chunks_exact(BLOCK as usize) {
            h.update(block);
            a.blocks.push(Block { fingerprint: xxhash_rust::xxh3::xxh3_128(block), state: h.clone() });
        }
        a
    }

    /// Feed `data` in pieces of the given sizes (cycled), as the upload's chunks come.
    fn hash_in_pieces(data: &[u8], ahead: Option<Ahead>, pieces: &[usize]) -> (String, u64, u64) {
        let mut fh = FileHash::new(ahead.map(Arc::new));
        let (mut at, mut k) = (0, 0);
        while at < data.len() {
            let n = pieces[k % pieces.len()].min(data.len() - at);
            fh.update(Bytes::copy_from_slice(&data[at..at + n]));
            at += n;
            k += 1;
        }
        fh.finish()
    }

    #[test]
    fn the_hash_is_the_files_sha256_whatever_was_read_ahead() {
        let len = 5 * BLOCK as usize + 12345;
        let now = bytes_of(len, 1);
        let want = crate::chunking::sha256_hex(&now);
        let pieces: &[&[usize]] = &[&[len], &[700_000, 1 << 20, 3 << 20], &[1 << 20], &[1]];
        let mut changed_third = now.clone();
        changed_third[2 * BLOCK as usize + 10] ^= 1;
        let cases: Vec<(&str, Option<Ahead>, u64)> = vec![
            ("nothing read ahead", None, 0),
            ("all of it", Some(ahead_of(&now)), 5 * BLOCK),
            ("its first two blocks", Some(ahead_of(&now[..2 * BLOCK as usize])), 2 * BLOCK),
            ("an older version changed in the third block", Some(ahead_of(&changed_third)), 2 * BLOCK),
            ("another file", Some(ahead_of(&bytes_of(len, 2))), 0),
            ("a longer file with the same start", Some(ahead_of(&[now.clone(), bytes_of(3 << 20, 3)].concat())), 5 * BLOCK),
        ];
        for (what, ahead, reused) in cases {
            let ahead = ahead.map(Arc::new);
            for p in pieces {
                let (got, size, used) = hash_in_pieces(&now, ahead.as_deref().map(clone_ahead), p);
                assert_eq!(got, want, "{what}, pieces {p:?}");
                assert_eq!(size, len as u64, "{what}");
                assert_eq!(used, reused, "{what}, pieces {p:?}");
            }
        }
    }

    fn clone_ahead(a: &Ahead) -> Ahead {
        Ahead { blocks: a.blocks.iter().map(|b| Block { fingerprint: b.fingerprint, state: b.state.clone() }).collect() }
    }

    #[test]
    fn a_file_shorter_than_what_was_read_ahead_is_hashed_whole() {
        let now = bytes_of(BLOCK as usize / 2, 1);
        let older = bytes_of(3 * BLOCK as usize, 1);
        let (got, _, used) = hash_in_pieces(&now, Some(ahead_of(&older)), &[4096]);
        assert_eq!(got, crate::chunking::sha256_hex(&now));
        assert_eq!(used, 0);
    }

    #[test]
    fn streaming_and_one_shot_fingerprints_agree() {
        let data = bytes_of(BLOCK as usize, 9);
        let mut x = Xxh3Default::new();
        for piece in data.chunks(333_333) {
            x.update(piece);
        }
        assert_eq!(x.digest128(), xxhash_rust::xxh3::xxh3_128(&data));
    }

    #[test]
    fn the_follower_reads_large_files_written_since_it_started_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let old = bytes_of(FOLLOW_FROM as usize, 4);
        std::fs::write(dir.path().join("unchanged.bin"), &old).unwrap();
        std::fs::write(dir.path().join("rewritten.bin"), &old).unwrap();
        let never = AtomicBool::new(false);
        let mut watch = Watch::new(dir.path().to_path_buf());
        assert!(!watch.look(&never), "nothing was written yet");
        // Written in two goes, with a look between: the second look goes on from the first.
        let new = bytes_of(FOLLOW_FROM as usize + 3 * BLOCK as usize + 17, 5);
        let half = FOLLOW_FROM as usize + BLOCK as usize / 2;
        std::fs::write(dir.path().join("rewritten.bin"), &new[..half]).unwrap();
        assert!(watch.look(&never));
        std::fs::OpenOptions::new().append(true).open(dir.path().join("rewritten.bin")).unwrap().write_all(&new[half..]).unwrap();
        std::fs::write(dir.path().join("small.bin"), bytes_of(1 << 20, 6)).unwrap();
        assert!(watch.look(&never));
        assert!(!watch.look(&never), "nothing more to read");
        let id = |name: &str| {
            let m = std::fs::metadata(dir.path().join(name)).unwrap();
            (m.dev(), m.ino())
        };
        let got = watch.into_ahead();
        let ahead = got.get(&id("rewritten.bin")).expect("the rewritten file was followed");
        assert_eq!(ahead.bytes(), (FOLLOW_FROM / BLOCK + 3) * BLOCK, "every whole block, not the partial last one");
        assert!(!got.contains_key(&id("unchanged.bin")));
        assert!(!got.contains_key(&id("small.bin")));
        let (hash, _, used) = hash_in_pieces(&new, Some(clone_ahead(ahead)), &[4 << 20]);
        assert_eq!(hash, crate::chunking::sha256_hex(&new));
        assert_eq!(used, ahead.bytes());
    }

    #[test]
    fn a_file_truncated_and_written_again_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        let never = AtomicBool::new(false);
        let mut watch = Watch::new(dir.path().to_path_buf());
        std::fs::write(&path, bytes_of(FOLLOW_FROM as usize + 2 * BLOCK as usize, 7)).unwrap();
        assert!(watch.look(&never));
        // The same inode, truncated and written with other bytes, shorter.
        let new = bytes_of(FOLLOW_FROM as usize + BLOCK as usize, 8);
        std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap().write_all(&new).unwrap();
        assert!(watch.look(&never));
        let m = std::fs::metadata(&path).unwrap();
        let got = watch.into_ahead();
        let ahead = got.get(&(m.dev(), m.ino())).unwrap();
        let (hash, _, used) = hash_in_pieces(&new, Some(clone_ahead(ahead)), &[3 << 20]);
        assert_eq!(hash, crate::chunking::sha256_hex(&new));
        assert_eq!(used, new.len() as u64 / BLOCK * BLOCK);
    }
}
