//! S3-compatible servers through object_store, which does the signing, retries and
//! conditional writes. Configuration comes from the usual `AWS_*` variables
//! (`AWS_ENDPOINT_URL` for non-AWS servers).

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as OsPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use std::time::Duration;

use super::{Backend, ObjectInfo, PutOutcome, Result, StoreError};

pub struct S3Backend {
    inner: AmazonS3,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Backend {
    pub fn new(bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        if !endpoint.is_empty() {
            builder = builder
                .with_endpoint(&endpoint)
                .with_virtual_hosted_style_request(false);
        }
        // A job that cannot reach its store should say so in seconds, not after
        // object_store's default three minutes of retries.
        let retry = RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(20),
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(3),
                base: 2.0,
            },
        };
        // Set here, not on the builder: `with_client_options` replaces the builder's options.
        let options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let inner = builder
            .with_retry(retry)
            .with_client_options(options)
            .build()
            .map_err(|e| crate::error::usage(format!("s3://{bucket}: cannot configure the S3 client: {e}")))?;
        Ok(S3Backend {
            inner,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: if endpoint.is_empty() { "AWS".to_string() } else { endpoint },
        })
    }

    fn path(&self, key: &str) -> OsPath {
        if self.prefix.is_empty() {
            OsPath::from(key)
        } else {
            OsPath::from(format!("{}/{}", self.prefix, key))
        }
    }

    fn store_name(&self) -> String {
        format!("{} ({})", self, self.endpoint)
    }

    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { key: key.to_string() },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StoreError::Auth { store: self.store_name(), detail: auth_detail(&e) }
            }
            other => {
                let text = chain(&other);
                let lower = text.to_ascii_lowercase();
                if ["invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "403 forbidden", "status: 403"]
                    .iter()
                    .any(|m| lower.contains(m))
                {
                    StoreError::Auth { store: self.store_name(), detail: auth_detail(&other) }
                } else if ["connection refused", "error sending request", "dns error", "connect", "timed out"]
                    .iter()
                    .any(|m| lower.contains(m))
                {
                    StoreError::Unreachable { store: self.store_name(), detail: root_cause(&other) }
                } else {
                    StoreError::Backend { op, key: key.to_string(), detail: text }
                }
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
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

/// The innermost cause ("Connection refused (os error 111)"), which is what a user can act on.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string().chars().take(300).collect()
}

/// The S3 error code and message from the response body, e.g. "InvalidAccessKeyId: ...".
fn auth_detail(e: &dyn std::error::Error) -> String {
    let text = chain(e);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ if text.contains("403") => "HTTP 403 Forbidden".into(),
        _ => root_cause(e),
    }
}

impl std::fmt::Display for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> Result<PutOutcome> {
        let opts = PutOptions {
            mode: if create_only { PutMode::Create } else { PutMode::Overwrite },
            ..Default::default()
        };
        match self.inner.put_opts(&self.path(key), PutPayload::from_bytes(data), opts).await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(self.map_err("put", key, e)),
        }
    }

    async fn get(&self, key: &str, limit: u64) -> Result<Bytes> {
        let r = self.inner.get(&self.path(key)).await.map_err(|e| self.map_err("get", key, e))?;
        if r.meta.size > limit {
            return Err(StoreError::TooLarge { key: key.to_string(), size: r.meta.size, limit });
        }
        let bytes = r.bytes().await.map_err(|e| self.map_err("get", key, e))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge { key: key.to_string(), size: bytes.len() as u64, limit });
        }
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.inner.head(&self.path(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.map_err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let metas: Vec<_> = self
            .inner
            .list(Some(&full))
            .try_collect()
            .await
            .map_err(|e| self.map_err("list", prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(strip.as_str())?.to_string();
                Some(ObjectInfo { key, size: m.size, modified: m.last_modified.timestamp() })
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }
}
