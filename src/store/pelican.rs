//! Pelican/OSDF federations (`pelican://host/ns/prefix`, `osdf:///ns/prefix`) through
//! baton's own client (`crate::pelican`): the director is asked where each object lives,
//! then the origin (writes, deletes, listings) or the caches (reads) are talked to
//! directly with the bearer token, which is re-read before every operation.
//!
//! Write-once: every PUT is create-only (`If-None-Match: *`), whatever `create_only`
//! says, because origins refuse overwrites. A taken key is `AlreadyExists` for
//! create-only writes (the caller decides: success for a content-addressed chunk, a
//! conflict for a manifest) and an error otherwise; no caller of baton writes
//! non-create-only today. The size check on taken keys is done here, in the backend: a
//! key holding an empty object, or fewer bytes than an interrupted try of this same put
//! sent, is reported as damage (an error), never as `AlreadyExists`.

use async_trait::async_trait;
use bytes::Bytes;
use std::path::{Path, PathBuf};

use super::{Backend, ObjectInfo, PutOutcome, Result, StoreError};
use crate::error::Classify;
use crate::pelican::url::PelicanUrl;
use crate::pelican::{Client, Error, PutResult};

pub struct PelicanBackend {
    client: Client,
    root: String,
    name: String,
}

impl PelicanBackend {
    pub fn new(url: &PelicanUrl, token_file: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::check_token_file(token_file.as_deref())?;
        let client = Client::new(url.clone(), token_file).map_err(|e| crate::error::usage(format!("{url}: {e}")))?;
        Ok(Self::with_client(url, client))
    }

    /// `new`, trusting the CA bundle `ca_file` instead of the one `SSL_CERT_FILE` names:
    /// for a process that talks to several federations with their own CAs (tests).
    pub fn with_ca_file(url: &PelicanUrl, token_file: Option<PathBuf>, ca_file: &Path) -> anyhow::Result<Self> {
        Self::check_token_file(token_file.as_deref())?;
        let client = Client::with_ca_file(url.clone(), token_file, ca_file).map_err(|e| crate::error::usage(format!("{url}: {e}")))?;
        Ok(Self::with_client(url, client))
    }

    fn with_client(url: &PelicanUrl, client: Client) -> Self {
        PelicanBackend { client, root: url.path.clone(), name: url.to_string() }
    }

    fn check_token_file(token_file: Option<&Path>) -> anyhow::Result<()> {
        if let Some(p) = token_file {
            // Named explicitly: a typo should stop baton before anything starts. (The file
            // is still re-read before every operation.)
            if !p.is_file() {
                return Err(crate::error::usage(format!("--token-file {}: no such file", p.display())));
            }
        }
        Ok(())
    }

    fn path(&self, key: &str) -> String {
        format!("{}/{}", self.root, key.trim_start_matches('/'))
    }

    fn map_err(&self, op: &'static str, key: &str, e: Error) -> StoreError {
        let store = self.name.clone();
        match e.last() {
            Error::NotFound { .. } => StoreError::NotFound { key: key.to_string() },
            Error::TooLarge { size, limit, .. } => StoreError::TooLarge { key: key.to_string(), size: *size, limit: *limit },
            Error::Token(_) | Error::Denied(_) => StoreError::Denied { store, detail: e.to_string() },
            Error::Connect { .. } | Error::Transfer { .. } => StoreError::Outage { store, detail: e.to_string() },
            last @ Error::Http { .. } if last.is_transient() => StoreError::Outage { store, detail: e.to_string() },
            _ => StoreError::Backend { op, key: key.to_string(), detail: e.to_string() },
        }
    }
}

impl std::fmt::Display for PelicanBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[async_trait]
impl Backend for PelicanBackend {
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> Result<PutOutcome> {
        match self.client.put(&self.path(key), data).await {
            Ok(PutResult::Created) => Ok(PutOutcome::Created),
            Ok(PutResult::Exists { .. }) if create_only => Ok(PutOutcome::AlreadyExists),
            Ok(PutResult::Exists { size }) => Err(StoreError::Backend {
                op: "put",
                key: key.to_string(),
                detail: format!(
                    "an object of {size} bytes is already there, and Pelican objects are write-once (origins refuse overwrites)"
                ),
            }),
            Err(e) => Err(self.map_err("put", key, e)),
        }
    }

    async fn get(&self, key: &str, limit: u64) -> Result<Bytes> {
        self.client.get(&self.path(key), limit).await.map_err(|e| self.map_err("get", key, e))
    }

    async fn get_from_origin(&self, key: &str, limit: u64) -> Result<Option<Bytes>> {
        self.client.get_direct(&self.path(key), limit).await.map(Some).map_err(|e| self.map_err("get", key, e))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.client.stat(&self.path(key)).await {
            Ok(Some(s)) if !s.is_dir => Ok(Some(s.size)),
            Ok(_) => Ok(None),
            Err(e) => Err(self.map_err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = self.path(prefix.trim_end_matches('/'));
        let strip = format!("{}/", self.root);
        let entries = self.client.list(&dir).await.map_err(|e| self.map_err("list", prefix, e))?;
        Ok(entries
            .into_iter()
            .filter_map(|(path, s)| {
                let key = path.strip_prefix(&strip)?.to_string();
                key.starts_with(prefix).then(|| ObjectInfo { key, size: s.size, modified: s.modified.unwrap_or(0) })
            })
            .collect())
    }

    fn overwrites(&self) -> bool {
        false
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client.delete(&self.path(key)).await.map_err(|e| self.map_err("delete", key, e))
    }
}
