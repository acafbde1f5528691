//! WebDAV `PROPFIND` (Depth 0 and 1) answers: 207 Multi-Status XML. Listing recurses
//! client-side with Depth 1, as the Pelican client does.
//!
//! Tolerated: hrefs that are absolute URLs or paths, percent-encoded; any namespace
//! prefix (`D:`, `lp1:`, none); entries without `resourcetype` (XRootD-style), taken as
//! collections when the href ends in `/`; properties under a non-200 `propstat`
//! ignored.

use percent_encoding::percent_decode_str;
use quick_xml::events::Event;
use quick_xml::Reader;

/// The request body: the properties baton uses.
pub const REQUEST_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/><D:getlastmodified/></D:prop></D:propfind>"#;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Decoded path (no scheme or host), without a trailing `/`.
    pub path: String,
    pub is_dir: bool,
    pub size: Option<u64>,
    /// Seconds since the epoch.
    pub modified: Option<i64>,
}

#[derive(Default)]
struct Building {
    href: Option<String>,
    response_status_ok: bool,
    collection: bool,
    had_resourcetype: bool,
    size: Option<u64>,
    modified: Option<i64>,
    // Per propstat: values wait for its status.
    ps_collection: bool,
    ps_resourcetype: bool,
    ps_size: Option<u64>,
    ps_modified: Option<i64>,
    ps_ok: bool,
}

/// The path part of an href (absolute URL or path), percent-decoded, no trailing `/`,
/// and whether it had one.
pub fn href_path(href: &str) -> (String, bool) {
    let href = href.trim();
    let path = match href.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => href,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode_str(path).decode_utf8_lossy().into_owned();
    let slash = decoded.ends_with('/');
    let mut p = decoded.trim_end_matches('/').to_string();
    // Collapse `//` that some servers emit.
    while p.contains("//") {
        p = p.replace("//", "/");
    }
    (p, slash)
}

