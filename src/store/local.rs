//! A directory on a local or shared filesystem. Objects are written to a temporary file,
//! fsynced, then published with `link(2)`, which fails if the name exists: create-only
//! writes are atomic here, and a crash never leaves a partial object under its real name.

use async_trait::async_trait;
use bytes::Bytes;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Backend, ObjectInfo, PutOutcome, Result, StoreError};

pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    pub fn new(root: PathBuf) -> Self {
        DirBackend { root }
    }
}

impl std::fmt::Display for DirBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.root.display())
    }
}

fn io<'a>(op: &'static str, key: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, key: key.to_string(), source }
}

/// `.tmp-<pid>-<ns since the epoch>`, next to the object it becomes: a write killed
/// before it publishes (or removes) the file leaves it there, for `prune` to collect.
fn temporary_name() -> String {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!(".tmp-{}-{ns}", std::process::id())
}

/// Whether `name` is one `temporary_name` makes; anything else someone left in the store
/// is not baton's to delete.
fn is_temporary_name(name: &str) -> bool {
    let Some((pid, ns)) = name.strip_prefix(".tmp-").and_then(|rest| rest.split_once('-')) else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(pid) && digits(ns)
}

fn put_sync(root: &Path, key: &str, data: &[u8], create_only: bool) -> Result<PutOutcome> {
    let path = root.join(key);
    let dir = path.parent().expect("keys always have a parent");
    std::fs::create_dir_all(dir).map_err(io("put", key))?;
    if create_only && path.exists() {
        return Ok(PutOutcome::AlreadyExists);
    }
    if !create_only {
        quarantine_directory(root, key, &path)?;
    }
    let tmp = dir.join(temporary_name());
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        if create_only {
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(PutOutcome::Created),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(e),
            }
        } else {
            std::fs::rename(&tmp, &path).map(|_| PutOutcome::Created)
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let outcome = result.map_err(io("put", key))?;
    // The new name must survive a crash too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(outcome)
}

/// A directory at an object's name blocks a write that replaces the object (a damaged
/// chunk written again). It is not baton's to delete, so it is moved out of the way, to
/// `quarantine/`, which nothing in baton reads, for a person to look at.
fn quarantine_directory(root: &Path, key: &str, path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let aside = root.join("quarantine").join(format!("{}{}", key.replace('/', "_"), temporary_name()));
            std::fs::create_dir_all(root.join("quarantine")).map_err(io("put", key))?;
            std::fs::rename(path, &aside).map_err(io("put", key))?;
            tracing::warn!("{key}: a directory was there, not an object; moved it to {} to write the object again", aside.display());
            Ok(())
        }
        _ => Ok(()),
    }
}

/// What an I/O error on one object's name means. A directory has no server to be down:
/// the store cannot be asked only when this process cannot do I/O at all (out of file
/// descriptors or memory), when a network filesystem's transport fails, or when the
/// store directory itself cannot be read. Anything else that keeps one object from being
/// read (a directory or special file at its name, a file this user may not read, EIO from
/// a bad block) is damage to that object: readers skip it or report it, where an outage
/// would stop every run of the store until someone repaired one object.
fn object_error(root: &Path, op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    if not_about_the_object(&e) {
        return io(op, key)(e);
    }
    if let Err(whole) = std::fs::read_dir(root) {
        return StoreError::Outage {
            store: root.display().to_string(),
            detail: format!(
                "{op} {key}: {e}; the store directory itself cannot be read ({whole}): check that it exists, is mounted and is readable by this user"
            ),
        };
    }
    if e.kind() == ErrorKind::NotFound {
        return StoreError::NotFound { key: key.into() };
    }
    StoreError::Damaged {
        key: key.into(),
        detail: format!("cannot be read as an object ({e}); baton treats it as damaged until it is repaired or removed"),
    }
}

