//! Pelican object URLs as users (and HTCondor submit files) write them:
//! `pelican://<federation host>/<namespace>/<path>`, `osdf:///<namespace>/<path>`,
//! `stash:///<namespace>/<path>`, optionally prefixed with a token name (`name+osdf://`).
//! `osdf://foo/bar` means `osdf:///foo/bar`, as in the Pelican client.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use std::fmt;

/// The federation behind `osdf://` and `stash://` URLs.
pub const OSDF_HOST: &str = "osg-htc.org";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Pelican,
    Osdf,
    Stash,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Pelican => "pelican",
            Scheme::Osdf => "osdf",
            Scheme::Stash => "stash",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PelicanUrl {
    pub scheme: Scheme,
    /// HTCondor's `name+osdf://` form: which `$_CONDOR_CREDS/<name>.use` holds the token.
    pub token_name: Option<String>,
    /// Federation host (`host` or `host:port`): discovery starts at `https://<host>/`.
    pub host: String,
    /// Decoded object path under the federation, `/namespace/prefix`, no trailing `/`.
    pub path: String,
}

/// Characters escaped when a decoded path goes back into a URL (`/` stays).
pub const PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// Percent-encode a decoded path for use in a request URL.
pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_ESCAPES).to_string()
}

impl PelicanUrl {
    /// True when `s` names a Pelican store (so the caller can route it here).
    pub fn is_pelican(s: &str) -> bool {
        let Some((scheme, _)) = s.trim().split_once("://") else { return false };
        let scheme = scheme.rsplit('+').next().unwrap_or(scheme).to_ascii_lowercase();
        matches!(scheme.as_str(), "pelican" | "osdf" | "stash")
    }

    pub fn parse(s: &str) -> Result<PelicanUrl, String> {
        let s = s.trim();
        let (scheme_part, rest) = s.split_once("://").ok_or_else(|| format!("{s}: not a pelican:// or osdf:// URL"))?;
        let (token_name, scheme) = match scheme_part.rsplit_once('+') {
            Some((name, scheme)) => {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
                    return Err(format!("{s}: the token name before '+' must be letters, digits, '_', '-' or '.'"));
                }
                (Some(name.to_string()), scheme)
            }
            None => (None, scheme_part),
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "pelican" => Scheme::Pelican,
            "osdf" => Scheme::Osdf,
            "stash" => Scheme::Stash,
            other => return Err(format!("{s}: unknown scheme '{other}://' (pelican://host/namespace/path, osdf:///namespace/path)")),
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(format!("{s}: query strings and fragments are not supported in store URLs"));
        }
        let (host, raw_path) = match scheme {
            Scheme::Pelican => {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                if host.is_empty() {
                    return Err(format!(
                        "{s}: a pelican:// URL needs the federation host (pelican://federation.example.org/namespace/path)"
                    ));
                }
                if host.contains('@') {
                    return Err(format!("{s}: credentials do not belong in the URL; give a token file (--token-file, BEARER_TOKEN_FILE)"));
                }
                (host.to_ascii_lowercase(), path)
            }
            // `osdf://foo/bar` is `osdf:///foo/bar`: the "host" is the first path segment.
            Scheme::Osdf | Scheme::Stash => (OSDF_HOST.to_string(), rest.trim_start_matches('/')),
        };
        let decoded =
            percent_decode_str(raw_path).decode_utf8().map_err(|_| format!("{s}: the path is not valid UTF-8 once percent-decoded"))?;
        let mut parts = vec![];
        for part in decoded.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(format!("{s}: the path may not contain '.' or '..' parts"));
            }
            if part.chars().any(char::is_control) {
                return Err(format!("{s}: the path may not contain control characters"));
            }
            parts.push(part);
        }
        if parts.is_empty() {
            return Err(format!(
                "{s}: no namespace in the URL ({}://{}/<namespace>/<path>)",
                scheme.as_str(),
                if scheme == Scheme::Pelican { host.as_str() } else { "" }
            ));
        }
        Ok(PelicanUrl { scheme, token_name, host, path: format!("/{}", parts.join("/")) })
    }

    /// `https://<host>`, where discovery starts.
    pub fn federation_base(&self) -> String {
        format!("https://{}", self.host)
    }
}

