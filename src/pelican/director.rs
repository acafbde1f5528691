//! Asking the director where an object lives: `<director><path>` with the verb meant
//! (GET for reads, stat and list; PUT for uploads; DELETE for deletes), redirects not
//! followed. The answer is a 307 with `Location`, `Link` (servers in `pri` order) and
//! `X-Pelican-Namespace`. baton never sends its token to the director (so it never comes
//! back in a `Location` as `?authz=`).

use reqwest::header::HeaderMap;

use super::url::encode_path;
use super::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    /// A read from the origin, past every cache (`/api/v1.0/director/origin/<path>`): for a second look when
    /// what a cache served did not hash to what was stored.
    GetDirect,
    Put,
    Delete,
}

impl Verb {
    pub fn method(self) -> reqwest::Method {
        match self {
            Verb::Get | Verb::GetDirect => reqwest::Method::GET,
            Verb::Put => reqwest::Method::PUT,
            Verb::Delete => reqwest::Method::DELETE,
        }
    }
}

/// `X-Pelican-Namespace: namespace=/ns, require-token=true, collections-url=https://origin:port`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    pub prefix: String,
    pub require_token: bool,
    pub collections_url: Option<String>,
}

impl Namespace {
    /// Does this namespace hold `path`? (Path-segment prefix.)
    pub fn holds(&self, path: &str) -> bool {
        let p = self.prefix.trim_end_matches('/');
        p.is_empty() || path == p || path.starts_with(&format!("{p}/"))
    }
}

pub fn parse_namespace(header: &str) -> Option<Namespace> {
    let mut ns = Namespace::default();
    let mut seen = false;
    for part in header.split(',') {
        let Some((k, v)) = part.split_once('=') else { continue };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "namespace" => {
                ns.prefix = v.to_string();
                seen = true;
            }
            "require-token" => ns.require_token = v.eq_ignore_ascii_case("true"),
            "collections-url" if !v.is_empty() => ns.collections_url = Some(v.trim_end_matches('/').to_string()),
            _ => {}
        }
    }
    seen.then_some(ns)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub url: String,
    pub pri: u32,
    pub depth: Option<u32>,
}

/// `Link: <https://c1/ns/o>; rel="duplicate"; pri=1; depth=2, <https://c2/ns/o>; rel="duplicate"; pri=2`,
/// sorted by `pri` (stable for equal values); entries with another `rel` are left out.
pub fn parse_links(header: &str) -> Vec<Link> {
    let mut out = vec![];
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { break };
        let url = rest[open + 1..open + close].trim().to_string();
        rest = &rest[open + close + 1..];
        let params_end = rest.find(',').unwrap_or(rest.len());
        let params = &rest[..params_end];
        rest = &rest[params_end..];
        let (mut pri, mut depth, mut rel) = (u32::MAX, None, None);
        for p in params.split(';') {
            let Some((k, v)) = p.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "pri" => pri = v.parse().unwrap_or(u32::MAX),
                "depth" => depth = v.parse().ok(),
                "rel" => rel = Some(v.to_ascii_lowercase()),
                _ => {}
            }
        }
        if rel.as_deref().is_none_or(|r| r == "duplicate") && !url.is_empty() {
            out.push(Link { url, pri, depth });
        }
    }
    out.sort_by_key(|l| l.pri);
    out
}

/// A director's answer for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Object URLs to try, in order: `Link` by `pri`, then `Location` if not among them.
    pub servers: Vec<String>,
    pub namespace: Option<Namespace>,
}

/// Drop any query (an `authz=` would carry a token) and keep https URLs only.
fn clean(url: &str) -> Option<String> {
    let u = url.split(['?', '#']).next()?.trim();
    u.starts_with("https://").then(|| u.to_string())
}

pub fn parse_answer(headers: &HeaderMap) -> Result<Answer, String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut servers: Vec<String> = get("link").map(parse_links).unwrap_or_default().into_iter().filter_map(|l| clean(&l.url)).collect();
    if let Some(loc) = get("location") {
        match clean(loc) {
            Some(l) if !servers.contains(&l) => servers.push(l),
            Some(_) => {}
            None if servers.is_empty() => return Err("the director redirected to a URL that is not https://".into()),
            None => {}
        }
    }
    if servers.is_empty() {
        return Err("the director's redirect names no server (no Location or Link)".into());
    }
    Ok(Answer { servers, namespace: get("x-pelican-namespace").and_then(parse_namespace) })
}

