//! Store URLs as users write them: `file:///path`, a plain path, `s3://bucket/prefix`,
//! `pelican://host/namespace/path`, `osdf:///namespace/path` (and `stash:///`, and the
//! HTCondor form `name+osdf://...` that names the token).

use std::fmt;
use std::path::PathBuf;

use crate::pelican::url::PelicanUrl;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
    Pelican(PelicanUrl),
}

const SUPPORTED: &str = "use a path, file:///path, s3://bucket/prefix, pelican://host/namespace/path or osdf:///namespace/path";

impl StoreUrl {
    pub fn parse(s: &str) -> Result<StoreUrl, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(format!("empty store URL; {SUPPORTED}"));
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(StoreUrl::Dir(PathBuf::from(s)));
        };
        if PelicanUrl::is_pelican(s) {
            return PelicanUrl::parse(s).map(StoreUrl::Pelican);
        }
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(format!("{s}: a file:// URL needs an absolute path (file:///data/store); {SUPPORTED}"));
                }
                Ok(StoreUrl::Dir(PathBuf::from(rest)))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(format!("{s}: no bucket name (s3://bucket/prefix)"));
                }
                if bucket.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(format!("{s}: a bucket name has no spaces or control characters"));
                }
                let prefix = prefix.trim_matches('/').to_string();
                if prefix.split('/').any(|p| p == ".." || p == ".") {
                    return Err(format!("{s}: the prefix may not contain '.' or '..' parts"));
                }
                // Whitespace at the end would be trimmed off the URL as shown, and so lost.
                if prefix.chars().any(char::is_control) || prefix.ends_with(char::is_whitespace) {
                    return Err(format!("{s}: the prefix may not hold control characters or end with whitespace"));
                }
                Ok(StoreUrl::S3 { bucket: bucket.to_string(), prefix })
            }
            other => Err(format!("{s}: unknown store scheme '{other}://'; {SUPPORTED}")),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A path holding `://` reads back as a URL; as a file:// URL it reads back as
            // itself (only absolute paths can hold it: `a://b` never parses as a path).
            StoreUrl::Dir(p) if p.is_absolute() && p.to_string_lossy().contains("://") => write!(f, "file://{}", p.display()),
            StoreUrl::Dir(p) => write!(f, "{}", p.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::Pelican(u) => write!(f, "{u}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(StoreUrl::parse("/data/s").unwrap(), StoreUrl::Dir("/data/s".into()));
        assert_eq!(StoreUrl::parse("rel/s").unwrap(), StoreUrl::Dir("rel/s".into()));
        assert_eq!(StoreUrl::parse("file:///data/s").unwrap(), StoreUrl::Dir("/data/s".into()));
        assert_eq!(StoreUrl::parse("s3://b/p/q/").unwrap(), StoreUrl::S3 { bucket: "b".into(), prefix: "p/q".into() });
        assert_eq!(StoreUrl::parse("s3://b").unwrap(), StoreUrl::S3 { bucket: "b".into(), prefix: "".into() });
    }

    #[test]
    fn pelican_and_osdf_urls_are_stores_and_round_trip() {
        for (written, shown) in [
            ("pelican://fed.example.org/ns/ckpt", "pelican://fed.example.org/ns/ckpt"),
            ("pelican://127.0.0.1:8443/test/x/", "pelican://127.0.0.1:8443/test/x"),
            ("osdf:///ospool/ap40/data/alice/ckpt", "osdf:///ospool/ap40/data/alice/ckpt"),
            ("osdf://ospool/ap40/x", "osdf:///ospool/ap40/x"),
            ("stash:///osgconnect/x", "stash:///osgconnect/x"),
            ("mytoken+osdf:///ns/x", "mytoken+osdf:///ns/x"),
        ] {
            let u = StoreUrl::parse(written).unwrap();
            assert!(matches!(u, StoreUrl::Pelican(_)), "{written}");
            assert_eq!(u.to_string(), shown);
            assert_eq!(StoreUrl::parse(&u.to_string()).unwrap(), u, "{written}");
        }
        assert!(StoreUrl::parse("pelican:///ns").unwrap_err().contains("federation host"));
        assert!(StoreUrl::parse("osdf:///").unwrap_err().contains("namespace"));
    }

    #[test]
    fn a_directory_whose_path_holds_a_scheme_separator_round_trips() {
        // Found by the store_url fuzz target: shown as a bare path, this read back as an
        // unknown scheme (or as a Pelican URL with a bad token name).
        for written in ["file:///d/pelican://h/ns", "file:///a+osdf://ns/x"] {
            let u = StoreUrl::parse(written).unwrap();
            assert!(matches!(u, StoreUrl::Dir(_)), "{written}");
            assert_eq!(StoreUrl::parse(&u.to_string()), Ok(u), "{written}");
        }
    }

    #[test]
    fn s3_prefixes_that_cannot_be_shown_back_are_refused() {
        // Found by the store_url fuzz target: the prefix "p//\u{b}" was shown as
        // s3://b/p//\u{b}, which reads back as the prefix "p".
        assert!(StoreUrl::parse("s3://b/p//\u{b}/").is_err());
        assert!(StoreUrl::parse("s3://b/p /").is_err());
        assert!(StoreUrl::parse("s3://b/p\tq").is_err());
        // And the bucket, found next: s3://bp\u{b}/ was shown as s3://bp\u{b}, read back as "bp".
        assert!(StoreUrl::parse("s3://bp\u{b}/").is_err());
        assert!(StoreUrl::parse("s3://b p/x").is_err());
        let u = StoreUrl::parse("s3://b/with space/x").unwrap();
        assert_eq!(StoreUrl::parse(&u.to_string()), Ok(u));
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        assert!(StoreUrl::parse("gs://b").unwrap_err().contains("unknown store scheme"));
        assert!(StoreUrl::parse("file://rel").is_err());
        assert!(StoreUrl::parse("s3:///p").is_err());
        assert!(StoreUrl::parse("s3://b/../x").is_err());
        assert!(StoreUrl::parse("").is_err());
    }
}