/// Errors that say this process or the network filesystem's transport failed, whatever
/// the object: retrying later may work, so they must never condemn a checkpoint.
fn not_about_the_object(e: &std::io::Error) -> bool {
    if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::OutOfMemory | ErrorKind::TimedOut) {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::ENOBUFS
                | libc::ESTALE
                | libc::ENOTCONN
                | libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::ECONNABORTED
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::ENETRESET
                | libc::ENOLINK
                | libc::ECOMM
                | libc::EREMOTEIO
        )
    )
}

/// "a directory", "a FIFO", ...: what sits at an object's name instead of a file.
fn what_is(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn not_an_object(key: &str, meta: &std::fs::Metadata) -> StoreError {
    StoreError::Damaged {
        key: key.into(),
        detail: format!(
            "{} is there, not an object; baton treats it as damaged, and nothing can be stored under this name until it is removed",
            what_is(meta)
        ),
    }
}

fn get_sync(root: &Path, key: &str, limit: u64) -> Result<Bytes> {
    let fail = |e| object_error(root, "get", key, e);
    // O_NONBLOCK: a FIFO at an object's name would otherwise block this read until some
    // writer opened it; it is refused below like any other non-file. Regular files
    // ignore the flag.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(root.join(key)).map_err(fail)?;
    let meta = f.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(not_an_object(key, &meta));
    }
    let size = meta.len();
    if size > limit {
        return Err(StoreError::TooLarge { key: key.into(), size, limit });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1).read_to_end(&mut buf).map_err(fail)?;
    if buf.len() as u64 > limit {
        return Err(StoreError::TooLarge { key: key.into(), size: buf.len() as u64, limit });
    }
    Ok(Bytes::from(buf))
}

fn head_sync(root: &Path, key: &str) -> Result<Option<u64>> {
    match std::fs::metadata(root.join(key)) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        // Not "absent": a create-only put would find the name taken and report success,
        // and a manifest would then reference a chunk that can never be read.
        Ok(m) => Err(not_an_object(key, &m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(object_error(root, "head", key, e)),
    }
}

fn list_sync(root: &Path, prefix: &str) -> Result<Vec<ObjectInfo>> {
    walk(root, prefix, false)
}

/// Every regular file under `prefix`, as objects: the objects, or with `leftovers` the
/// temporary files of writes that never finished, which are never objects.
fn walk(root: &Path, prefix: &str, leftovers: bool) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(prefix)];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", prefix)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", prefix))?;
            let name = entry.file_name();
            let temporary = name.to_string_lossy().starts_with(".tmp-");
            if temporary && !(leftovers && is_temporary_name(&name.to_string_lossy())) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted between readdir and stat (a prune, a finished upload's
                // temporary file): not there, not an error.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("list", prefix)(e)),
            };
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && temporary == leftovers {
                let Ok(rel) = path.strip_prefix(root) else { continue };
                let Some(key) = rel.to_str() else { continue };
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                out.push(ObjectInfo { key: key.to_string(), size: meta.len(), modified });
            }
        }
    }
    Ok(out)
}

