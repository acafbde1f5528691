//! Content-defined chunking and the on-store chunk encoding.
//!
//! Chunks are cut with FastCDC so that a checkpoint that changes only in places (frozen
//! layers, an optimizer state that grows) shares most chunks with the previous one. A
//! chunk is named by the sha256 of its uncompressed bytes and stored as a zstd frame,
//! or raw when compression does not pay. The two are told apart by the zstd magic
//! number; raw data that happens to start with it is always stored compressed, so the
//! encoding is never ambiguous.

use sha2::{Digest, Sha256};

/// How a file is cut: FastCDC's minimum, average and maximum chunk sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// Files under this size are cut small, larger ones large.
pub const LARGE_FILE: u64 = 64 << 20;
/// Small files (configs, tokenizers, a small model): fine-grained sharing.
pub const SMALL_CUT: Cut = Cut { min: 256 << 10, avg: 1 << 20, max: 4 << 20 };
/// Large files (weights, optimizer state): every chunk is an object and a request, and a
/// local S3 server spends ~50% more CPU per byte serving 1 MiB objects than 16 MiB ones
/// (docs/benchmarks-tools.md); on a real object store each request also pays a round
/// trip. 4 MiB on average is the largest FastCDC allows, and still shares all but the
/// changed regions of a checkpoint that changed in places. The maximum bounds memory:
/// each file being read holds a buffer of it.
pub const LARGE_CUT: Cut = Cut { min: 1 << 20, avg: 4 << 20, max: 8 << 20 };
/// The largest chunk a manifest may list (format 2); format 1 wrote at most 4 MiB.
/// Larger than this baton cuts, so that a later baton may cut larger.
pub const MAX_CHUNK: u32 = 16 << 20;
pub const MAX_CHUNK_FORMAT_1: u32 = SMALL_CUT.max;

