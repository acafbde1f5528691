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

/// Settings `S3Backend::new` would take from the environment.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http(s)://host:port` of a non-AWS server; empty for AWS itself.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub struct S3Backend {
    inner: AmazonS3,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Backend {
    /// A create-only write of `data` to `key` failed in transit and the key is now taken:
    /// by this write's first try when it holds the very bytes sent, else by another writer.
    async fn taken_after_a_failed_try(&self, key: &str, data: &Bytes) -> PutOutcome {
        if self.get(key, data.len() as u64).await.is_ok_and(|there| there == data) {
            PutOutcome::Created
        } else {
            PutOutcome::AlreadyExists
        }
    }

    pub fn new(bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        match credentials_from_files()? {
            Some(c) => {
                builder = builder.with_access_key_id(c.key).with_secret_access_key(c.secret);
                if let Some(t) = c.token {
                    builder = builder.with_token(t);
                }
            }
            None if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && !endpoint.is_empty() => {
                // Off AWS there is no instance metadata to fall back to: say so now
                // instead of timing out against 169.254.169.254.
                return Err(crate::error::usage(format!(
                    "s3://{bucket}: no S3 credentials for {endpoint}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
or AWS_ACCESS_KEY_ID_FILE and AWS_SECRET_ACCESS_KEY_FILE (files holding the keys, e.g. sent with transfer_input_files), \
or a shared credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE)"
                )));
            }
            None => {}
        }
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        Self::build(builder, bucket, prefix, endpoint)
    }

    /// A client configured by `settings` alone: no `AWS_*` variable or credentials file is
    /// read. For a process that talks to several S3 servers at once (tests, each with its
    /// own server), where one process-wide environment cannot describe them all.
    pub fn with_settings(bucket: &str, prefix: &str, settings: &S3Settings) -> anyhow::Result<Self> {
        let builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key);
        Self::build(builder, bucket, prefix, settings.endpoint.clone())
    }

    /// What every S3 client of baton shares, however it was configured: path-style
    /// requests to a non-AWS endpoint, and short retries and timeouts.
    fn build(mut builder: AmazonS3Builder, bucket: &str, prefix: &str, endpoint: String) -> anyhow::Result<Self> {
        if !endpoint.is_empty() {
            builder = builder.with_endpoint(&endpoint).with_virtual_hosted_style_request(false);
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
        // Unsigned payloads: SigV4 would otherwise hash every byte sent once more, a third
        // sha256 of each chunk. Nothing is lost: chunks are named by their sha256 and
        // checked against it on every read, and manifests are read back after writing.
        let inner = builder
            .with_unsigned_payload(true)
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
                let text = crate::error::chain(&other);
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
                    StoreError::Unreachable { store: self.store_name(), detail: format!("{op} {key}: {}", root_cause(&other)) }
                } else {
                    StoreError::Backend { op, key: key.to_string(), detail: text }
                }
            }
        }
    }
}

struct FileCredentials {
    key: String,
    secret: String,
    token: Option<String>,
}

fn read_key_file(var: &str) -> anyhow::Result<Option<String>> {
    let Some(path) = std::env::var_os(var) else { return Ok(None) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| crate::error::usage(format!("{var} names {}, which cannot be read: {e}", std::path::Path::new(&path).display())))?;
    let key = text.trim().to_string();
    if key.is_empty() {
        return Err(crate::error::usage(format!("{var} names {}, which is empty", std::path::Path::new(&path).display())));
    }
    Ok(Some(key))
}

