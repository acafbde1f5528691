//! Bearer tokens: where to find one (the Pelican client's search order), and what a
//! token says about itself (expiry, scopes) so that refusals can be explained.
//! A token never appears in a URL, a log line, an error message or `Debug` output.

use base64::Engine as _;
use std::path::{Path, PathBuf};

/// A bearer token. `Debug` and `Display` print `<redacted>`; only `secret()` gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What an unverified JWT payload says (the server does the verifying).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Expiry, seconds since the epoch.
    pub exp: Option<i64>,
    /// WLCG storage scopes, e.g. `storage.read:/`, `storage.create:/ckpt`.
    pub scopes: Vec<String>,
}

impl Token {
    pub fn new(value: &str) -> Option<Token> {
        let v = value.trim();
        (!v.is_empty()).then(|| Token(v.to_string()))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The claims of a JWT (`header.payload.signature`); `None` for opaque tokens.
    pub fn claims(&self) -> Option<Claims> {
        let payload = self.0.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let exp = v.get("exp").and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)));
        let scopes = match v.get("scope").or_else(|| v.get("scp")) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
            _ => vec![],
        };
        Some(Claims { exp, scopes })
    }
}

impl Claims {
    /// Does a scope `<op>:<path>` cover `path` (relative to the namespace, `/`-rooted)?
    /// `storage.modify` implies `storage.create` (WLCG profile).
    pub fn allows(&self, op: &str, path: &str) -> bool {
        self.scopes.iter().any(|s| {
            let (name, base) = s.split_once(':').unwrap_or((s.as_str(), "/"));
            let op_ok = name == op || (op == "storage.create" && name == "storage.modify");
            let base = base.trim_end_matches('/');
            op_ok && (base.is_empty() || path == base || path.starts_with(&format!("{base}/")))
        })
    }

    /// The storage scopes only (other claims in `scope` are not interesting here).
    pub fn storage_scopes(&self) -> Vec<&str> {
        self.scopes.iter().map(String::as_str).filter(|s| s.starts_with("storage.")).collect()
    }
}

/// A token and where it came from (a description safe to print).
#[derive(Debug, Clone)]
pub struct Found {
    pub token: Token,
    pub source: String,
}

/// No token anywhere: every place looked, in order, with why it did not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub looked: Vec<String>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no bearer token found; baton looked at: {}", self.looked.join("; "))
    }
}

/// An explicitly named token file that cannot be used is an error of its own: the user
/// asked for that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindError {
    Missing(Missing),
    Explicit { path: PathBuf, detail: String },
}

impl std::fmt::Display for FindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FindError::Missing(m) => m.fmt(f),
            FindError::Explicit { path, detail } => write!(f, "the token file {} ({detail})", path.display()),
        }
    }
}

enum Read {
    Ok(Token),
    Absent,
    Empty,
    Unreadable(String),
}

