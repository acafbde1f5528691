//! baton's own exit codes. Codes of the trainer pass through unchanged, so baton's
//! failures use values a trainer is unlikely to return and that HTCondor users can
//! grep for in a job log.

use std::fmt;

/// Exit codes baton itself returns (documented in docs/exit-codes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Bad command line, bad URL, bad run id: nothing was started.
    Usage = 2,
    /// The store could not be reached, refused the credentials, or holds damage.
    Store = 70,
    /// `verify` found damaged or missing objects.
    Damaged = 71,
    /// A checkpoint could not be captured or made durable (commit failed loudly).
    Checkpoint = 72,
    /// Another writer already owns a manifest seq (a zombie attempt of the same run).
    Conflict = 73,
    /// The command could not be executed: found but not executable.
    NotExecutable = 126,
    /// The command was not found.
    NotFound = 127,
}

/// An error that knows which exit code it maps to. Everything else exits `Store`'s
/// neighbour: 1 (generic failure).
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Shorthand for a usage error at the edges.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::new(ExitCode::Usage, message).into()
}

/// The exit code for an error chain: the first `Failure` or `StoreError` found decides.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code as i32;
        }
        if let Some(r) = cause.downcast_ref::<crate::restore::RestoreError>() {
            if !r.is_transport() {
                return ExitCode::Damaged as i32;
            }
        }
        if let Some(s) = cause.downcast_ref::<crate::store::StoreError>() {
            return match s {
                crate::store::StoreError::Conflict { .. } => ExitCode::Conflict as i32,
                _ => ExitCode::Store as i32,
            };
        }
    }
    1
}
