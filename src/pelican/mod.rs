//! A small Pelican/OSDF client: federation discovery, the director, bearer tokens, and the
//! data plane (one streamed PUT per object, GET with failover across the servers the
//! director names, WebDAV PROPFIND for stat and listing, RFC 3230 digests after every
//! transfer). Operations take full object paths (`/namespace/prefix/key`); the store
//! backend (`store::pelican`) maps keys onto them.
//!
//! Retries: connect errors, 429 (honouring `Retry-After`), 5xx, truncated bodies, stalls
//! and digest mismatches on reads are retried with exponential backoff, at most 5 tries
//! and 20 s per operation (the S3 backend's budget); 400/401/403/404/405 are not.
//! TLS: https only, the platform's roots plus the PEM bundle named by `SSL_CERT_FILE`.

pub mod digest;
pub mod director;
pub mod discovery;
mod error;
pub mod propfind;
mod retry;
pub mod token;
pub mod url;

pub use self::error::Error;
use crate::error::Classify;

use self::error::{error_message, note, retry_after, root_cause};
use self::retry::{Policy, Retry};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use self::director::{Namespace, Verb};
use self::discovery::Federation;
use self::token::{FindError, Found};
use self::url::{encode_path, PelicanUrl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    Created,
    /// The path was taken; its size.
    Exists {
        size: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Stat {
    pub size: u64,
    pub is_dir: bool,
    pub modified: Option<i64>,
}

/// Where a request for one object goes.
#[derive(Debug, Clone)]
struct Target {
    urls: Vec<String>,
    namespace: Option<Namespace>,
    standalone: bool,
}

/// A cached director answer: server base URLs for objects of one namespace.
#[derive(Debug, Clone)]
struct Route {
    verb: Verb,
    namespace: Namespace,
    bases: Vec<String>,
    at: Instant,
}

const ROUTE_TTL: Duration = Duration::from_secs(600);

/// What a denied request needed, for the message.
#[derive(Debug, Clone, Copy)]
enum Need {
    Read,
    Create,
    Modify,
}

impl Need {
    fn scope(self) -> &'static str {
        match self {
            Need::Read => "storage.read",
            Need::Create => "storage.create",
            Need::Modify => "storage.modify",
        }
    }
    fn why(self) -> &'static str {
        match self {
            Need::Read => "baton needs to read checkpoints and list them",
            Need::Create => "baton run needs to write checkpoints",
            Need::Modify => "baton prune needs to delete objects",
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    url: PelicanUrl,
    token_file: Option<PathBuf>,
    federation: tokio::sync::OnceCell<Federation>,
    routes: Mutex<Vec<Route>>,
    /// Paths whose object this process found different from what it wrote: `stat`
    /// reports them absent so that nothing is built on them.
    damaged: Mutex<HashSet<String>>,
    policy: Policy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pelican::Client({})", self.url)
    }
}

/// Seconds without a byte before a transfer counts as stalled.
fn read_timeout() -> Duration {
    std::env::var("BATON_PELICAN_READ_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(15))
}

impl Client {
    pub fn new(url: PelicanUrl, token_file: Option<PathBuf>) -> Result<Client, String> {
        let ca = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()).map(PathBuf::from);
        Self::build(url, token_file, ca.as_deref(), "SSL_CERT_FILE=")
    }

    /// `new` with the extra CA bundle named here rather than by `SSL_CERT_FILE`, for a
    /// process that talks to several federations with their own CAs (tests).
    pub fn with_ca_file(url: PelicanUrl, token_file: Option<PathBuf>, ca_file: &std::path::Path) -> Result<Client, String> {
        Self::build(url, token_file, Some(ca_file), "CA bundle ")
    }

    /// `named` says where `ca_file` came from, for the messages.
    fn build(url: PelicanUrl, token_file: Option<PathBuf>, ca_file: Option<&std::path::Path>, named: &str) -> Result<Client, String> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(read_timeout())
            .timeout(Duration::from_secs(120));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("{named}{}: cannot read the CA bundle: {e}", path.display()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{named}{}: not a PEM CA bundle: {e}", path.display()))?;
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().map_err(|e| format!("cannot set up the HTTPS client: {}", root_cause(&e)))?;
        Ok(Client {
            http,
            url,
            token_file,
            federation: tokio::sync::OnceCell::new(),
            routes: Mutex::new(vec![]),
            damaged: Mutex::new(HashSet::new()),
            policy: Policy::default(),
        })
    }

    async fn federation(&self) -> Result<&Federation, Error> {
        self.federation
            .get_or_try_init(|| async {
                let f = discovery::discover(&self.http, &self.url.federation_base()).await?;
                tracing::debug!("pelican: federation {}: {f:?}", self.url.host);
                Ok(f)
            })
            .await
    }

    fn cached(&self, path: &str, verb: Option<Verb>) -> Option<Route> {
        let routes = self.routes.lock().unwrap();
        routes
            .iter()
            .filter(|r| verb.is_none_or(|v| r.verb == v) && r.namespace.holds(path) && r.at.elapsed() < ROUTE_TTL)
            .max_by_key(|r| r.namespace.prefix.len())
            .cloned()
    }

    fn forget_route(&self, path: &str, verb: Verb) {
        self.routes.lock().unwrap().retain(|r| !(r.verb == verb && r.namespace.holds(path)));
    }

    /// Where to send `verb` for `path`: the director's answer, cached per namespace and verb.
    async fn resolve(&self, path: &str, verb: Verb) -> Result<Target, Error> {
        let director = match self.federation().await? {
            Federation::Standalone(base) => {
                return Ok(Target {
                    urls: vec![format!("{base}{}", encode_path(path))],
                    namespace: Some(Namespace { prefix: "/".into(), require_token: false, collections_url: Some(base.clone()) }),
                    standalone: true,
                })
            }
            Federation::Director(d) => d.clone(),
        };
        if let Some(r) = self.cached(path, Some(verb)) {
            let urls = r.bases.iter().map(|b| format!("{b}{}", encode_path(path))).collect();
            return Ok(Target { urls, namespace: Some(r.namespace), standalone: false });
        }
        let answer = director::ask(&self.http, &director, path, verb).await?;
        tracing::debug!("pelican: director {} {path}: {:?}", verb.method(), answer);
        if let Some(ns) = &answer.namespace {
            let bases: Option<Vec<String>> = answer.servers.iter().map(|u| server_base(u, path)).collect();
            if let Some(bases) = bases {
                let mut routes = self.routes.lock().unwrap();
                routes.retain(|r| !(r.verb == verb && r.namespace.prefix == ns.prefix));
                routes.push(Route { verb, namespace: ns.clone(), bases, at: Instant::now() });
            }
        }
        Ok(Target { urls: answer.servers, namespace: answer.namespace, standalone: false })
    }

    /// The namespace holding `path` (for its collections URL and token policy).
    async fn namespace(&self, path: &str) -> Result<Namespace, Error> {
        if let Some(r) = self.cached(path, None) {
            return Ok(r.namespace);
        }
        // GET is the verb for stat and list; a director that only redirects reads of
        // existing objects answers 404 for a missing one, so ask the origin route too.
        let t = match self.resolve(path, Verb::Get).await {
            Err(Error::NotFound { .. }) => self.resolve(path, Verb::Put).await?,
            other => other?,
        };
        t.namespace.ok_or_else(|| Error::Protocol {
            what: format!("director for {path}"),
            detail: "the answer has no X-Pelican-Namespace header".into(),
        })
    }

    /// The token, re-read now (HTCondor refreshes it while the job runs). `None` when
    /// none is found and none is required.
    fn token(&self, required: bool) -> Result<Option<Found>, Error> {
        match token::find_here(self.token_file.as_deref(), self.url.token_name.as_deref()) {
            Ok(f) => {
                if let Some(exp) = f.token.claims().and_then(|c| c.exp) {
                    let now = now_secs();
                    if exp + 60 < now {
                        return Err(Error::Token(format!(
                            "the token from {} expired {} ago; get a fresh token (inside HTCondor, the credmon refreshes the job's token: check the job's OAuth/SciTokens settings)",
                            f.source,
                            humantime::format_duration(Duration::from_secs((now - exp) as u64))
                        )));
                    }
                }
                Ok(Some(f))
            }
            Err(FindError::Explicit { path, detail }) => Err(Error::Token(format!("the token file {} {detail}", path.display()))),
            Err(FindError::Missing(m)) if required => Err(Error::Token(format!(
                "{m}. Give the token with --token-file PATH (or BATON_TOKEN_FILE / BEARER_TOKEN_FILE), or submit the job with a token (use_oauth_services, or a name+osdf:// URL for $_CONDOR_CREDS/<name>.use)"
            ))),
            Err(FindError::Missing(_)) => Ok(None),
        }
    }

    /// Explain a 401/403.
    fn denied(&self, status: u16, need: Need, path: &str, ns: Option<&Namespace>, token: Option<&Found>, detail: &str) -> Error {
        let server = if detail.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {detail}") };
        let Some(t) = token else {
            return match self.token(true) {
                Err(e) => Error::Denied(format!("{path}: the server wants a token ({server}) and {e}")),
                Ok(_) => Error::Denied(format!("{path}: refused without a token ({server})")),
            };
        };
        let claims = t.token.claims();
        if let Some(exp) = claims.as_ref().and_then(|c| c.exp) {
            let now = now_secs();
            if exp <= now {
                return Error::Denied(format!(
                    "{path}: the token from {} expired {} ago ({server}); get a fresh token",
                    t.source,
                    humantime::format_duration(Duration::from_secs((now - exp) as u64))
                ));
            }
        }
        let rel = match ns {
            Some(n) if n.prefix != "/" => path.strip_prefix(n.prefix.trim_end_matches('/')).filter(|r| r.starts_with('/')).unwrap_or(path),
            _ => path,
        };
        match claims {
            Some(c) if !c.allows(need.scope(), rel) => {
                let scopes = c.storage_scopes();
                Error::Denied(format!(
                    "{path}: the token from {} lacks {}:{}, which {}; its storage scopes are: {} (the server said {server})",
                    t.source,
                    need.scope(),
                    parent_of(rel),
                    need.why(),
                    if scopes.is_empty() { "none".to_string() } else { scopes.join(" ") }
                ))
            }
            _ => Error::Denied(format!(
                "{path}: the server refused the token from {} for {} ({server}); check that the token's issuer is the namespace's and that it grants {} here",
                t.source,
                need.scope(),
                need.scope()
            )),
        }
    }

    fn request(&self, method: reqwest::Method, url: &str, token: Option<&Found>) -> reqwest::RequestBuilder {
        tracing::debug!("pelican: {method} {url}");
        let mut r = self.http.request(method, url);
        if let Some(t) = token {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.token.secret())) {
                v.set_sensitive(true);
                r = r.header(AUTHORIZATION, v);
            }
        }
        r
    }

    /// Upload `data` to `path`, create-only (Pelican objects are write-once).
    pub async fn put(&self, path: &str, data: Bytes) -> Result<PutResult, Error> {
        let len = data.len() as u64;
        let mut retry = Retry::new(self.policy, format!("PUT {path}"));
        // Whether an earlier try may have left (part of) the body on the server.
        let mut sent_before = false;
        let mut server = 0usize;
        loop {
            let result = self.put_once(path, &data, len, &mut sent_before, server).await;
            match result {
                Ok(r) => return Ok(r),
                Err(e) => {
                    if matches!(e, Error::Connect { .. } | Error::Http { .. }) {
                        server += 1;
                    }
                    if let Err(e) = retry.again(e).await {
                        return Err(self.gave_up(path, Verb::Put, e));
                    }
                }
            }
        }
    }

    async fn put_once(&self, path: &str, data: &Bytes, len: u64, sent_before: &mut bool, server: usize) -> Result<PutResult, Error> {
        let token = self.token(true)?;
        let target = self.resolve(path, Verb::Put).await?;
        let url = target.urls[server % target.urls.len()].clone();
        let what = format!("PUT {url}");
        let resp = self
            .request(reqwest::Method::PUT, &format!("{url}?oss.asize={len}"), token.as_ref())
            .header(reqwest::header::IF_NONE_MATCH, "*")
            .body(data.clone())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let err = Error::from_reqwest(&what, &e);
                if matches!(err, Error::Connect { .. }) {
                    return Err(err);
                }
                // The body may have arrived (and the answer been lost), or the origin may
                // have refused early (412) and closed the connection mid-body: look.
                *sent_before = true;
                if let Ok(Some((size, digest_header))) = self.head_object(&url, token.as_ref()).await {
                    tracing::debug!("pelican: {what}: {err}; the object is there ({size} bytes)");
                    return self.existing(path, data, size, digest_header.as_deref(), true);
                }
                return Err(err);
            }
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let detail = error_message(&resp.bytes().await.unwrap_or_default());
        match status {
            200..=299 => {
                self.verify_put(path, &url, data, token.as_ref()).await?;
                Ok(PutResult::Created)
            }
            412 | 409 | 403 => match self.head_object(&url, token.as_ref()).await {
                Ok(Some((size, digest_header))) => self.existing(path, data, size, digest_header.as_deref(), *sent_before),
                Ok(None) if status == 403 => {
                    Err(self.denied(status, Need::Create, path, target.namespace.as_ref(), token.as_ref(), &detail))
                }
                Ok(None) => Err(Error::Http { what, status, detail, retry_after: None }),
                Err(Error::Http { status: 401 | 403, .. }) if status == 403 => {
                    Err(self.denied(status, Need::Create, path, target.namespace.as_ref(), token.as_ref(), &detail))
                }
                Err(e) => Err(e),
            },
            401 => Err(self.denied(status, Need::Create, path, target.namespace.as_ref(), token.as_ref(), &detail)),
            507 => Err(Error::Http { what, status, detail: format!("the origin is out of space{}", note(&detail)), retry_after: None }),
            _ => {
                if status >= 500 {
                    *sent_before = true;
                }
                Err(Error::Http { what, status, detail, retry_after })
            }
        }
    }

    /// The path is taken: decide whether it is ours, someone else's, or a leftover.
    fn existing(&self, path: &str, data: &Bytes, size: u64, digest_header: Option<&str>, sent_before: bool) -> Result<PutResult, Error> {
        let len = data.len() as u64;
        let what = format!("PUT {path}");
        let verdict = digest::check(digest_header, data);
        if sent_before && size == len && !matches!(verdict, digest::Verdict::Mismatch { .. }) {
            // An earlier try of ours landed; its answer was lost.
            return Ok(PutResult::Created);
        }
        if (sent_before && size < len) || (size == 0 && len > 0) {
            self.damaged.lock().unwrap().insert(path.to_string());
            return Err(Error::Damaged {
                what,
                detail: format!(
                    "an interrupted upload left {size} of {len} bytes there, and Pelican origins refuse to overwrite; \
remove the object with a token that has storage.modify, then commit again"
                ),
            });
        }
        Ok(PutResult::Exists { size })
    }

    /// After a PUT: the origin must hold `len` bytes with our crc32c.
    async fn verify_put(&self, path: &str, url: &str, data: &Bytes, token: Option<&Found>) -> Result<(), Error> {
        let len = data.len() as u64;
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            match self.head_object(url, token).await {
                Ok(Some((size, header))) => {
                    if size != len {
                        last = Some(format!("the origin holds {size} bytes, {len} were sent"));
                        continue;
                    }
                    match digest::check(header.as_deref(), data) {
                        digest::Verdict::Match => return Ok(()),
                        digest::Verdict::Absent => {
                            tracing::debug!("pelican: {url}: no crc32c digest from the origin; size checked only");
                            return Ok(());
                        }
                        digest::Verdict::Mismatch { ours, theirs } => {
                            last = Some(format!("the origin's crc32c is {theirs}, the bytes sent have {ours}"))
                        }
                    }
                }
                Ok(None) => last = Some("the object is not there after the upload".into()),
                Err(e) if e.is_transient() => last = Some(e.to_string()),
                Err(e) => {
                    // A token without storage.read cannot HEAD: nothing to check with.
                    tracing::debug!("pelican: {url}: cannot check the upload: {e}");
                    return Ok(());
                }
            }
        }
        let detail = last.unwrap_or_default();
        if detail.contains("HTTP") || detail.contains("connect") {
            tracing::warn!("pelican: {path}: uploaded, but could not be checked afterwards ({detail})");
            return Ok(());
        }
        self.damaged.lock().unwrap().insert(path.to_string());
        Err(Error::Damaged {
            what: format!("PUT {path}"),
            detail: format!("{detail}; Pelican origins refuse to overwrite, so remove the object with a token that has storage.modify, then commit again"),
        })
    }

    /// HEAD with `Want-Digest`: `Some((size, Digest header))`, `None` on 404.
    async fn head_object(&self, url: &str, token: Option<&Found>) -> Result<Option<(u64, Option<String>)>, Error> {
        let what = format!("HEAD {url}");
        let resp = self
            .request(reqwest::Method::HEAD, url, token)
            .header("Want-Digest", digest::WANT)
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&what, &e))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {
                let size = resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| Error::Protocol { what: what.clone(), detail: "no Content-Length".into() })?;
                let digest = resp.headers().get("digest").and_then(|v| v.to_str().ok()).map(str::to_string);
                Ok(Some((size, digest)))
            }
            404 => Ok(None),
            _ => Err(Error::Http { what, status, detail: String::new(), retry_after: retry_after(resp.headers()) }),
        }
    }

    /// Download `path`, refusing more than `limit` bytes; servers tried in the director's
    /// order, each transfer checked against the server's crc32c.
    pub async fn get(&self, path: &str, limit: u64) -> Result<Bytes, Error> {
        self.get_via(path, limit, Verb::Get).await
    }

    /// `get` from the origin only, past the caches (the director's origin endpoint).
    pub async fn get_direct(&self, path: &str, limit: u64) -> Result<Bytes, Error> {
        self.get_via(path, limit, Verb::GetDirect).await
    }

    async fn get_via(&self, path: &str, limit: u64, verb: Verb) -> Result<Bytes, Error> {
        let mut retry = Retry::new(self.policy, format!("GET {path}"));
        let mut server = 0usize;
        loop {
            match self.get_once(path, limit, server, verb).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    server += 1;
                    if let Err(e) = retry.again(e).await {
                        return Err(self.gave_up(path, verb, e));
                    }
                }
            }
        }
    }

    async fn get_once(&self, path: &str, limit: u64, server: usize, verb: Verb) -> Result<Bytes, Error> {
        let target = self.resolve(path, verb).await?;
        let required = target.namespace.as_ref().is_some_and(|n| n.require_token);
        let token = if required || target.standalone { self.token(required)? } else { None };
        let url = target.urls[server % target.urls.len()].clone();
        let what = format!("GET {url}");
        let mut resp = self
            .request(reqwest::Method::GET, &url, token.as_ref())
            .header("Want-Digest", digest::WANT)
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&what, &e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let retry_after = retry_after(resp.headers());
            let detail = error_message(&resp.bytes().await.unwrap_or_default());
            return Err(match status {
                404 => Error::NotFound { path: path.to_string(), detail },
                401 | 403 => self.denied(status, Need::Read, path, target.namespace.as_ref(), token.as_ref(), &detail),
                _ => Error::Http { what, status, detail, retry_after },
            });
        }
        let declared = resp.content_length();
        if let Some(n) = declared.filter(|n| *n > limit) {
            return Err(Error::TooLarge { what, size: n, limit });
        }
        let digest_header = resp.headers().get("digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit).min(64 << 20) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| Error::from_reqwest(&what, &e))? {
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(Error::TooLarge { what, size: buf.len() as u64 + chunk.len() as u64, limit });
            }
            buf.extend_from_slice(&chunk);
        }
        if let Some(n) = declared.filter(|n| *n != buf.len() as u64) {
            return Err(Error::Transfer { what, detail: format!("truncated: {} of {n} bytes arrived", buf.len()) });
        }
        let data = buf.freeze();
        let digest_header = match digest_header {
            Some(h) => Some(h),
            None => match self.head_object(&url, token.as_ref()).await {
                Ok(Some((size, h))) => {
                    if size != data.len() as u64 {
                        return Err(Error::Integrity {
                            what,
                            detail: format!("the server says the object has {size} bytes, {} arrived", data.len()),
                        });
                    }
                    h
                }
                Ok(None) => None,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::debug!("pelican: {url}: no digest check: {e}");
                    None
                }
            },
        };
        match digest::check(digest_header.as_deref(), &data) {
            digest::Verdict::Match => Ok(data),
            digest::Verdict::Absent => {
                tracing::debug!("pelican: {url}: the server sent no crc32c digest; length checked only");
                Ok(data)
            }
            digest::Verdict::Mismatch { ours, theirs } => Err(Error::Integrity {
                what,
                detail: format!("the server's crc32c is {theirs}, the {} bytes received have {ours}", data.len()),
            }),
        }
    }

    /// When every try failed for transport reasons, ask the director afresh next time.
    fn gave_up(&self, path: &str, verb: Verb, e: Error) -> Error {
        if e.last().is_transient() {
            self.forget_route(path, verb);
        }
        e
    }

    /// Size of the object at `path`: PROPFIND Depth 0 on the namespace's collections
    /// URL (HEAD on the object where there is none); `None` when absent.
    pub async fn stat(&self, path: &str) -> Result<Option<Stat>, Error> {
        if self.damaged.lock().unwrap().contains(path) {
            return Ok(None);
        }
        let mut retry = Retry::new(self.policy, format!("stat {path}"));
        loop {
            match self.stat_once(path).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if let Err(e) = retry.again(e).await {
                        return Err(self.gave_up(path, Verb::Get, e));
                    }
                }
            }
        }
    }

    async fn stat_once(&self, path: &str) -> Result<Option<Stat>, Error> {
        let ns = match self.namespace(path).await {
            Ok(ns) => ns,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match &ns.collections_url {
            Some(coll) => {
                let entries = self.propfind(coll, path, "0", &ns).await?;
                Ok(entries.and_then(|e| e.into_iter().next()).map(|e| Stat {
                    size: e.size.unwrap_or(0),
                    is_dir: e.is_dir,
                    modified: e.modified,
                }))
            }
            None => {
                let target = self.resolve(path, Verb::Get).await?;
                let token = if ns.require_token { self.token(true)? } else { None };
                Ok(self.head_object(&target.urls[0], token.as_ref()).await?.map(|(size, _)| Stat { size, is_dir: false, modified: None }))
            }
        }
    }

    /// One PROPFIND; `None` on 404.
    async fn propfind(&self, coll: &str, path: &str, depth: &str, ns: &Namespace) -> Result<Option<Vec<propfind::Entry>>, Error> {
        // Listings go to the origin; send the token when there is one.
        let token = self.token(ns.require_token)?;
        let url = format!("{coll}{}", encode_path(path));
        let what = format!("PROPFIND {url}");
        let resp = self
            .request(reqwest::Method::from_bytes(b"PROPFIND").expect("method"), &url, token.as_ref())
            .header("Depth", depth)
            .header(reqwest::header::CONTENT_TYPE, "application/xml; charset=utf-8")
            .body(propfind::REQUEST_BODY)
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&what, &e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        if status == 404 {
            return Ok(None);
        }
        // Listings are small, but bound them anyway.
        let body = read_limited(resp, 256 << 20, &what).await?;
        match status {
            207 | 200 => {
                let text = String::from_utf8_lossy(&body);
                propfind::parse(&text).map(Some).map_err(|detail| Error::Protocol { what, detail })
            }
            401 | 403 => Err(self.denied(status, Need::Read, path, Some(ns), token.as_ref(), &error_message(&body))),
            _ => Err(Error::Http { what, status, detail: error_message(&body), retry_after }),
        }
    }

    /// Every object under the directory `path`, recursing with PROPFIND Depth 1.
    pub async fn list(&self, path: &str) -> Result<Vec<(String, Stat)>, Error> {
        let dir = path.trim_end_matches('/').to_string();
        let ns = self.namespace_retrying(&dir).await?;
        let Some(coll) = ns.collections_url.clone() else {
            return Err(Error::Protocol {
                what: format!("list {dir}"),
                detail: format!("the namespace {} does not allow listings (the director gives no collections-url)", ns.prefix),
            });
        };
        let mut out = vec![];
        let mut queue = vec![(dir.clone(), 0u32)];
        let mut seen = HashSet::new();
        while let Some((d, depth)) = queue.pop() {
            if !seen.insert(d.clone()) || depth > 32 {
                continue;
            }
            let mut retry = Retry::new(self.policy, format!("PROPFIND {d}"));
            let entries = loop {
                match self.propfind(&coll, &format!("{d}/"), "1", &ns).await {
                    Ok(e) => break e.unwrap_or_default(),
                    Err(e) => retry.again(e).await?,
                }
            };
            // A listing that names nothing at or under the directory asked about means the
            // server writes hrefs some other way: an error, not an empty directory (which
            // would make `baton run` start afresh).
            if !entries.is_empty() && !entries.iter().any(|e| e.path == d || e.path.starts_with(&format!("{d}/"))) {
                return Err(Error::Protocol {
                    what: format!("PROPFIND {d}"),
                    detail: format!("the listing names {} but nothing under {d}", entries[0].path),
                });
            }
            for e in entries {
                // Only what lies under the directory asked about (a hostile or confused
                // server cannot widen the listing).
                let Some(rest) = e.path.strip_prefix(&format!("{d}/")) else { continue };
                if rest.is_empty() {
                    continue;
                }
                if e.is_dir {
                    queue.push((e.path.clone(), depth + 1));
                } else {
                    out.push((e.path, Stat { size: e.size.unwrap_or(0), is_dir: false, modified: e.modified }));
                }
                if out.len() > 50_000_000 {
                    return Err(Error::Protocol { what: format!("list {dir}"), detail: "more than 50 million objects".into() });
                }
            }
        }
        Ok(out)
    }

    async fn namespace_retrying(&self, path: &str) -> Result<Namespace, Error> {
        let mut retry = Retry::new(self.policy, format!("director lookup for {path}"));
        loop {
            match self.namespace(path).await {
                Ok(n) => return Ok(n),
                Err(Error::NotFound { detail, .. }) => {
                    return Err(Error::Protocol {
                        what: format!("director lookup for {path}"),
                        detail: format!("the federation has no namespace for this path{}", note(&detail)),
                    })
                }
                Err(e) => retry.again(e).await?,
            }
        }
    }

    /// Delete `path` (needs storage.modify). Absent objects are fine.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        let mut retry = Retry::new(self.policy, format!("DELETE {path}"));
        let mut server = 0usize;
        loop {
            match self.delete_once(path, server).await {
                Ok(()) => {
                    self.damaged.lock().unwrap().remove(path);
                    return Ok(());
                }
                Err(e) => {
                    server += 1;
                    if let Err(e) = retry.again(e).await {
                        return Err(self.gave_up(path, Verb::Delete, e));
                    }
                }
            }
        }
    }

    async fn delete_once(&self, path: &str, server: usize) -> Result<(), Error> {
        let token = self.token(true)?;
        let target = match self.resolve(path, Verb::Delete).await {
            Err(Error::NotFound { .. }) => return Ok(()),
            other => other?,
        };
        let url = target.urls[server % target.urls.len()].clone();
        let what = format!("DELETE {url}");
        let resp = self.request(reqwest::Method::DELETE, &url, token.as_ref()).send().await.map_err(|e| Error::from_reqwest(&what, &e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let detail = error_message(&resp.bytes().await.unwrap_or_default());
        match status {
            200..=299 | 404 => Ok(()),
            401 | 403 => Err(self.denied(status, Need::Modify, path, target.namespace.as_ref(), token.as_ref(), &detail)),
            _ => Err(Error::Http { what, status, detail, retry_after }),
        }
    }
}

async fn read_limited(mut resp: reqwest::Response, limit: u64, what: &str) -> Result<Bytes, Error> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Error::from_reqwest(what, &e))? {
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::TooLarge { what: what.to_string(), size: buf.len() as u64 + chunk.len() as u64, limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The server part of an object URL the director gave for `path`
/// (`https://cache:8443/test/a%2Bb` for `/test/a+b` → `https://cache:8443`), whatever
/// characters the director chose to escape; `None` when the URL does not end in `path`.
fn server_base(url: &str, path: &str) -> Option<String> {
    let after_scheme = url.find("://")? + 3;
    let path_start = url[after_scheme..].find('/').map(|i| i + after_scheme)?;
    let (host, url_path) = url.split_at(path_start);
    let decoded = percent_encoding::percent_decode_str(url_path).decode_utf8().ok()?;
    let prefix = decoded.strip_suffix(path)?;
    Some(format!("{host}{}", encode_path(prefix)))
}

/// The directory a scope must cover for `path` (`/a/b/c` → `/a/b`).
fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_bases_survive_any_escaping() {
        assert_eq!(server_base("https://c:8443/test/a%2Bb%23c", "/test/a+b#c").as_deref(), Some("https://c:8443"));
        assert_eq!(server_base("https://c:8443/test/a+b%23c", "/test/a+b#c").as_deref(), Some("https://c:8443"));
        assert_eq!(server_base("https://o/prefix/test/x", "/test/x").as_deref(), Some("https://o/prefix"));
        assert_eq!(server_base("https://o/other/y", "/test/x"), None);
        assert_eq!(server_base("https://o", "/test/x"), None);
        let base = server_base("https://c:1/test/a%2Bb", "/test/a+b").unwrap();
        assert_eq!(format!("{base}{}", encode_path("/test/z+y#1")), "https://c:1/test/z+y%231");
    }

    #[test]
    fn parents() {
        assert_eq!(parent_of("/a/b/c"), "/a/b");
        assert_eq!(parent_of("/a"), "/");
    }
}