fn read_token_file(path: &Path) -> Read {
    match std::fs::read_to_string(path) {
        Ok(text) => match Token::new(&text) {
            Some(t) => Read::Ok(t),
            None => Read::Empty,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Read::Absent,
        Err(e) => Read::Unreadable(e.kind().to_string()),
    }
}

/// Look for a token the way the Pelican client does, re-reading files every time:
/// 1. the explicit token file (`--token-file`, `BATON_TOKEN_FILE`);
/// 2. `BEARER_TOKEN` (the token itself);
/// 3. `BEARER_TOKEN_FILE`;
/// 4. `$XDG_RUNTIME_DIR/bt_u<uid>`;
/// 5. `/tmp/bt_u<uid>`;
/// 6. `TOKEN` (a path);
/// 7. `$_CONDOR_CREDS/<name>.use` (dots in the name become underscores) for a
///    `name+osdf://` URL, else `scitokens.use`, else any other file there not starting
///    with a dot.
///
/// `env` looks up a variable (so tests need not touch the process environment), `tmp`
/// is `/tmp` outside tests.
pub fn find(
    explicit: Option<&Path>,
    token_name: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    uid: u32,
    tmp: &Path,
) -> Result<Found, FindError> {
    let mut looked = vec![];
    let try_file = |label: String, path: &Path, looked: &mut Vec<String>| -> Option<Found> {
        match read_token_file(path) {
            Read::Ok(token) => return Some(Found { token, source: label }),
            Read::Absent => looked.push(format!("{label} (no such file)")),
            Read::Empty => looked.push(format!("{label} (empty)")),
            Read::Unreadable(why) => looked.push(format!("{label} ({why})")),
        }
        None
    };
    if let Some(p) = explicit {
        return match read_token_file(p) {
            Read::Ok(token) => Ok(Found { token, source: format!("token file {}", p.display()) }),
            Read::Absent => Err(FindError::Explicit { path: p.to_path_buf(), detail: "does not exist".into() }),
            Read::Empty => Err(FindError::Explicit { path: p.to_path_buf(), detail: "is empty".into() }),
            Read::Unreadable(why) => Err(FindError::Explicit { path: p.to_path_buf(), detail: format!("cannot be read: {why}") }),
        };
    }
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    match set("BEARER_TOKEN") {
        Some(v) => match Token::new(&v) {
            Some(token) => return Ok(Found { token, source: "BEARER_TOKEN".into() }),
            None => looked.push("BEARER_TOKEN (blank)".into()),
        },
        None => looked.push("BEARER_TOKEN (not set)".into()),
    }
    match set("BEARER_TOKEN_FILE") {
        Some(p) => {
            if let Some(f) = try_file(format!("BEARER_TOKEN_FILE={p}"), Path::new(&p), &mut looked) {
                return Ok(f);
            }
        }
        None => looked.push("BEARER_TOKEN_FILE (not set)".into()),
    }
    match set("XDG_RUNTIME_DIR") {
        Some(d) => {
            let p = Path::new(&d).join(format!("bt_u{uid}"));
            if let Some(f) = try_file(p.display().to_string(), &p, &mut looked) {
                return Ok(f);
            }
        }
        None => looked.push(format!("$XDG_RUNTIME_DIR/bt_u{uid} (XDG_RUNTIME_DIR not set)")),
    }
    let p = tmp.join(format!("bt_u{uid}"));
    if let Some(f) = try_file(p.display().to_string(), &p, &mut looked) {
        return Ok(f);
    }
    match set("TOKEN") {
        Some(p) => {
            if let Some(f) = try_file(format!("TOKEN={p}"), Path::new(&p), &mut looked) {
                return Ok(f);
            }
        }
        None => looked.push("TOKEN (not set)".into()),
    }
    match set("_CONDOR_CREDS") {
        Some(d) => {
            let dir = Path::new(&d);
            if let Some(name) = token_name {
                let p = dir.join(format!("{}.use", name.replace('.', "_")));
                if let Some(f) = try_file(p.display().to_string(), &p, &mut looked) {
                    return Ok(f);
                }
            }
            let p = dir.join("scitokens.use");
            if let Some(f) = try_file(p.display().to_string(), &p, &mut looked) {
                return Ok(f);
            }
            let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            others.sort();
            for p in others {
                if let Some(f) = try_file(p.display().to_string(), &p, &mut looked) {
                    return Ok(f);
                }
            }
            looked.push(format!("other files in {d} (none usable)"));
        }
        None => looked.push("$_CONDOR_CREDS (not set: not inside an HTCondor job with credentials)".into()),
    }
    Err(FindError::Missing(Missing { looked }))
}

/// `find` against the real environment.
pub fn find_here(explicit: Option<&Path>, token_name: Option<&str>) -> Result<Found, FindError> {
    let uid = nix::unistd::getuid().as_raw();
    find(explicit, token_name, &|k| std::env::var(k).ok(), uid, Path::new("/tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode(r#"{"alg":"none"}"#), e.encode(payload))
    }

    struct Env {
        dir: tempfile::TempDir,
        vars: HashMap<String, String>,
    }

    impl Env {
        fn new() -> Env {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
            Env { dir, vars: HashMap::new() }
        }
        fn file(&self, rel: &str, body: &str) -> String {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        }
        fn set(&mut self, k: &str, v: &str) {
            self.vars.insert(k.into(), v.into());
        }
        fn find(&self, explicit: Option<&str>, name: Option<&str>) -> Result<Found, FindError> {
            let vars = self.vars.clone();
            find(explicit.map(Path::new), name, &move |k| vars.get(k).cloned(), 1234, &self.dir.path().join("tmp"))
        }
        fn found(&self, explicit: Option<&str>, name: Option<&str>) -> (String, String) {
            let f = self.find(explicit, name).unwrap();
            (f.token.secret().to_string(), f.source)
        }
    }

    #[test]
    fn search_order_is_the_pelican_clients() {
        let mut e = Env::new();
        // Fill every source, then peel them off from the top.
        let explicit = e.file("explicit", "t-explicit\n");
        e.set("BEARER_TOKEN", "  t-env \n");
        e.set("BEARER_TOKEN_FILE", &e.file("btf", "t-btf"));
        e.set("XDG_RUNTIME_DIR", &e.dir.path().join("xdg").display().to_string());
        e.file("xdg/bt_u1234", "t-xdg");
        e.file("tmp/bt_u1234", "t-tmp");
        e.set("TOKEN", &e.file("tokenpath", "t-token"));
        e.set("_CONDOR_CREDS", &e.dir.path().join("creds").display().to_string());
        e.file("creds/my_access.use", "t-named");
        e.file("creds/scitokens.use", "t-scitokens");
        e.file("creds/.hidden", "t-hidden");
        e.file("creds/zother.use", "t-other");

        assert_eq!(e.found(Some(&explicit), None).0, "t-explicit");
        assert_eq!(e.found(None, None), ("t-env".into(), "BEARER_TOKEN".into()));
        e.vars.remove("BEARER_TOKEN");
        assert_eq!(e.found(None, None).0, "t-btf");
        e.vars.remove("BEARER_TOKEN_FILE");
        assert_eq!(e.found(None, None).0, "t-xdg");
        std::fs::remove_file(e.dir.path().join("xdg/bt_u1234")).unwrap();
        assert_eq!(e.found(None, None).0, "t-tmp");
        std::fs::remove_file(e.dir.path().join("tmp/bt_u1234")).unwrap();
        assert_eq!(e.found(None, None).0, "t-token");
        e.vars.remove("TOKEN");
        assert_eq!(e.found(None, Some("my.access")).0, "t-named", "dots become underscores");
        assert_eq!(e.found(None, None).0, "t-scitokens");
        std::fs::remove_file(e.dir.path().join("creds/scitokens.use")).unwrap();
        std::fs::remove_file(e.dir.path().join("creds/my_access.use")).unwrap();
        assert_eq!(e.found(None, None).0, "t-other", "any non-dot file, never .hidden");
        assert_eq!(e.found(None, Some("absent")).0, "t-other");
    }

    #[test]
    fn a_missing_token_names_every_place_looked() {
        let mut e = Env::new();
        e.set("BEARER_TOKEN_FILE", "/nonexistent/btf");
        e.set("_CONDOR_CREDS", &e.dir.path().join("creds").display().to_string());
        e.file("creds/.only-hidden", "x");
        e.file("creds/scitokens.use", "   \n");
        let err = e.find(None, Some("x.y")).unwrap_err().to_string();
        for place in [
            "BEARER_TOKEN (not set)",
            "BEARER_TOKEN_FILE=/nonexistent/btf (no such file)",
            "XDG_RUNTIME_DIR not set",
            "tmp/bt_u1234 (no such file)",
            "TOKEN (not set)",
            "creds/x_y.use (no such file)",
            "creds/scitokens.use (empty)",
            "other files in",
        ] {
            assert!(err.contains(place), "{place:?} missing from: {err}");
        }
        let err = e.find(Some("/nonexistent/explicit"), None).unwrap_err();
        assert!(matches!(err, FindError::Explicit { .. }));
        assert!(err.to_string().contains("/nonexistent/explicit (does not exist)"));
    }

    #[test]
    fn tokens_are_redacted_everywhere_they_could_be_printed() {
        let t = Token::new("eyJsecret.payload.sig").unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(format!("{t}"), "<redacted>");
        let f = Found { token: t, source: "BEARER_TOKEN".into() };
        assert!(!format!("{f:?}").contains("eyJsecret"));
    }

    #[test]
    fn claims_and_scopes() {
        let t = Token::new(&jwt(r#"{"exp":1700000000,"scope":"storage.read:/ storage.create:/ckpt openid"}"#)).unwrap();
        let c = t.claims().unwrap();
        assert_eq!(c.exp, Some(1700000000));
        assert_eq!(c.storage_scopes(), vec!["storage.read:/", "storage.create:/ckpt"]);
        assert!(c.allows("storage.read", "/anything"));
        assert!(c.allows("storage.create", "/ckpt/run/x"));
        assert!(c.allows("storage.create", "/ckpt"));
        assert!(!c.allows("storage.create", "/ckpt2/x"));
        assert!(!c.allows("storage.modify", "/ckpt/x"));
        let m = Token::new(&jwt(r#"{"scope":"storage.modify:/"}"#)).unwrap().claims().unwrap();
        assert!(m.allows("storage.create", "/x"), "modify implies create");
        assert_eq!(Token::new("opaque-token").unwrap().claims(), None);
        assert!(Token::new(" \n").is_none());
    }
}
