//! The commit socket `baton commit` reaches the supervisor on.

use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::commit;

pub struct CommitSocket {
    path: PathBuf,
    server: JoinHandle<()>,
}

impl CommitSocket {
    /// Listen in baton's working directory; requests arrive on the returned receiver.
    pub fn open(state_dir: &Path) -> anyhow::Result<(CommitSocket, mpsc::Receiver<commit::Incoming>)> {
        // Unix socket paths are limited to ~108 bytes.
        let mut path = state_dir.join("commit.sock");
        if path.as_os_str().len() > 100 {
            path = std::env::temp_dir().join(format!("baton-{}.sock", std::process::id()));
        }
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| anyhow::anyhow!("cannot create the commit socket {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel::<commit::Incoming>(4);
        let server = tokio::spawn(commit::serve(listener, tx));
        Ok((CommitSocket { path, server }, rx))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take no more commits, and leave no socket file behind.
    pub fn close(self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
