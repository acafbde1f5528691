//! Content-defined chunking and the on-store chunk encoding.
//!
//! Chunks are cut with FastCDC so that a checkpoint that changes only in places (frozen
//! layers, an optimizer state that grows) shares most chunks with the previous one. A
//! chunk is named by the sha256 of its uncompressed bytes and stored as a zstd frame,
//! or raw when compression does not pay. The two are told apart by the zstd magic
//! number; raw data that happens to start with it is always stored compressed, so the
//! encoding is never ambiguous.

use sha2::{Digest, Sha256};

pub const MIN_CHUNK: u32 = 256 * 1024;
pub const AVG_CHUNK: u32 = 1024 * 1024;
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Keep the compressed form only if it saves at least 1/32 of the bytes: below that the
/// restore-side decompression costs more than the transfer it saves.
const MIN_SAVING_DIVISOR: usize = 32;

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Split a reader into content-defined chunks without holding more than one in memory.
pub fn chunks<R: std::io::Read>(reader: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK as usize, AVG_CHUNK as usize, MAX_CHUNK as usize).map(|r| {
        r.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

/// The bytes to store for a chunk.
pub fn encode(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let starts_like_zstd = data.starts_with(&ZSTD_MAGIC);
    if level == 0 && !starts_like_zstd {
        return Ok(data.to_vec());
    }
    let compressed = zstd::bulk::compress(data, level.max(1))?;
    if starts_like_zstd || compressed.len() + data.len() / MIN_SAVING_DIVISOR <= data.len() {
        Ok(compressed)
    } else {
        Ok(data.to_vec())
    }
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
/// allocation, so a hostile "zip bomb" frame cannot inflate past it.
pub fn decode(hash: &str, stored: &[u8], expected: u64) -> Result<Vec<u8>, ChunkError> {
    let data = if stored.starts_with(&ZSTD_MAGIC) {
        let mut out = Vec::with_capacity(expected as usize);
        let mut decoder = zstd::stream::read::Decoder::new(stored)
            .map_err(|e| ChunkError::Decode { hash: hash.into(), detail: e.to_string() })?;
        use std::io::Read;
        (&mut decoder)
            .take(expected + 1)
            .read_to_end(&mut out)
            .map_err(|e| ChunkError::Decode { hash: hash.into(), detail: e.to_string() })?;
        out
    } else {
        stored.to_vec()
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

    #[test]
    fn compressible_data_is_stored_compressed_and_comes_back() {
        let data = vec![7u8; 100_000];
        let stored = encode(&data, 1).unwrap();
        assert!(stored.len() < data.len() / 10);
        assert_eq!(decode(&sha256_hex(&data), &stored, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let stored = encode(&data, 1).unwrap();
        assert_eq!(stored, data);
        assert_eq!(decode(&sha256_hex(&data), &stored, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn raw_data_that_looks_like_zstd_is_never_ambiguous() {
        let mut data = ZSTD_MAGIC.to_vec();
        data.extend((0..1000u32).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8));
        let stored = encode(&data, 1).unwrap();
        assert_eq!(decode(&sha256_hex(&data), &stored, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn damage_and_bombs_are_caught() {
        let data = vec![1u8; 10_000];
        let hash = sha256_hex(&data);
        let mut stored = encode(&data, 1).unwrap();
        assert!(matches!(decode(&hash, &stored, 5_000), Err(ChunkError::Size { .. })));
        let last = stored.len() - 1;
        stored[last] ^= 0xff;
        assert!(decode(&hash, &stored, 10_000).is_err());
        let raw = encode(&data, 0).unwrap();
        let mut flipped = raw.clone();
        flipped[10] ^= 1;
        assert!(matches!(decode(&hash, &flipped, 10_000), Err(ChunkError::Hash { .. })));
    }

    #[test]
    fn chunks_cover_the_input_exactly() {
        let data: Vec<u8> = (0..9_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let parts: Vec<Vec<u8>> = chunks(&data[..]).collect::<Result<_, _>>().unwrap();
        assert!(parts.len() > 2);
        assert!(parts.iter().all(|p| p.len() <= MAX_CHUNK as usize));
        assert_eq!(parts.concat(), data);
    }
}