/// Keys from files, for jobs that receive them as files rather than in the environment:
/// `AWS_ACCESS_KEY_ID_FILE` / `AWS_SECRET_ACCESS_KEY_FILE` (named like HTCondor's own
/// `aws_access_key_id_file` submit commands), else the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, profile `AWS_PROFILE`).
/// Keys in the environment win over both.
fn credentials_from_files() -> anyhow::Result<Option<FileCredentials>> {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(None);
    }
    match (read_key_file("AWS_ACCESS_KEY_ID_FILE")?, read_key_file("AWS_SECRET_ACCESS_KEY_FILE")?) {
        (Some(key), Some(secret)) => return Ok(Some(FileCredentials { key, secret, token: None })),
        (None, None) => {}
        _ => return Err(crate::error::usage("set both AWS_ACCESS_KEY_ID_FILE and AWS_SECRET_ACCESS_KEY_FILE, or neither")),
    }
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(h) => std::path::PathBuf::from(h).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    Ok(parse_shared_credentials(&text, &profile))
}

fn parse_shared_credentials(text: &str, profile: &str) -> Option<FileCredentials> {
    let (mut section, mut key, mut secret, mut token) = (String::new(), None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(FileCredentials { key: key?, secret: secret?, token })
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
    let text = crate::error::chain(e);
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
    /// object_store does not retry a create-only PUT that failed in transit (it is not
    /// idempotent: the first try may have landed), so baton does, for a short while: one
    /// connection reset must not cost a checkpoint. A retry that finds the key taken reads
    /// it back, and the very bytes it sent are its own first try, not another writer.
    async fn put(&self, key: &str, data: Bytes, create_only: bool) -> Result<PutOutcome> {
        const RETRY_FOR: Duration = Duration::from_secs(20);
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut retried = false;
        loop {
            let opts = PutOptions { mode: if create_only { PutMode::Create } else { PutMode::Overwrite }, ..Default::default() };
            match self.inner.put_opts(&self.path(key), PutPayload::from_bytes(data.clone()), opts).await {
                Ok(_) => return Ok(PutOutcome::Created),
                Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                    return Ok(if retried { self.taken_after_a_failed_try(key, &data).await } else { PutOutcome::AlreadyExists });
                }
                Err(e) => {
                    let err = self.map_err("put", key, e);
                    if crate::error::Classify::kind(&err) != crate::error::ErrorKind::Transient || start.elapsed() + delay > RETRY_FOR {
                        return Err(err);
                    }
                    // A server may refuse a create-only write of a key it has as soon as
                    // it has read the headers, and close the connection while the body is
                    // still going out: the client sees a broken pipe, not the refusal.
                    // (s3s-fs does: every such write cost 3 s of backing off, found by the
                    // bench's second checkpoint.) Ask at once whether the key is there.
                    if create_only && matches!(self.head(key).await, Ok(Some(_))) {
                        return Ok(self.taken_after_a_failed_try(key, &data).await);
                    }
                    tracing::debug!("retrying put {key} in {delay:?}: {err}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                    retried = true;
                }
            }
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
        let metas: Vec<_> = self.inner.list(Some(&full)).try_collect().await.map_err(|e| self.map_err("list", prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                // object_store percent-encodes characters such as `#` (in every run id
                // made from an HTCondor GlobalJobId) in the object names it writes, and
                // lists those names as stored: decode them back into the keys put and
                // get were given, or no such run's checkpoint would ever be listed.
                let raw = m.location.as_ref();
                let location =
                    percent_encoding::percent_decode_str(raw).decode_utf8().map(|k| k.into_owned()).unwrap_or_else(|_| raw.to_string());
                let key = location.strip_prefix(strip.as_str())?.to_string();
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

#[cfg(test)]
mod tests {
    #[test]
    fn shared_credentials_profiles() {
        let text = "[default]\naws_access_key_id = AK1\naws_secret_access_key = S1\n\n[other]\naws_access_key_id=AK2\naws_secret_access_key=S2\naws_session_token=T2\n";
        let d = super::parse_shared_credentials(text, "default").unwrap();
        assert_eq!((d.key.as_str(), d.secret.as_str(), d.token), ("AK1", "S1", None));
        let o = super::parse_shared_credentials(text, "other").unwrap();
        assert_eq!((o.key.as_str(), o.token.as_deref()), ("AK2", Some("T2")));
        assert!(super::parse_shared_credentials(text, "missing").is_none());
    }
}
