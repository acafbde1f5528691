//! What kind of failure an engine error is, and the exit codes baton documents for each.
//!
//! Every engine error type says its kind (`Classify`), as rustic_core's errors do; the
//! CLI walks an error chain and turns the first kind it finds into an exit status. One
//! notion of "transient" (trying again later may work) serves restore, verify, upload and
//! the Pelican client. This module sits at the bottom: it imports nothing of the crate.

use std::fmt;

/// Exit codes baton itself returns (documented in docs/exit-codes.md). Codes of the
/// trainer pass through unchanged, so baton's own failures use values a trainer is
/// unlikely to return and that HTCondor users can grep for in a job log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Bad command line, bad URL, bad run id: nothing was started.
    Usage = 2,
    /// The store could not be reached or refused the credentials.
    Store = 70,
    /// Damaged or missing objects: `verify` found some, or no intact checkpoint exists.
    Damaged = 71,
    /// A checkpoint could not be captured or made durable (commit failed loudly).
    Checkpoint = 72,
    /// Another writer already owns a manifest seq (a zombie attempt of the same run).
    Conflict = 73,
    /// The command kept exiting with the checkpoint exit code without changing its
    /// checkpoint; baton stopped restarting it.
    NoProgress = 74,
    /// A node of a run on several nodes waited for node 0's address in vain.
    Rendezvous = 75,
    /// The command could not be executed: found but not executable.
    NotExecutable = 126,
    /// The command was not found.
    NotFound = 127,
}

/// What went wrong, as far as the caller's next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line, a URL, a credential file or the environment is wrong; fix it.
    Usage,
    /// The store did not answer usefully (unreachable, outage, reset): trying again
    /// later may work, and it says nothing about the checkpoint itself.
    Transient,
    /// The store refused (credentials, permissions, an answer baton cannot use):
    /// retrying will not help until someone acts.
    Permanent,
    /// What the store holds is damaged or missing: fall back, repair or re-upload.
    Integrity,
    /// A checkpoint could not be captured or made durable.
    Checkpoint,
    /// Another writer owns what this one tried to write.
    Conflict,
    /// The command restarts in place without making progress.
    NoProgress,
    /// Node 0 of a run on several nodes did not publish its address in time.
    Rendezvous,
    /// The training command was not found.
    CommandNotFound,
    /// The training command was found but could not be executed.
    CommandNotExecutable,
}

impl ErrorKind {
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Transient
    }

    pub fn exit_code(self) -> ExitCode {
        match self {
            ErrorKind::Usage => ExitCode::Usage,
            ErrorKind::Transient | ErrorKind::Permanent => ExitCode::Store,
            ErrorKind::Integrity => ExitCode::Damaged,
            ErrorKind::Checkpoint => ExitCode::Checkpoint,
            ErrorKind::Conflict => ExitCode::Conflict,
            ErrorKind::NoProgress => ExitCode::NoProgress,
            ErrorKind::Rendezvous => ExitCode::Rendezvous,
            ErrorKind::CommandNotFound => ExitCode::NotFound,
            ErrorKind::CommandNotExecutable => ExitCode::NotExecutable,
        }
    }
}

/// An error that knows its kind.
pub trait Classify {
    fn kind(&self) -> ErrorKind;

    fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }
}

/// An error whose message says the whole story, with its kind.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Classify for Failure {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// An error and its causes as one line, each cause once: many errors already name
/// their cause in their own message, and printing the chain as well said it twice.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Shorthand for a usage error at the edges.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::new(ErrorKind::Usage, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_documented_exit_codes() {
        let codes: Vec<i32> = [
            ErrorKind::Usage,
            ErrorKind::Transient,
            ErrorKind::Permanent,
            ErrorKind::Integrity,
            ErrorKind::Checkpoint,
            ErrorKind::Conflict,
            ErrorKind::NoProgress,
            ErrorKind::Rendezvous,
            ErrorKind::CommandNotExecutable,
            ErrorKind::CommandNotFound,
        ]
        .iter()
        .map(|k| k.exit_code() as i32)
        .collect();
        assert_eq!(codes, [2, 70, 70, 71, 72, 73, 74, 75, 126, 127]);
        assert!(ErrorKind::Transient.is_transient());
        assert!(!ErrorKind::Permanent.is_transient());
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::from(io).context("writing w.pt: disk on fire").context("checkpoint 3");
        assert_eq!(chain(e.as_ref()), "checkpoint 3: writing w.pt: disk on fire");
        assert_eq!(format!("{e:#}"), "checkpoint 3: writing w.pt: disk on fire: disk on fire");
    }
}