/// The cut for a file of `size` bytes: a function of the size alone, so that a file cut
/// again, here or by another baton, or changed in places, gives the same chunks (a file
/// that grows across [`LARGE_FILE`] is cut differently once).
pub fn cut_for(size: u64) -> Cut {
    if size >= LARGE_FILE {
        LARGE_CUT
    } else {
        SMALL_CUT
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Keep the compressed form only if it saves at least 1/8 of the bytes. zstd -1 runs at
/// about 550 MB/s compressing and 750 MB/s decompressing float-like data on one core
/// here, slower than a local disk or a fast network moves the bytes it would save: a
/// checkpoint of float32 weights (which zstd shrinks by ~10%) restores twice as fast raw
/// (docs/benchmarks.md). Optimizer state full of zeros, text and indices clear the bar
/// easily.
const MIN_SAVING_DIVISOR: usize = 8;
/// Before compressing a large chunk, compress this much of its middle: data that does
/// not clear the bar there (float mantissas, already-compressed files) is
/// stored raw without spending a whole-chunk compression on it.
const SAMPLE: usize = 64 * 1024;

/// The most bytes a stored chunk of `size` uncompressed bytes may take: raw, or a zstd
/// frame of data that did not compress (frame and block headers). Reads of untrusted
/// stores refuse anything larger before allocating it.
pub fn max_stored_size(size: u64) -> u64 {
    size + size / 16 + 4096
}

/// Whether an object of `stored` bytes in the store can be how a baton stored `data`:
/// raw, at its own size, or as a zstd frame that saved at least an eighth (data that
/// begins with the zstd magic number is always framed). An object of another size was
/// truncated, padded or replaced, and an upload must not reuse it. For data whose
/// middle does not compress (weights: most chunks), a frame is not what baton would
/// have written either; another baton at another zstd level might, so such an object
/// is only suspect, for the caller to read back and check before reusing it.
pub fn plausible_stored_size(stored: u64, data: &[u8]) -> Plausible {
    let size = data.len() as u64;
    if data.starts_with(&ZSTD_MAGIC) {
        return if stored > 0 && stored <= max_stored_size(size) { Plausible::Yes } else { Plausible::No };
    }
    if stored == size {
        return Plausible::Yes;
    }
    if stored == 0 || stored + size / MIN_SAVING_DIVISOR as u64 > size {
        return Plausible::No;
    }
    match sample_pays(data, 1) {
        Ok(true) => Plausible::Yes,
        _ => Plausible::Suspect,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plausible {
    Yes,
    /// Possible, but not what this baton would have written: read it back to be sure.
    Suspect,
    No,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Split a reader of a file of `size` bytes into content-defined chunks without holding
/// more than one in memory.
pub fn chunks<R: std::io::Read>(reader: R, size: u64) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    chunks_with(reader, cut_for(size))
}

/// Split a reader with a given cut (repair tries the cut an older baton used).
pub fn chunks_with<R: std::io::Read>(reader: R, cut: Cut) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    Chunker::with_cut(reader, u64::MAX, cut, None).map(|r| r.map(|c| c.data))
}

/// A fast, non-cryptographic 128-bit fingerprint of a chunk's bytes (xxh3), about 20x
/// cheaper than its sha256.
pub fn fingerprint(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

/// How this process last cut and stored a file: every chunk's length, sha256 and
/// fingerprint. The next capture of the same file (a checkpoint whose weights changed in
/// places) is cut with it as a hint: see [`Chunker`].
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub cut: Cut,
    pub size: u64,
    pub chunks: Vec<LaidChunk>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LaidChunk {
    pub len: u64,
    pub hash: String,
    pub fingerprint: u128,
}

/// A chunk as the chunker cut it: its bytes, their fingerprint and, when a hint
/// recognised them, their sha256.
#[derive(Debug)]
pub struct Cutting {
    pub data: Vec<u8>,
    pub fingerprint: u128,
    pub hash: Option<String>,
}

/// Content-defined chunking of a file, with an optional hint of how the file was cut
/// before. The cuts are exactly FastCDC's (`StreamCDC` with the same parameters, tested
/// below): a chunk is cut by scanning at most `cut.max` bytes from its start, the decision
/// depending only on those bytes and on how many remain to the end of the file, capped at
/// `cut.max`. So where the hint says that the previous version of the file had a chunk at
/// this same offset, that as many bytes remained then (capped the same way), and that its
/// bytes have the same fingerprint as the bytes here, FastCDC would cut the same chunk
/// again, and its sha256 is the one recorded: the chunk is taken without scanning for a
/// cut point or hashing it. Anything else is cut and hashed as usual; after a changed
/// region the cuts fall back into step with the hint's (content-defined), and the hint
/// applies again. The eviction flush of a checkpoint that changed in places spends its
/// time on the file's own sha256 and the changed chunks only.
///
/// The fingerprint is 128 bits of xxh3: an accidental match of different bytes is out of
/// reach (2^-128 per chunk). A trainer that built bytes to collide on purpose would only
/// break its own checkpoint, and restore would say so: the file's sha256, always
/// computed over every byte, would not match the chunks.
pub struct Chunker<R> {
    reader: R,
    cut: Cut,
    /// The file's size when it was opened.
    size: u64,
    /// Bytes read from `offset` on, not yet handed out.
    buf: Vec<u8>,
    eof: bool,
    offset: u64,
    hint: Option<std::sync::Arc<Layout>>,
    /// The hint's next chunk and where it starts.
    hint_at: (usize, u64),
}

impl<R: std::io::Read> Chunker<R> {
    pub fn new(reader: R, size: u64, hint: Option<std::sync::Arc<Layout>>) -> Self {
        let cut = cut_for(size);
        Chunker::with_cut(reader, size, cut, hint)
    }

    pub fn with_cut(reader: R, size: u64, cut: Cut, hint: Option<std::sync::Arc<Layout>>) -> Self {
        let hint = hint.filter(|h| h.cut == cut);
        Chunker { reader, cut, size, buf: Vec::new(), eof: false, offset: 0, hint, hint_at: (0, 0) }
    }

    /// Read until `buf` holds `want` bytes or the file ends.
    fn fill(&mut self, want: usize) -> std::io::Result<()> {
        use std::io::Read;
        while self.buf.len() < want && !self.eof {
            let missing = (want - self.buf.len()) as u64;
            self.buf.reserve_exact(missing as usize);
            let n = (&mut self.reader).take(missing).read_to_end(&mut self.buf)?;
            if (n as u64) < missing {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// The first `n` bytes of `buf` as a chunk; the rest stays for the next. The chunk
    /// gets an allocation of its own size: `buf` was filled to the largest chunk, and a
    /// chunk that kept it would hold up to twice its bytes in memory while it waits in
    /// the upload window (peak RSS of a 2 GiB upload: 140-155 MiB, against 100-110).
    fn take(&mut self, n: usize) -> Vec<u8> {
        self.offset += n as u64;
        if n == self.buf.len() {
            return std::mem::take(&mut self.buf);
        }
        let chunk = self.buf[..n].to_vec();
        self.buf.drain(..n);
        chunk
    }

    /// The hint's chunk at the current offset, when FastCDC's decision there would see
    /// what it saw then (the same bytes, see [`Chunker`], and the same remainder).
    fn hinted(&mut self) -> Option<LaidChunk> {
        let hint = self.hint.as_ref()?;
        while self.hint_at.1 < self.offset {
            let c = hint.chunks.get(self.hint_at.0)?;
            self.hint_at = (self.hint_at.0 + 1, self.hint_at.1 + c.len);
        }
        let c = hint.chunks.get(self.hint_at.0).filter(|_| self.hint_at.1 == self.offset)?;
        let max = u64::from(self.cut.max);
        let then = hint.size.saturating_sub(self.offset).min(max);
        let now = self.size.saturating_sub(self.offset).min(max);
        (then == now && c.len <= max).then(|| c.clone())
    }

    fn next_chunk(&mut self) -> std::io::Result<Option<Cutting>> {
        if let Some(c) = self.hinted() {
            self.fill(c.len as usize)?;
            if self.buf.len() as u64 >= c.len {
                let fingerprint = fingerprint(&self.buf[..c.len as usize]);
                if fingerprint == c.fingerprint {
                    let data = self.take(c.len as usize);
                    return Ok(Some(Cutting { data, fingerprint, hash: Some(c.hash) }));
                }
            }
        }
        self.fill(self.cut.max as usize)?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let cdc = fastcdc::v2020::FastCDC::new(&self.buf, self.cut.min as usize, self.cut.avg as usize, self.cut.max as usize);
        let (_, end) = cdc.cut(0, self.buf.len());
        let data = self.take(end.max(1));
        Ok(Some(Cutting { fingerprint: fingerprint(&data), data, hash: None }))
    }
}

impl<R> Chunker<R> {
    /// The most bytes the next chunk can hold, for a file that has not grown since it
    /// was opened.
    pub fn next_at_most(&self) -> u64 {
        u64::from(self.cut.max).min(self.size.saturating_sub(self.offset))
    }

    /// Every byte of the file has been handed out: the next call answers `None`.
    pub fn at_end(&self) -> bool {
        self.eof && self.buf.is_empty()
    }
}

impl<R: std::io::Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Cutting>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// The bytes to store for a chunk (raw chunks are passed through without a copy).
pub fn encode(data: bytes::Bytes, level: i32) -> std::io::Result<bytes::Bytes> {
    let starts_like_zstd = data.starts_with(&ZSTD_MAGIC);
    if !starts_like_zstd && (level == 0 || !sample_pays(&data, level)?) {
        return Ok(data);
    }
    let compressed = zstd::bulk::compress(&data, level.max(1))?;
    if starts_like_zstd || compressed.len() + data.len() / MIN_SAVING_DIVISOR <= data.len() {
        Ok(compressed.into())
    } else {
        Ok(data)
    }
}

/// Whether compressing the middle of `data` clears the bar. A sample has less history
/// to match against than the whole chunk, but on weights the two agree to within a
/// point (10.4% and 10.2% on the benchmark's checkpoint).
fn sample_pays(data: &[u8], level: i32) -> std::io::Result<bool> {
    if data.len() < 4 * SAMPLE {
        return Ok(true);
    }
    let mid = data.len() / 2 - SAMPLE / 2;
    let sample = &data[mid..mid + SAMPLE];
    let compressed = zstd::bulk::compress(sample, level.max(1))?;
    Ok(compressed.len() + SAMPLE / MIN_SAVING_DIVISOR <= SAMPLE)
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {hash}: cannot decompress: {detail}")]
    Decode { hash: String, detail: String },
    #[error("chunk {hash}: {found} bytes, expected {expected}")]
    Size { hash: String, expected: u64, found: u64 },
    #[error("chunk {hash}: content hashes to {found} (damaged in the store)")]
    Hash { hash: String, found: String },
}

/// Turn stored bytes back into the chunk, checking size and hash. `expected` bounds the
/// allocation, so a hostile "zip bomb" frame cannot inflate past it. A raw chunk is
/// handed back without a copy when the caller owns its bytes (`Bytes` from a store read).
pub fn decode<S: AsRef<[u8]> + Into<Vec<u8>>>(hash: &str, stored: S, expected: u64) -> Result<Vec<u8>, ChunkError> {
    let data = if stored.as_ref().starts_with(&ZSTD_MAGIC) {
        let stored = stored.as_ref();
        // One call into a buffer of exactly the expected size: twice as fast as the
        // streaming decoder, and a frame that would inflate past it (a "zip bomb", or a
        // chunk of the wrong size) fails instead of allocating.
        let mut out = Vec::with_capacity(expected as usize);
        if let Err(e) = zstd::bulk::Decompressor::new().and_then(|mut d| d.decompress_to_buffer(stored, &mut out)) {
            return Err(match zstd::zstd_safe::get_frame_content_size(stored) {
                Ok(Some(found)) if found != expected => ChunkError::Size { hash: hash.into(), expected, found },
                _ => ChunkError::Decode { hash: hash.into(), detail: e.to_string() },
            });
        }
        out
    } else {
        stored.into()
    };
    if data.len() as u64 != expected {
        return Err(ChunkError::Size { hash: hash.into(), expected, found: data.len() as u64 });
    }
    let found = sha256_hex(&data);
    if found != hash {
        return Err(ChunkError::Hash { hash: hash.into(), found });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small cut, so that a few MiB of test data make many chunks.
    const TEST_CUT: Cut = Cut { min: 2 << 10, avg: 8 << 10, max: 32 << 10 };

    fn stream_cdc(data: &[u8], cut: Cut) -> Vec<Vec<u8>> {
        fastcdc::v2020::StreamCDC::new(data, cut.min as usize, cut.avg as usize, cut.max as usize).map(|c| c.unwrap().data).collect()
    }

    fn layout_of(data: &[u8], cut: Cut) -> Layout {
        let chunks = stream_cdc(data, cut)
            .iter()
            .map(|c| LaidChunk { len: c.len() as u64, hash: sha256_hex(c), fingerprint: fingerprint(c) })
            .collect();
        Layout { cut, size: data.len() as u64, chunks }
    }

    fn cut_with(data: &[u8], cut: Cut, hint: Option<Layout>) -> Vec<Cutting> {
        Chunker::with_cut(data, data.len() as u64, cut, hint.map(std::sync::Arc::new)).map(|c| c.unwrap()).collect()
    }

    /// The chunker cuts exactly where FastCDC's own stream chunker does, at every size
    /// around the cut's bounds.
    #[test]
    fn the_chunker_cuts_where_fastcdc_does() {
        for len in [0, 1, 2047, 2048, 2049, 8192, 32767, 32768, 32769, 65536, 100_001, 3 << 20] {
            let data = noise(len as u64 + 1, len);
            let ours: Vec<Vec<u8>> = cut_with(&data, TEST_CUT, None).into_iter().map(|c| c.data).collect();
            assert_eq!(ours, stream_cdc(&data, TEST_CUT), "length {len}");
        }
        let data = noise(9, 40 << 20);
        let ours: Vec<Vec<u8>> = chunks_with(&data[..], LARGE_CUT).map(|c| c.unwrap()).collect();
        assert_eq!(ours, stream_cdc(&data, LARGE_CUT));
    }

    /// With the previous version's layout as a hint, the chunks are the very chunks a
    /// fresh cut makes, whatever changed (in place, grown, shrunk, shifted); the
    /// unchanged ones come with their sha256 (right) and without a scan, the changed
    /// ones without.
    #[test]
    fn a_hint_changes_no_cut_and_names_only_unchanged_chunks() {
        let before = noise(1, 3 << 20);
        let mut edited = before.clone();
        for k in 0..20 {
            let at = k * (before.len() / 20) + 1000;
            edited[at..at + 500].iter_mut().for_each(|b| *b ^= 0x5a);
        }
        let mut grown = before.clone();
        grown.extend_from_slice(&noise(2, 100_000));
        let shrunk = before[..before.len() - 100_000].to_vec();
        let mut shifted = vec![7u8; 1000];
        shifted.extend_from_slice(&before);
        let mut tail_edit = before.clone();
        let n = tail_edit.len();
        tail_edit[n - 10] ^= 1;
        let hint = layout_of(&before, TEST_CUT);
        for (name, after) in
            [("same", &before), ("edited", &edited), ("grown", &grown), ("shrunk", &shrunk), ("shifted", &shifted), ("tail", &tail_edit)]
        {
            let ours = cut_with(after, TEST_CUT, Some(hint.clone()));
            let fresh = stream_cdc(after, TEST_CUT);
            assert_eq!(ours.iter().map(|c| &c.data).collect::<Vec<_>>(), fresh.iter().collect::<Vec<_>>(), "{name}: cuts differ");
            for c in &ours {
                assert_eq!(c.fingerprint, fingerprint(&c.data), "{name}");
                if let Some(h) = &c.hash {
                    assert_eq!(h, &sha256_hex(&c.data), "{name}: a named chunk has another sha256");
                }
            }
            let named = ours.iter().filter(|c| c.hash.is_some()).count();
            match name {
                "same" => assert_eq!(named, ours.len(), "{name}"),
                "edited" | "grown" | "shrunk" | "tail" => assert!(named * 10 >= ours.len() * 6, "{name}: {named} of {} named", ours.len()),
                _ => {} // shifted: offsets moved, the hint is rightly of no use
            }
        }
        // A hint for another cut is not used.
        let other = Cut { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };
        assert!(cut_with(&before, other, Some(hint.clone())).iter().all(|c| c.hash.is_none()));
        // A hint whose fingerprints do not match the bytes names nothing.
        let mut wrong = hint;
        wrong.chunks.iter_mut().for_each(|c| c.fingerprint ^= 1);
        assert!(cut_with(&before, TEST_CUT, Some(wrong)).iter().all(|c| c.hash.is_none()));
    }

    #[test]
    fn compressible_data_is_stored_compressed_and_comes_back() {
        let data = vec![7u8; 100_000];
        let stored = encode(data.clone().into(), 1).unwrap();
        assert!(stored.len() < data.len() / 10);
        assert_eq!(decode(&sha256_hex(&data), stored.clone(), data.len() as u64).unwrap(), data);
    }

    /// Bytes that do not compress (xorshift).
    fn noise(mut x: u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let data = noise(0x9E3779B97F4A7C15, 100_000);
        let stored = encode(data.clone().into(), 1).unwrap();
        assert_eq!(stored, data);
        assert_eq!(decode(&sha256_hex(&data), stored.clone(), data.len() as u64).unwrap(), data);
    }

    /// Like trained weights: a slow wave plus small noise, as float32.
    fn float_weights(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        (0..n)
            .flat_map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let noise = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                ((0.05 * (i as f64 * 1e-4).sin() + 0.02 * noise) as f32).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn float_weights_that_compress_by_a_tenth_are_stored_raw() {
        let data = float_weights(1 << 18); // 1 MiB: past the sample size, so sampled
        let whole = zstd::bulk::compress(&data, 1).unwrap().len();
        assert!(whole < data.len() * 97 / 100, "zstd should save a little: {whole} of {}", data.len());
        assert!(whole > data.len() * 7 / 8, "not enough saving to pay: {whole} of {}", data.len());
        let stored = encode(data.clone().into(), 1).unwrap();
        assert_eq!(stored, data);
        assert_eq!(decode(&sha256_hex(&data), stored.clone(), data.len() as u64).unwrap(), data);
    }

    #[test]
    fn a_large_chunk_of_mostly_zeros_is_compressed() {
        let mut data = float_weights(1 << 18);
        for (i, b) in data.iter_mut().enumerate() {
            if i % 4096 >= 512 {
                *b = 0; // an optimizer state that is mostly untouched
            }
        }
        let stored = encode(data.clone().into(), 1).unwrap();
        assert!(stored.len() < data.len() / 4, "{} of {}", stored.len(), data.len());
        assert_eq!(decode(&sha256_hex(&data), stored.clone(), data.len() as u64).unwrap(), data);
    }

    #[test]
    fn raw_data_that_looks_like_zstd_is_never_ambiguous() {
        let mut data = ZSTD_MAGIC.to_vec();
        data.extend((0..1000u32).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8));
        let stored = encode(data.clone().into(), 1).unwrap();
        assert_eq!(decode(&sha256_hex(&data), stored.clone(), data.len() as u64).unwrap(), data);
    }

    #[test]
    fn damage_and_bombs_are_caught() {
        let data = vec![1u8; 10_000];
        let hash = sha256_hex(&data);
        let mut stored = encode(data.clone().into(), 1).unwrap().to_vec();
        assert!(matches!(decode(&hash, stored.clone(), 5_000), Err(ChunkError::Size { .. })));
        let last = stored.len() - 1;
        stored[last] ^= 0xff;
        assert!(decode(&hash, stored.clone(), 10_000).is_err());
        let raw = encode(data.clone().into(), 0).unwrap();
        let mut flipped = raw.to_vec();
        flipped[10] ^= 1;
        assert!(matches!(decode(&hash, flipped.clone(), 10_000), Err(ChunkError::Hash { .. })));
    }

    #[test]
    fn only_sizes_baton_could_have_stored_are_plausible() {
        let weights = float_weights(1 << 18);
        let zeros = vec![0u8; 1 << 20];
        for data in [&weights, &zeros] {
            let stored = encode(data.clone().into(), 1).unwrap().len() as u64;
            assert_eq!(plausible_stored_size(stored, data), Plausible::Yes, "what baton writes");
            assert_eq!(plausible_stored_size(data.len() as u64, data), Plausible::Yes, "raw, as at level 0");
            assert_eq!(plausible_stored_size(data.len() as u64 + 1, data), Plausible::No, "padded");
            assert_eq!(plausible_stored_size(data.len() as u64 - 1, data), Plausible::No, "a raw chunk cut short");
            assert_eq!(plausible_stored_size(0, data), Plausible::No, "emptied");
        }
        // Half a raw chunk of weights: only a frame could be that small, and weights do
        // not compress that well.
        assert_eq!(plausible_stored_size(weights.len() as u64 / 2, &weights), Plausible::Suspect);
        assert_eq!(plausible_stored_size(1000, &zeros), Plausible::Yes);
    }

    #[test]
    fn chunks_cover_the_input_exactly() {
        let data: Vec<u8> = (0..9_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let parts: Vec<Vec<u8>> = chunks(&data[..], data.len() as u64).collect::<Result<_, _>>().unwrap();
        assert!(parts.len() > 2);
        assert!(parts.iter().all(|p| p.len() <= SMALL_CUT.max as usize));
        assert_eq!(parts.concat(), data);
    }

    #[test]
    fn large_files_are_cut_in_larger_chunks_that_still_share_unchanged_regions() {
        let data = noise(0x2545F4914F6CDD1D, 80 << 20);
        let cut = |d: &[u8]| -> Vec<Vec<u8>> { chunks(d, d.len() as u64).collect::<Result<_, _>>().unwrap() };
        let parts = cut(&data);
        assert!(parts.iter().all(|p| p.len() <= LARGE_CUT.max as usize));
        let avg = data.len() / parts.len();
        assert!(avg >= 3 << 20, "large files average {avg} bytes a chunk");
        assert_eq!(parts.concat(), data);
        // Change 1 MiB in the middle: all but the chunks around it are the same.
        let mut changed = data.clone();
        changed[40 << 20..41 << 20].fill(0);
        let before: std::collections::HashSet<_> = parts.iter().map(|p| sha256_hex(p)).collect();
        let after = cut(&changed);
        let new: usize = after.iter().filter(|p| !before.contains(&sha256_hex(p))).map(|p| p.len()).sum();
        assert!(new <= 40 << 20 >> 2, "{new} bytes of new chunks for 1 MiB changed");
        assert!(new >= 1 << 20);
    }
}
