//! Capture: copy the checkpoint directory, as it is at commit time, into a private
//! staging directory. The trainer may overwrite its files the moment `baton commit`
//! returns (as `torch.save` to a fixed path does), so the upload must never read the
//! live files. `std::fs::copy` uses copy_file_range, which clones extents on
//! filesystems that can (btrfs, XFS) and copies in the kernel elsewhere.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct SnapFile {
    /// Relative, `/`-separated, validated by `manifest::check_relative_path`.
    pub rel: String,
    pub size: u64,
    pub mode: u32,
    /// Held by hard link to the live file rather than copied (`Hold::Link`).
    pub linked: bool,
    /// What was read of it while the trainer wrote it, during an eviction (`hash_ahead`).
    pub ahead: Option<std::sync::Arc<crate::hash_ahead::Ahead>>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub files: Vec<SnapFile>,
    /// What the live files looked like when they were copied or linked, one per file.
    pub stamps: Vec<FileStamp>,
    pub seconds: f64,
}

impl Snapshot {
    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether every linked file is as it was when linked; the first that is not, if any.
    pub fn still_intact(&self) -> Result<(), CaptureError> {
        for (f, then) in self.files.iter().zip(&self.stamps).filter(|(f, _)| f.linked) {
            let path = self.dir.join(&f.rel);
            if stamp(&f.rel, &path)? != *then {
                return Err(CaptureError::WrittenAfterCommit { path });
            }
        }
        Ok(())
    }

    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: changed while baton was copying it; the trainer must not write checkpoint files until `baton commit` returns")]
    Changed { path: PathBuf },
    #[error("{path}: written again after the command's last commit, while baton was uploading it; during an eviction (and after exit) the trainer must leave committed files alone")]
    WrittenAfterCommit { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io { path: path.to_path_buf(), source }
}

/// A symlink is followed only when it points at a regular file inside the checkpoint
/// directory (Lightning's `last.ckpt`); anything else would capture data that is not
/// the trainer's checkpoint, or leak files from outside it.
fn link_target_inside(root: &Path, link: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(link).ok()?;
    let root = std::fs::canonicalize(root).ok()?;
    (target.starts_with(&root) && target.is_file()).then_some(target)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), CaptureError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io_err(dir))?.collect::<Result<_, _>>().map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err(&path))?;
        let rel = path.strip_prefix(root).expect("walk stays under root");
        let Some(rel_str) = rel.to_str().filter(|s| crate::manifest::check_relative_path(s).is_ok()) else {
            tracing::warn!(path = %path.display(), "skipping a file whose name baton cannot store (not UTF-8 or has control characters)");
            continue;
        };
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            out.push((rel_str.to_string(), path));
        } else if ft.is_symlink() {
            match link_target_inside(root, &path) {
                Some(target) => out.push((rel_str.to_string(), target)),
                None => {
                    tracing::warn!(path = %path.display(), "skipping a symlink that does not point at a file inside the checkpoint directory")
                }
            }
        }
    }
    Ok(())
}

/// Identity and change times of a live file. Any write to a file moves its ctime (which
/// no user call can set back), so an equal stamp means the same bytes: the same test
/// restic and git use to skip rereading unchanged files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub rel: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// (device, inode): the file, whatever its name.
    pub fn identity(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

fn stamp(rel: &str, path: &Path) -> Result<FileStamp, CaptureError> {
    let m = std::fs::metadata(path).map_err(io_err(path))?;
    Ok(FileStamp {
        rel: rel.to_string(),
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The stamps of every file a snapshot of `src` would copy, without copying anything.
pub fn stamps(src: &Path) -> Result<Vec<FileStamp>, CaptureError> {
    let mut found = Vec::new();
    if src.exists() {
        walk(src, src, &mut found)?;
    }
    found.iter().map(|(rel, path)| stamp(rel, path)).collect()
}

/// How a snapshot holds the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A private copy: the trainer may overwrite its files the moment commit returns.
    Copy,
    /// Hard links to the live files, for when nobody will write them again (the command
    /// is being evicted or has exited): no second gigabyte written to the disk while
    /// the flush needs it. The upload checks the files are unchanged before it commits
    /// (`Snapshot::still_intact`). Falls back to a copy where links cannot be made.
    Link,
}

/// Copy (or link) every regular file under `src` into `staging` (which must not exist yet).
pub fn snapshot(src: &Path, staging: &Path, hold: Hold) -> Result<Snapshot, CaptureError> {
    let start = Instant::now();
    let mut found = Vec::new();
    if src.exists() {
        walk(src, src, &mut found)?;
    }
    std::fs::create_dir_all(staging).map_err(io_err(staging))?;
    let mut files = Vec::with_capacity(found.len());
    let mut stamps = Vec::with_capacity(found.len());
    for (rel, from) in found {
        let to = staging.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if hold == Hold::Link && std::fs::hard_link(&from, &to).is_ok() {
            // A new link moves the inode's ctime: the stamp to hold it to is the one after.
            let now = stamp(&rel, &to)?;
            let meta = std::fs::metadata(&to).map_err(io_err(&to))?;
            files.push(SnapFile { rel, size: meta.len(), mode: meta.permissions().mode() & 0o777, linked: true, ahead: None });
            stamps.push(now);
            continue;
        }
        let before = stamp(&rel, &from)?;
        std::fs::copy(&from, &to).map_err(io_err(&from))?;
        if stamp(&rel, &from)? != before {
            let _ = std::fs::remove_dir_all(staging);
            return Err(CaptureError::Changed { path: from });
        }
        let meta = std::fs::metadata(&to).map_err(io_err(&to))?;
        // setuid/setgid bits never travel through a checkpoint.
        let mode = meta.permissions().mode() & 0o777;
        files.push(SnapFile { rel, size: meta.len(), mode, linked: false, ahead: None });
        stamps.push(before);
    }
    Ok(Snapshot { dir: staging.to_path_buf(), files, stamps, seconds: start.elapsed().as_secs_f64() })
}

/// `a/b` -> a path under `root`, refusing anything that would leave it.
pub fn join_inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(root.join(p))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_independent_of_later_writes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("ckpt");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.pt"), b"epoch1").unwrap();
        std::fs::write(src.join("sub/b.pt"), b"bee").unwrap();
        std::os::unix::fs::symlink("a.pt", src.join("last.pt")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", src.join("escape")).unwrap();
        let snap = snapshot(&src, &t.path().join("stage"), Hold::Copy).unwrap();
        std::fs::write(src.join("a.pt"), b"epoch2").unwrap();
        let names: Vec<_> = snap.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(names, ["a.pt", "last.pt", "sub/b.pt"]);
        assert_eq!(std::fs::read(snap.dir.join("a.pt")).unwrap(), b"epoch1");
        assert_eq!(std::fs::read(snap.dir.join("last.pt")).unwrap(), b"epoch1");
    }

    #[test]
    fn join_inside_refuses_escapes() {
        let r = Path::new("/r");
        assert_eq!(join_inside(r, "a/b").unwrap(), Path::new("/r/a/b"));
        assert!(join_inside(r, "../a").is_none());
        assert!(join_inside(r, "/a").is_none());
    }
}
