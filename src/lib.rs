//! baton's engine: restore, capture, upload, eviction handling and the store, as a
//! library. The `baton` binary (`src/main.rs`, `src/cli/`) is a thin face over it: it
//! turns flags into calls and results into text, JSON and exit codes. Nothing here
//! prints to stdout.

pub mod attempt;
pub mod capture;
pub mod chirp;
pub mod chunking;
pub mod classad;
pub mod commit;
pub mod data;
pub mod device;
pub mod error;
pub mod format;
pub mod hash_ahead;
pub mod htcondor;
pub mod identity;
pub mod interval;
pub mod manifest;
pub mod nodes;
pub mod overview;
pub mod pelican;
pub mod priority;
pub mod process;
pub mod procfs;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod signals;
pub mod simulate;
pub mod store;
pub mod supervisor;
pub mod timeline;
pub mod upload;
pub mod verify;
pub mod watcher;
pub mod window;

// Upload and restore against the in-memory store, in process: the engine end to end.
#[cfg(test)]
mod round_trip;
