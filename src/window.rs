//! The byte window of a chunk pipeline (restore, upload, dataset pull): how many bytes
//! of chunks may be read and not yet written at once, which is what bounds the
//! pipeline's memory whatever the chunk sizes. A window is a semaphore whose permits
//! are [`UNIT`]s of bytes; a chunk holds its share until it is done with.

/// Bytes per permit.
pub const UNIT: u64 = 64 << 10;

/// The permits of a window of `bytes`.
pub fn permits(bytes: u64) -> usize {
    (bytes / UNIT) as usize
}

/// The share of a window of `window` bytes that a chunk of `size` bytes holds: at least
/// one permit, and never more than the whole window, so one chunk can always go.
pub fn units(size: u64, window: u64) -> u32 {
    size.div_ceil(UNIT).clamp(1, window / UNIT) as u32
}

/// A window for a store `rtt` away: `base` (what the pipeline needs near the store),
/// plus what `rate` moves in one round trip, up to `max`.
pub fn covering(base: u64, rtt: std::time::Duration, rate: u64, max: u64) -> u64 {
    (base + (rate as f64 * rtt.as_secs_f64()) as u64).min(max)
}