/// Ask the director once (the caller retries).
pub async fn ask(http: &reqwest::Client, director: &str, path: &str, verb: Verb) -> Result<Answer, Error> {
    // The director's origin endpoint redirects to an origin, never a cache (documented in
    // `pelican director --help`; pelicanfs reads directly the same way).
    let url = match verb {
        Verb::GetDirect => format!("{director}/api/v1.0/director/origin{}", encode_path(path)),
        _ => format!("{director}{}", encode_path(path)),
    };
    let what = format!("director {} {path}", verb.method());
    let mut req = http.request(verb.method(), &url);
    if verb == Verb::Put {
        req = req.header(reqwest::header::CONTENT_LENGTH, "0");
    }
    let resp = req.send().await.map_err(|e| Error::from_reqwest(&what, &e))?;
    let status = resp.status().as_u16();
    if (300..400).contains(&status) {
        return parse_answer(resp.headers()).map_err(|detail| Error::Protocol { what, detail });
    }
    let retry_after = super::retry_after(resp.headers());
    let body = resp.bytes().await.unwrap_or_default();
    let detail = super::error_message(&body);
    Err(match status {
        404 => Error::NotFound { path: path.to_string(), detail },
        405 => Error::Http {
            what,
            status,
            detail: format!(
                "no origin in the federation accepts {} for this path{}",
                verb.method(),
                if detail.is_empty() { String::new() } else { format!(" ({detail})") }
            ),
            retry_after: None,
        },
        _ => Error::Http { what, status, detail, retry_after },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn links_in_pri_order() {
        let h = r#"<https://cache2.example:8443/ns/obj>; rel="duplicate"; pri=2; depth=3, <https://cache1.example:8443/ns/obj>; rel="duplicate"; pri=1; depth=3, <https://other/x>; rel="self", <https://origin:8444/ns/obj>;rel=duplicate;pri=3"#;
        let l = parse_links(h);
        let urls: Vec<_> = l.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(urls, vec!["https://cache1.example:8443/ns/obj", "https://cache2.example:8443/ns/obj", "https://origin:8444/ns/obj"]);
        assert_eq!((l[0].pri, l[0].depth), (1, Some(3)));
        assert_eq!(parse_links(""), vec![]);
        assert_eq!(parse_links("<https://a/x>").len(), 1, "no rel and no pri still counts");
    }

    #[test]
    fn namespace_header() {
        let n = parse_namespace("namespace=/test, require-token=true, collections-url=https://127.0.0.1:8444/").unwrap();
        assert_eq!(n, Namespace { prefix: "/test".into(), require_token: true, collections_url: Some("https://127.0.0.1:8444".into()) });
        let n = parse_namespace("namespace=/pub,require-token=false").unwrap();
        assert_eq!((n.require_token, n.collections_url.as_deref()), (false, None));
        assert!(parse_namespace("require-token=true").is_none());
        assert!(n.holds("/pub/x") && n.holds("/pub") && !n.holds("/public/x"));
    }

    #[test]
    fn answer_orders_links_then_location_and_drops_authz() {
        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("https://cache1:8443/ns/obj?authz=SECRET"));
        h.insert(
            "link",
            HeaderValue::from_static(
                r#"<https://cache2:8443/ns/obj>; rel="duplicate"; pri=2, <https://cache1:8443/ns/obj>; rel="duplicate"; pri=1"#,
            ),
        );
        h.insert("x-pelican-namespace", HeaderValue::from_static("namespace=/ns, require-token=false"));
        let a = parse_answer(&h).unwrap();
        assert_eq!(a.servers, vec!["https://cache1:8443/ns/obj", "https://cache2:8443/ns/obj"]);
        assert!(!format!("{a:?}").contains("SECRET"));
        assert_eq!(a.namespace.unwrap().prefix, "/ns");

        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("https://origin:8444/ns/obj"));
        assert_eq!(parse_answer(&h).unwrap().servers, vec!["https://origin:8444/ns/obj"]);
        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("http://origin/ns/obj"));
        assert!(parse_answer(&h).is_err());
        assert!(parse_answer(&HeaderMap::new()).is_err());
    }
}
