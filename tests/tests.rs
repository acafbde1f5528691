//! baton's integration tests, one crate: the real binary, real signals, real servers and
//! real clients. One module per concern; shared helpers are in `common`.

mod common;

// The backend conformance suite against real servers (moto S3, the Pelican double).
mod backends;
// Bad input: one clear message, a documented exit code, and nothing started.
mod bad_input;
// baton reporting into the job ad through a Chirp proxy; a broken proxy never disturbs training.
mod chirp;
// ClassAd sandbox ads: baton's reader agrees with HTCondor's ClassAd library; `baton run` takes its settings from the ads.
mod classad;
// The commit socket under abuse: idle floods, a silent supervisor.
mod commit_socket;
// Datasets: push shares chunks across versions, two pushes at once both publish, pulls through a shared cache download once, run --data, prune keeps them.
mod data;
// Damaged and hostile store contents: verify names them, run falls back, restore never writes outside.
mod damage;
// The core promise: runs evicted by SIGTERM and restarted on empty slots end bit-exact; flush and commit races.
mod eviction;
// The Pelican/OSDF store end to end through the binary: retries, tokens, read back by pelicanfs.
mod pelican;
// Runs on several nodes: rendezvous through the store, checkpoints in parts, one node evicted, restarts at another size.
mod nodes;
// The command's process family: nothing it starts outlives baton; exit status passes through.
mod process_family;
// Uploads yield to the command: background upload threads run niced, the rest of baton does not.
mod priority;
// `baton advise`, `simulate --interval-sweep`, and `baton inspect` over many runs.
mod advise;
// `baton simulate`: seeded schedules of real evictions over simulated slots, then verify.
mod simulate;
// baton under an emulated HTCondor starter: ads in the sandbox, soft kill, hard kill at the window's end.
mod starter;
// Store semantics: content-addressed chunks shared across runs, manifests as the commit, one writer wins.
mod store;
// PyTorch and Lightning trainers with the python/ helper: evicted runs end bit-exact, resume with the next batch, CUDA checkpoints load on CPU.
mod torch;
// The torture suite (docs/reliability.md): seeded kills, storage faults, signals, races and load, counted.
mod torture;
// The submit files in docs/htcondor.md: valid submit language, and arguments baton accepts.
mod submit_files;

// The test doubles themselves, checked against real clients: if these fail, the baton tests that use them prove nothing.
mod doubles;
