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
    // The watcher `baton run` starts (hidden): no runtime, no threads, just a blocking read.
    if std::env::args_os().nth(1).is_some_and(|a| a == baton::watcher::ARG) {
        signals::ignore_eviction_signals();
        let token = std::env::args_os().nth(2).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        std::process::exit(baton::watcher::main(&token));
    }
    baton::process::tune_malloc();
    std::process::exit(cli::main());
}