pub fn parse(xml: &str) -> Result<Vec<Entry>, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut out = vec![];
    let mut cur: Option<Building> = None;
    let mut stack: Vec<String> = vec![];
    let mut text = String::new();
    loop {
        let ev = reader.read_event().map_err(|e| format!("bad PROPFIND XML at byte {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).to_ascii_lowercase();
                match name.as_str() {
                    "response" => cur = Some(Building { response_status_ok: true, ..Default::default() }),
                    "propstat" => {
                        if let Some(b) = cur.as_mut() {
                            b.ps_collection = false;
                            b.ps_resourcetype = false;
                            b.ps_size = None;
                            b.ps_modified = None;
                            b.ps_ok = true;
                        }
                    }
                    "resourcetype" => {
                        if let Some(b) = cur.as_mut() {
                            b.ps_resourcetype = true;
                        }
                    }
                    "collection" => {
                        if let Some(b) = cur.as_mut() {
                            b.ps_collection = true;
                        }
                    }
                    _ => {}
                }
                stack.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).to_ascii_lowercase();
                if let Some(b) = cur.as_mut() {
                    match name.as_str() {
                        "collection" => b.ps_collection = true,
                        "resourcetype" => b.ps_resourcetype = true,
                        _ => {}
                    }
                }
            }
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| format!("bad PROPFIND XML text: {e}"))?);
            }
            Event::CData(t) => {
                text.push_str(&t.decode().map_err(|e| format!("bad PROPFIND XML text: {e}"))?);
            }
            Event::GeneralRef(r) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    text.push(c);
                } else {
                    let name = r.decode().map_err(|e| format!("bad PROPFIND XML entity: {e}"))?;
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => text.push_str(s),
                        None => return Err(format!("bad PROPFIND XML: unknown entity &{name};")),
                    }
                }
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                let value = std::mem::take(&mut text);
                let value = value.trim();
                let in_propstat = stack.iter().any(|s| s == "propstat");
                if let Some(b) = cur.as_mut() {
                    match name.as_str() {
                        "href" if b.href.is_none() => b.href = Some(value.to_string()),
                        "status" if in_propstat => b.ps_ok = status_ok(value),
                        "status" => b.response_status_ok = status_ok(value),
                        "getcontentlength" => b.ps_size = value.parse().ok(),
                        "getlastmodified" => b.ps_modified = parse_http_date(value),
                        "propstat" if b.ps_ok => {
                            b.collection |= b.ps_collection;
                            b.had_resourcetype |= b.ps_resourcetype;
                            b.size = b.size.or(b.ps_size);
                            b.modified = b.modified.or(b.ps_modified);
                        }
                        "response" => {
                            let b = cur.take().unwrap_or_default();
                            if let (Some(href), true) = (b.href, b.response_status_ok) {
                                let (path, slash) = href_path(&href);
                                out.push(Entry { path, is_dir: b.collection || slash, size: b.size, modified: b.modified });
                            }
                        }
                        _ => {}
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// `HTTP/1.1 200 OK` → true.
fn status_ok(line: &str) -> bool {
    line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).is_some_and(|c| (200..300).contains(&c))
}

/// RFC 1123 (`Sun, 06 Nov 1994 08:49:37 GMT`), as in `getlastmodified`, or RFC 3339.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = if let Some((_, rest)) = s.split_once(", ") {
        // "06 Nov 1994 08:49:37 GMT"
        let mut it = rest.split_whitespace();
        let day: i64 = it.next()?.parse().ok()?;
        let mon = it.next()?;
        let year: i64 = it.next()?.parse().ok()?;
        let time = it.next()?;
        let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
        let m = months.iter().position(|x| mon.eq_ignore_ascii_case(x))? as i64 + 1;
        ((year, m, day), time.to_string())
    } else {
        // "1994-11-06T08:49:37Z"
        let (d, t) = s.split_once(['T', ' '])?;
        let mut it = d.split('-');
        let (y, m, dd) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        ((y, m, dd), t.trim_end_matches('Z').chars().take(8).collect())
    };
    let mut t = time.split(':');
    let (h, mi, se): (i64, i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let (y, m, d) = date;
    // Four-digit years, as both formats write them: the arithmetic below cannot overflow.
    let in_range = (0..=9999).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d);
    if !in_range || !(0..=23).contains(&h) || !(0..=59).contains(&mi) || !(0..=60).contains(&se) {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0" encoding="utf-8" ?>
<D:multistatus xmlns:D="DAV:" xmlns:ns1="http://apache.org/dav/props/" xmlns:lp1="DAV:">
  <D:response>
    <D:href>https://origin.example.org:8443/test/ckpt/chunks/</D:href>
    <D:propstat>
      <D:prop>
        <lp1:resourcetype><D:collection/></lp1:resourcetype>
        <lp1:getlastmodified>Tue, 14 Nov 2023 22:13:20 GMT</lp1:getlastmodified>
      </D:prop>
      <D:status>HTTP/1.1 200 OK</D:status>
    </D:propstat>
  </D:response>
  <D:response>
    <D:href>/test/ckpt/chunks/ab/ab12%20cd</D:href>
    <D:propstat>
      <D:prop>
        <D:getcontentlength>4096</D:getcontentlength>
        <D:getlastmodified>Tue, 14 Nov 2023 22:13:20 GMT</D:getlastmodified>
      </D:prop>
      <D:status>HTTP/1.1 200 OK</D:status>
    </D:propstat>
    <D:propstat>
      <D:prop><D:resourcetype/><D:getcontentlength>999</D:getcontentlength></D:prop>
      <D:status>HTTP/1.1 404 Not Found</D:status>
    </D:propstat>
  </D:response>
  <D:response>
    <D:href>/test/ckpt/chunks/cd/</D:href>
    <D:propstat><D:prop><D:getcontentlength>0</D:getcontentlength></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
  </D:response>
  <D:response>
    <D:href>https://origin.example.org:8443/test/ckpt/runs/a&amp;b%2Fx.json</D:href>
    <D:propstat><D:prop><D:resourcetype></D:resourcetype><D:getcontentlength>12</D:getcontentlength></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
  </D:response>
  <D:response>
    <D:href>/test/ckpt/gone</D:href>
    <D:status>HTTP/1.1 404 Not Found</D:status>
  </D:response>
</D:multistatus>"#;

    #[test]
    fn realistic_multistatus() {
        let e = parse(SAMPLE).unwrap();
        assert_eq!(e.len(), 4, "{e:?}");
        assert_eq!(e[0], Entry { path: "/test/ckpt/chunks".into(), is_dir: true, size: None, modified: Some(1700000000) });
        // Percent-decoded; the 404 propstat's size ignored; no resourcetype and no slash: a file.
        assert_eq!(
            e[1],
            Entry { path: "/test/ckpt/chunks/ab/ab12 cd".into(), is_dir: false, size: Some(4096), modified: Some(1700000000) }
        );
        // No resourcetype, trailing slash: a directory.
        assert!(e[2].is_dir);
        assert_eq!(e[2].path, "/test/ckpt/chunks/cd");
        assert_eq!(e[3], Entry { path: "/test/ckpt/runs/a&b/x.json".into(), is_dir: false, size: Some(12), modified: None });
    }

    #[test]
    fn namespaces_without_prefixes_and_depth_zero() {
        let xml = r#"<multistatus xmlns="DAV:"><response><href>/ns/obj</href><propstat><prop>
            <resourcetype/><getcontentlength>7</getcontentlength></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"#;
        assert_eq!(parse(xml).unwrap(), vec![Entry { path: "/ns/obj".into(), is_dir: false, size: Some(7), modified: None }]);
        assert!(parse("<multistatus><response><href>/x</href></multistatus>").is_err());
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn hrefs_and_dates() {
        assert_eq!(href_path("https://h:1/a/b%20c/"), ("/a/b c".into(), true));
        assert_eq!(href_path("/a//b"), ("/a/b".into(), false));
        assert_eq!(href_path("https://h"), ("".into(), true));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse_http_date("1994-11-06T08:49:37Z"), Some(784111777));
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn dates_out_of_range_are_refused_not_overflowed() {
        // Found reading parse_http_date for the propfind fuzz target: a server's
        // getlastmodified overflowed i64 (a panic in debug builds, a wrapped time in release).
        assert_eq!(parse_http_date("Sun, 06 Nov 999999999999 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 -9223372036854775808:00:00 GMT"), None);
        assert_eq!(parse_http_date("1994-11-06T-1:00:00Z"), None);
        assert_eq!(parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT"), Some(253402300799));
        assert_eq!(parse_http_date("0000-01-01T00:00:00Z"), Some(-62167219200));
    }
}
