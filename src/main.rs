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
    baton::process::one_malloc_arena();
    std::process::exit(cli::main());
}