impl fmt::Display for PelicanUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.token_name {
            write!(f, "{n}+")?;
        }
        match self.scheme {
            Scheme::Pelican => write!(f, "pelican://{}{}", self.host, encode_path(&self.path)),
            s => write!(f, "{}://{}", s.as_str(), encode_path(&self.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PelicanUrl {
        PelicanUrl::parse(s).unwrap()
    }

    #[test]
    fn the_forms_users_write() {
        let u = p("pelican://fed.example.org/ns/ckpt/run/");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.path.as_str(), u.token_name.as_deref()),
            (Scheme::Pelican, "fed.example.org", "/ns/ckpt/run", None)
        );
        assert_eq!(u.to_string(), "pelican://fed.example.org/ns/ckpt/run");
        let u = p("pelican://127.0.0.1:8444/test/x");
        assert_eq!((u.host.as_str(), u.path.as_str()), ("127.0.0.1:8444", "/test/x"));
        assert_eq!(u.federation_base(), "https://127.0.0.1:8444");
        let u = p("osdf:///ospool/ap40/data/alice/ckpt");
        assert_eq!((u.scheme, u.host.as_str(), u.path.as_str()), (Scheme::Osdf, OSDF_HOST, "/ospool/ap40/data/alice/ckpt"));
        assert_eq!(u.to_string(), "osdf:///ospool/ap40/data/alice/ckpt");
        let u = p("stash:///osgconnect/public/x");
        assert_eq!((u.scheme, u.host.as_str(), u.path.as_str()), (Scheme::Stash, OSDF_HOST, "/osgconnect/public/x"));
    }

    #[test]
    fn osdf_with_a_host_part_is_normalised() {
        assert_eq!(p("osdf://foo/bar"), p("osdf:///foo/bar"));
        assert_eq!(p("osdf://foo/bar").to_string(), "osdf:///foo/bar");
        assert_eq!(p("OSDF:////foo//bar/").path, "/foo/bar");
    }

    #[test]
    fn token_name_prefix() {
        let u = p("myaccess.read+osdf:///ns/x");
        assert_eq!(u.token_name.as_deref(), Some("myaccess.read"));
        assert_eq!(u.scheme, Scheme::Osdf);
        assert_eq!(u.to_string(), "myaccess.read+osdf:///ns/x");
        assert_eq!(p("alice+pelican://h/ns").token_name.as_deref(), Some("alice"));
        assert!(PelicanUrl::is_pelican("alice+osdf:///ns"));
        assert!(PelicanUrl::is_pelican("stash:///ns"));
        assert!(!PelicanUrl::is_pelican("s3://b"));
    }

    #[test]
    fn percent_encoding_round_trips() {
        let u = p("pelican://h/ns/with%20space/%C3%A9t%C3%A9");
        assert_eq!(u.path, "/ns/with space/été");
        assert_eq!(u.to_string(), "pelican://h/ns/with%20space/%C3%A9t%C3%A9");
        assert_eq!(p(&u.to_string()), u);
        assert_eq!(encode_path("/a b/c%d?e#f"), "/a%20b/c%25d%3Fe%23f");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert!(PelicanUrl::parse("pelican:///ns/x").unwrap_err().contains("federation host"));
        assert!(PelicanUrl::parse("pelican://h").unwrap_err().contains("no namespace"));
        assert!(PelicanUrl::parse("osdf:///").unwrap_err().contains("no namespace"));
        assert!(PelicanUrl::parse("osdf:///ns/../x").unwrap_err().contains(".."));
        assert!(PelicanUrl::parse("osdf:///ns/x?authz=abc").unwrap_err().contains("query"));
        assert!(PelicanUrl::parse("pelican://user:tok@h/ns").unwrap_err().contains("token file"));
        assert!(PelicanUrl::parse("a b+osdf:///ns").is_err());
        assert!(PelicanUrl::parse("+osdf:///ns").is_err());
    }
}
