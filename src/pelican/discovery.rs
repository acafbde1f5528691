//! Federation discovery: `GET https://<host>/.well-known/pelican-configuration`, retried
//! three times like the Pelican client, and kept for the life of the process.

use serde::Deserialize;
use std::time::Duration;

use super::Error;
use crate::error::Classify;

pub const WELL_KNOWN: &str = "/.well-known/pelican-configuration";

/// The fields of the discovery document baton uses (others are ignored).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Configuration {
    #[serde(default)]
    pub director_endpoint: String,
    #[serde(default)]
    pub discovery_endpoint: String,
    #[serde(default)]
    pub namespace_registration_endpoint: String,
    #[serde(default)]
    pub jwks_uri: String,
}

/// Where requests go once discovery is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Federation {
    /// Ask this director (`https://host:port`, no trailing `/`) where objects live.
    Director(String),
    /// An empty `director_endpoint`: a standalone origin; talk to the discovery host.
    Standalone(String),
}

pub fn parse(base: &str, body: &[u8]) -> Result<Federation, String> {
    let c: Configuration = serde_json::from_slice(body).map_err(|e| format!("not a Pelican discovery document ({e})"))?;
    let d = c.director_endpoint.trim().trim_end_matches('/');
    if d.is_empty() {
        return Ok(Federation::Standalone(base.trim_end_matches('/').to_string()));
    }
    if !d.starts_with("https://") {
        return Err(format!("the director endpoint {d:?} is not an https:// URL"));
    }
    Ok(Federation::Director(d.to_string()))
}

/// Fetch and parse the discovery document, three tries.
pub async fn discover(http: &reqwest::Client, base: &str) -> Result<Federation, Error> {
    let url = format!("{base}{WELL_KNOWN}");
    let what = format!("federation discovery ({url})");
    let mut last = None;
    let start = std::time::Instant::now();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(if attempt == 1 { 1 } else { 3 })).await;
        }
        let resp = match http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => {
                let e = Error::from_reqwest(&what, &e);
                if !e.is_transient() {
                    return Err(e);
                }
                last = Some(e);
                continue;
            }
        };
        let status = resp.status().as_u16();
        let retry_after = super::retry_after(resp.headers());
        if status != 200 {
            let body = resp.bytes().await.unwrap_or_default();
            let e = Error::Http { what: what.clone(), status, detail: super::error_message(&body), retry_after };
            if !e.is_transient() {
                return Err(e);
            }
            last = Some(e);
            continue;
        }
        match resp.bytes().await {
            Ok(body) => return parse(base, &body).map_err(|detail| Error::Protocol { what, detail }),
            Err(e) => last = Some(Error::from_reqwest(&what, &e)),
        }
    }
    // Three tries, as the Pelican client; callers do not retry discovery on top of that.
    let last = last.unwrap_or(Error::Protocol { what, detail: "no answer".into() });
    Err(Error::GaveUp { tries: 3, secs: start.elapsed().as_secs_f64(), last: Box::new(last) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn director_or_standalone() {
        let doc = br#"{"director_endpoint":"https://osdf-director.osg-htc.org/","namespace_registration_endpoint":"https://osdf-registry.osg-htc.org","jwks_uri":"https://osg-htc.org/osdf/public_signing_key.jwks","broker_endpoint":""}"#;
        assert_eq!(parse("https://osg-htc.org", doc).unwrap(), Federation::Director("https://osdf-director.osg-htc.org".into()));
        assert_eq!(
            parse("https://origin:8443/", br#"{"director_endpoint":""}"#).unwrap(),
            Federation::Standalone("https://origin:8443".into())
        );
        assert_eq!(parse("https://origin:8443", b"{}").unwrap(), Federation::Standalone("https://origin:8443".into()));
        assert!(parse("https://h", br#"{"director_endpoint":"http://plain"}"#).unwrap_err().contains("https"));
        assert!(parse("https://h", b"<html>").unwrap_err().contains("discovery document"));
    }
}
