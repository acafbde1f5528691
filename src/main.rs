//! baton: a checkpoint-aware training-runtime wrapper for preemptible slots.

mod attempt;
mod capture;
mod chunking;
mod cli;
mod commit;
mod device;
mod error;
mod htcondor;
mod identity;
mod manifest;
mod process;
mod restore;
mod signals;
mod simulate;
mod store;
mod supervisor;
mod upload;
mod verify;

fn main() {
    std::process::exit(cli::main());
}
