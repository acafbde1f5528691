//! A directory on a local or shared filesystem. Objects are written to a temporary file,
//! fsynced, then published with `link(2)`, which fails if the name exists: create-only
//! writes are atomic here, and a crash never leaves a partial object under its real name.

use async_trait::async_trait;
use bytes::Bytes;
use std::io::{ErrorKind, Read, Write};
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

fn put_sync(root: &Path, key: &str, data: &[u8], create_only: bool) -> Result<PutOutcome> {
    let path = root.join(key);
    let dir = path.parent().expect("keys always have a parent");
    std::fs::create_dir_all(dir).map_err(io("put", key))?;
    if create_only && path.exists() {
        return Ok(PutOutcome::AlreadyExists);
    }
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
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

fn get_sync(root: &Path, key: &str, limit: u64) -> Result<Bytes> {
    let f = match std::fs::File::open(root.join(key)) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound { key: key.into() }),
        Err(e) => return Err(io("get", key)(e)),
    };
    let size = f.metadata().map_err(io("get", key))?.len();
    if size > limit {
        return Err(StoreError::TooLarge { key: key.into(), size, limit });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1).read_to_end(&mut buf).map_err(io("get", key))?;
    if buf.len() as u64 > limit {
        return Err(StoreError::TooLarge { key: key.into(), size: buf.len() as u64, limit });
    }
    Ok(Bytes::from(buf))
}

fn list_sync(root: &Path, prefix: &str) -> Result<Vec<ObjectInfo>> {
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
            if name.to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let meta = entry.metadata().map_err(io("list", prefix))?;
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
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
        match tokio::fs::metadata(self.root.join(key)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("head", key)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || list_sync(&root, &prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.root.join(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("delete", key)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::conformance::{self, Capabilities};
    use std::sync::Arc;

    #[tokio::test]
    async fn meets_the_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        conformance::all(Arc::new(super::DirBackend::new(dir.path().to_path_buf())), Capabilities::FULL).await.unwrap();
    }
}