/// One level of a directory: every name in it but temporary files, whatever it is,
/// because a directory or FIFO at an object's name takes that name as surely as a file.
fn list_names_sync(root: &Path, prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(root.join(prefix)) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", prefix)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("list", prefix))?;
        // A name that is not UTF-8 is not a key baton could have written.
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !name.starts_with(".tmp-") {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// File system work runs off the async threads, on the CPU pool of the moment: a
/// background upload's writes yield to the command like its hashing (`priority`).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::priority::run(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend { op: "io", key: String::new(), detail: format!("worker failed: {e}") }))
}

#[async_trait]
impl Backend for DirBackend {
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> Result<PutOutcome> {
        let (root, key) = (self.root.clone(), key.to_string());
        blocking(move || put_sync(&root, &key, &data, create_only)).await
    }

    async fn get(&self, key: &str, limit: u64) -> Result<Bytes> {
        let (root, key) = (self.root.clone(), key.to_string());
        blocking(move || get_sync(&root, &key, limit)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let (root, key) = (self.root.clone(), key.to_string());
        blocking(move || head_sync(&root, &key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || list_sync(&root, &prefix)).await
    }

    async fn list_leftovers(&self) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        // Writes put their temporary file next to the object, and every object is under
        // one of these.
        blocking(move || Ok([walk(&root, "chunks/", true)?, walk(&root, "runs/", true)?].concat())).await
    }

    async fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || list_names_sync(&root, &prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.root.join(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            // A directory at the name (listed as a damaged manifest, say) that prune was
            // asked to delete: an empty one held nothing and goes; anything in it is left
            // for a person to look at.
            Err(e) if e.kind() == ErrorKind::IsADirectory => match tokio::fs::remove_dir(&path).await {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Damaged {
                    key: key.into(),
                    detail: format!("a directory is there, not an object, and it cannot be removed ({e}); remove it by hand"),
                }),
            },
            Err(e) => Err(io("delete", key)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Classify, ErrorKind as Kind};
    use crate::identity::RunId;
    use crate::store::conformance::{self, Capabilities};
    use std::sync::Arc;

    fn store_with(key: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        (root, path)
    }

    #[test]
    fn a_directory_at_an_objects_name_is_damage() {
        let key = "chunks/ab/abcd";
        let (root, path) = store_with(key);
        std::fs::create_dir(&path).unwrap();
        let e = get_sync(root.path(), key, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e}");
        assert!(e.to_string().contains("a directory"), "{e}");
        // head must not call it present: the chunk would be taken as uploaded.
        let e = head_sync(root.path(), key).unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e}");
    }

    #[test]
    fn a_directory_at_an_objects_name_is_moved_aside_by_a_replacing_write() {
        let key = "chunks/ab/abcd";
        let (root, path) = store_with(key);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"someone's").unwrap();
        assert_eq!(put_sync(root.path(), key, b"good", false).unwrap(), PutOutcome::Created);
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        let aside: Vec<_> = std::fs::read_dir(root.path().join("quarantine")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].join("inside")).unwrap(), b"someone's", "nothing of it deleted");
        assert!(list_sync(root.path(), "chunks/").unwrap().iter().all(|o| o.key == key));
    }

    #[test]
    fn a_fifo_at_an_objects_name_is_damage_and_does_not_block() {
        let key = "runs/r/checkpoints/0000000001.json";
        let (root, path) = store_with(key);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = root.path().to_path_buf();
        std::thread::spawn(move || tx.send(get_sync(&r, key, 1 << 20)).unwrap());
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(got) => assert_eq!(got.unwrap_err().kind(), Kind::Integrity),
            Err(_) => {
                // Let the stuck reader go before failing.
                let _ = std::fs::OpenOptions::new().write(true).open(&path);
                panic!("reading a FIFO at an object's name blocked");
            }
        }
    }

    #[test]
    fn an_unreadable_object_is_damage() {
        let key = "chunks/ab/abcd";
        let (root, path) = store_with(key);
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        if std::fs::read(&path).is_ok() {
            eprintln!("skipped: this user reads files whatever their mode (root)");
            return;
        }
        assert_eq!(get_sync(root.path(), key, 1 << 20).unwrap_err().kind(), Kind::Integrity);
    }

    #[test]
    fn a_store_directory_that_is_gone_is_an_outage_not_damage() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        let e = get_sync(&root, "chunks/ab/abcd", 1 << 20).unwrap_err();
        assert!(e.kind() != Kind::Integrity, "{e}");
        assert!(e.to_string().contains("store directory itself cannot be read"), "{e}");
        // A file where the store directory should be: the same.
        std::fs::write(&root, b"").unwrap();
        assert!(get_sync(&root, "chunks/ab/abcd", 1 << 20).unwrap_err().kind() != Kind::Integrity);
        // And a missing object in a store that is there is damage (a manifest names it).
        let root = tempfile::tempdir().unwrap();
        assert_eq!(get_sync(root.path(), "chunks/ab/abcd", 1 << 20).unwrap_err().kind(), Kind::Integrity);
    }

    fn dir_store() -> (tempfile::TempDir, crate::store::Store, RunId) {
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&crate::store::StoreUrl::Dir(root.path().to_path_buf())).unwrap();
        (root, store, RunId::parse("r").unwrap())
    }

    #[tokio::test]
    async fn a_directory_at_a_manifests_name_is_a_listed_seq_that_cannot_be_written() {
        let (root, store, run) = dir_store();
        store.put_manifest(&run, 1, Bytes::from_static(b"one")).await.unwrap();
        std::fs::create_dir(root.path().join("runs/r/checkpoints/0000000002.json")).unwrap();
        assert_eq!(store.list_manifests(&run).await.unwrap(), [1, 2], "the next seq must go past 2");
        let e = store.get_manifest_bytes(&run, 2).await.unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e}");
        // Not "another writer": that would end the attempt (exit 73).
        let e = store.put_manifest(&run, 2, Bytes::from_static(b"two")).await.unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e}");
        assert!(e.to_string().contains("not a manifest"), "{e}");
        // Prune may delete the blocked name; an empty directory held nothing.
        store.delete_manifest(&run, 2).await.unwrap();
        assert_eq!(store.list_manifests(&run).await.unwrap(), [1]);
        // A real manifest at the name still is a conflict.
        let e = store.put_manifest(&run, 1, Bytes::from_static(b"uno")).await.unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    }

    #[test]
    fn names_are_listed_whatever_holds_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runs/r/checkpoints");
        std::fs::create_dir_all(dir.join("0000000003.json")).unwrap();
        std::fs::write(dir.join("0000000001.json"), b"m").unwrap();
        std::fs::write(dir.join(".tmp-1-2"), b"partial").unwrap();
        assert_eq!(list_names_sync(root.path(), "runs/r/checkpoints/").unwrap(), ["0000000001.json", "0000000003.json"]);
        assert!(list_names_sync(root.path(), "runs/none/checkpoints/").unwrap().is_empty());
    }

    #[test]
    fn leftovers_are_the_temporary_files_writes_make_and_nothing_else() {
        assert!(is_temporary_name(&temporary_name()));
        for name in [".tmp-notes", ".tmp-12", ".tmp--1", ".tmp-1-x", "tmp-1-2", ".tmp-1-2-3"] {
            assert!(!is_temporary_name(name), "{name}");
        }
        let root = tempfile::tempdir().unwrap();
        for rel in ["chunks/ab/.tmp-1-2", "runs/r/checkpoints/.tmp-3-4", "chunks/ab/.tmp-mine", "chunks/ab/abcd"] {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let mut left: Vec<String> = [walk(root.path(), "chunks/", true).unwrap(), walk(root.path(), "runs/", true).unwrap()]
            .concat()
            .into_iter()
            .map(|o| o.key)
            .collect();
        left.sort();
        assert_eq!(left, ["chunks/ab/.tmp-1-2", "runs/r/checkpoints/.tmp-3-4"]);
        let objects: Vec<String> = list_sync(root.path(), "chunks/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(objects, ["chunks/ab/abcd"]);
    }

    #[test]
    fn running_out_of_descriptors_is_never_damage() {
        let root = tempfile::tempdir().unwrap();
        for errno in [libc::EMFILE, libc::ENOMEM, libc::ESTALE, libc::ETIMEDOUT] {
            let e = object_error(root.path(), "get", "k", std::io::Error::from_raw_os_error(errno));
            assert!(e.kind() != Kind::Integrity, "{errno}: {e}");
        }
        let e = object_error(root.path(), "get", "k", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.kind(), Kind::Integrity, "EIO on one object of a readable store");
    }

    #[tokio::test]
    async fn meets_the_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        conformance::all(Arc::new(super::DirBackend::new(dir.path().to_path_buf())), Capabilities::FULL).await.unwrap();
    }
}
