//! baton: a checkpoint-aware training-runtime wrapper for preemptible slots.

mod cli;

use baton::signals;

fn main() {
    // `baton commit` runs in the trainer's process group, so an eviction signal forwarded
    // to the group can reach it while it starts. Ignore those signals before anything
    // else (argument parsing, the runtime): a commit killed here crashes trainers that
    // check its exit status, at the very moment they save. (`cli::commit` ignores them
    // again, for a commit not named first on the command line.)
    if std::env::args_os().nth(1).is_some_and(|a| a == "commit") {
        signals::ignore_eviction_signals();
    }
    // glibc gives every thread that allocates its own arena and keeps freed memory in
    // it; with a pool of hashing/compression threads that made peak RSS grow with the
    // checkpoint size; one arena kept it flat at the same speed (docs/benchmarks.md,
    // the MALLOC_ARENA_MAX=1 rows).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    std::process::exit(cli::main());
}
