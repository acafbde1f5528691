//! Live progress in the job ad, through the HTCondor starter's Chirp proxy, so that
//! `condor_q -af ChirpBatonEpoch ChirpBatonSeq` shows how far a job got.
//!
//! When a job runs under HTCondor, `_CONDOR_CHIRP_CONFIG` names a file holding one line
//! `<ip> <port> <cookie>`: a TCP proxy on loopback. The protocol is newline-terminated
//! lines of at most 5120 bytes: `cookie <cookie>` (reply `0`), then
//! `set_job_attr_delayed <Name> <ClassAd expression>`, answered with one integer line.
//! Delayed updates need no `+WantIOProxy`; the starter keeps them and publishes them
//! with its next periodic update to the shadow (minutes later), only for names that
//! match `Chirp*`, for at most 100 distinct names, and for expressions of at most 993
//! bytes (src/condor_starter.V6.1/io_proxy_handler.cpp and jic_shadow.cpp).
//!
//! Replies: `0` is success. The starter answers `1` (not a negative code) when it drops
//! an update for its name or the attribute limit, and a negative code for errors, so
//! anything but `0` is a refusal here. (The Python client `htcondor2.htchirp` only
//! raises on negative codes and takes `1` for success.)
//!
//! Reporting is strictly best effort and must never slow training down: [`Chirp::report`]
//! only queues the values; one background thread connects afresh for every batch (the
//! proxy lives in the starter, which may have restarted), spends at most
//! [`ATTEMPT_TIMEOUT`] on connect, handshake and sends together, and logs the first
//! failure at warn and later ones at debug.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const ENV_CONFIG: &str = "_CONDOR_CHIRP_CONFIG";

pub const ATTR_EPOCH: &str = "ChirpBatonEpoch";
pub const ATTR_STEP: &str = "ChirpBatonStep";
pub const ATTR_SEQ: &str = "ChirpBatonSeq";
pub const ATTR_TIME: &str = "ChirpBatonTime";
pub const ATTR_FLUSH_SECONDS: &str = "ChirpBatonFlushSeconds";
pub const ATTR_DEVICE: &str = "ChirpBatonDevice";

/// The longest request line, newline included (CHIRP_LINE_MAX).
const LINE_MAX: usize = 5120;
/// The longest expression the starter accepts in `set_job_attr_delayed`, in bytes.
pub const MAX_EXPR_BYTES: usize = 993;
/// The starter keeps at most this many distinct delayed attributes
/// (CHIRP_DELAYED_UPDATE_MAX_ATTRS).
pub const MAX_ATTRS: usize = 100;
/// Attribute names are short; the cap keeps every request line under [`LINE_MAX`].
const MAX_NAME_BYTES: usize = 256;
/// Connect, handshake and all sends of one batch together.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub enum ChirpValue {
    Int(i64),
    Real(f64),
    Str(String),
}

impl ChirpValue {
    /// The value as a ClassAd literal of at most [`MAX_EXPR_BYTES`] bytes, and whether a
    /// string had to be cut short to fit.
    fn to_classad(&self) -> (String, bool) {
        match self {
            ChirpValue::Int(i) => (i.to_string(), false),
            ChirpValue::Real(x) => (classad_real(*x), false),
            ChirpValue::Str(s) => classad_string(s, MAX_EXPR_BYTES),
        }
    }
}

/// A ClassAd real literal that reads back as exactly `x`. Rust's shortest round-trip
/// form always has a point or an exponent (`1.0`, `1e20`), so ClassAds never take it
/// for an integer; HTCondor writes infinities and NaN as `real("INF")`-style casts.
fn classad_real(x: f64) -> String {
    if x.is_nan() {
        "real(\"NaN\")".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "real(\"INF\")".into()
        } else {
            "-real(\"INF\")".into()
        }
    } else {
        format!("{x:?}")
    }
}

/// A ClassAd (new syntax) string literal, escaped as HTCondor's own unparser does
/// (`classad2.quote`): `"` and `\` get a backslash, the C control characters with a
/// letter escape use it, every other byte outside printable ASCII (UTF-8 included)
/// becomes a 3-digit octal escape. The result is pure printable ASCII, so no raw
/// newline can reach the wire: the starter splits requests at newlines before it
/// undoes Chirp escaping. NUL cannot be held in a ClassAd string and is dropped.
/// Characters that would make the literal longer than `max` bytes are left off
/// (whole characters, never half an escape); the flag says so.
fn classad_string(s: &str, max: usize) -> (String, bool) {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut piece = String::new();
    for c in s.chars() {
        piece.clear();
        let mut utf8 = [0u8; 4];
        for &b in c.encode_utf8(&mut utf8).as_bytes() {
            match b {
                0 => {}
                b'"' => piece.push_str("\\\""),
                b'\\' => piece.push_str("\\\\"),
                0x07 => piece.push_str("\\a"),
                0x08 => piece.push_str("\\b"),
                b'\t' => piece.push_str("\\t"),
                b'\n' => piece.push_str("\\n"),
                0x0b => piece.push_str("\\v"),
                0x0c => piece.push_str("\\f"),
                b'\r' => piece.push_str("\\r"),
                0x20..=0x7e => piece.push(b as char),
                _ => piece.push_str(&format!("\\{b:03o}")),
            }
        }
        if out.len() + piece.len() + 1 > max {
            out.push('"');
            return (out, true);
        }
        out.push_str(&piece);
    }
    out.push('"');
    (out, false)
}

/// Escape one argument of a Chirp request: space, tab, newline, carriage return and
/// backslash get a backslash, as in HTCondor's clients (`htchirp.quote`).
pub fn escape_arg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\r' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The request line (newline included) that sets `name` to `value` in the job ad. The
/// name is not checked here (see [`check_name`]); a string too long for the starter is
/// shortened to fit.
pub fn encode_set_delayed(name: &str, value: &ChirpValue) -> String {
    format!("set_job_attr_delayed {} {}\n", escape_arg(name), escape_arg(&value.to_classad().0))
}

/// Names baton may set: `Chirp` followed by letters, digits and underscores (the
/// starter only takes `Chirp*`, and anything else would not be one ClassAd name).
pub fn check_name(name: &str) -> Result<(), String> {
    if !name.starts_with("Chirp") {
        return Err("the name must start with `Chirp`".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("the name is longer than {MAX_NAME_BYTES} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("the name may only hold letters, digits and `_`".into());
    }
    Ok(())
}

fn int(v: u64) -> ChirpValue {
    ChirpValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// What a durable checkpoint reports: its seq, epoch and step when the trainer gave
/// them, and when (unix seconds, as an integer like HTCondor's own time attributes).
/// Without an epoch or step the previous values stay in the ad.
pub fn progress_attrs(seq: u64, epoch: Option<u64>, step: Option<u64>, time: f64) -> Vec<(String, ChirpValue)> {
    let mut attrs = vec![(ATTR_SEQ.to_string(), int(seq))];
    if let Some(e) = epoch {
        attrs.push((ATTR_EPOCH.to_string(), int(e)));
    }
    if let Some(s) = step {
        attrs.push((ATTR_STEP.to_string(), int(s)));
    }
    attrs.push((ATTR_TIME.to_string(), ChirpValue::Int(time.floor() as i64)));
    attrs
}

/// How long the last flush of outstanding checkpoints took.
pub fn flush_attrs(seconds: f64) -> Vec<(String, ChirpValue)> {
    vec![(ATTR_FLUSH_SECONDS.to_string(), ChirpValue::Real(seconds))]
}

/// The device this attempt trains on.
pub fn device_attrs(device: &str) -> Vec<(String, ChirpValue)> {
    vec![(ATTR_DEVICE.to_string(), ChirpValue::Str(device.to_string()))]
}

/// The contents of the Chirp config file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    host: String,
    port: u16,
    cookie: String,
}

impl Config {
    /// Exactly three words, as `htchirp` reads it: host, port, cookie.
    fn parse(text: &str) -> Result<Config, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [host, port, cookie] = words[..] else {
            return Err(format!("expected one line `<ip> <port> <cookie>`, found {} word(s)", words.len()));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("`{port}` is not a port number")),
        };
        Ok(Config { host: host.to_string(), port, cookie: cookie.to_string() })
    }

    fn read(path: &Path) -> Result<Config, String> {
        // The real file is one short line; a bound keeps a wrong path from being slurped.
        let mut text = String::new();
        std::fs::File::open(path).and_then(|f| f.take(4096).read_to_string(&mut text)).map_err(|e| format!("cannot read it: {e}"))?;
        Config::parse(&text)
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>, String> {
        // The starter writes an IP address; a name is resolved, as htchirp would (that
        // may block, but only the worker thread).
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        (self.host.as_str(), self.port).to_socket_addrs().map(|a| a.collect()).map_err(|e| format!("cannot resolve {}: {e}", self.host))
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One connection, with the batch's deadline applied to every read and write.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Conn {
    fn open(config: &Config, deadline: Instant) -> Result<Conn, String> {
        let mut last = format!("no address for {}", config.host);
        let mut stream = None;
        for addr in config.addrs()? {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        let stream = stream.ok_or(last)?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn { stream, buf: Vec::new(), deadline };
        // The cookie goes unescaped, as the starter reads it with a plain `%s`.
        match conn.command(&format!("cookie {}\n", config.cookie))? {
            0 => Ok(conn),
            code => Err(format!("the Chirp proxy refused the cookie (reply {code})")),
        }
    }

    /// Send one request line and read its integer reply.
    fn command(&mut self, line: &str) -> Result<i64, String> {
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            self.stream.set_write_timeout(Some(remaining(self.deadline)?)).map_err(|e| e.to_string())?;
            match self.stream.write(rest) {
                Ok(0) => return Err("the Chirp proxy closed the connection".into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_message("sending", e)),
            }
        }
        parse_reply(&self.read_line()?)
    }

    fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(line) = take_reply_line(&mut self.buf)? {
                return Ok(line);
            }
            self.stream.set_read_timeout(Some(remaining(self.deadline)?)).map_err(|e| e.to_string())?;
            let mut chunk = [0u8; 512];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the Chirp proxy closed the connection without replying".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_message("waiting for a reply", e)),
            }
        }
    }
}

/// The first whole line (without its newline) of what the proxy has sent so far, taken
/// out of `buf`; `None` until a newline arrives. Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub fn take_reply_line(buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=end).collect();
        return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
    }
    if buf.len() > LINE_MAX {
        return Err("the Chirp proxy sent an over-long line".into());
    }
    Ok(None)
}

/// A reply line's integer code. Public (hidden) for the fuzz targets.
#[doc(hidden)]
pub fn parse_reply(reply: &str) -> Result<i64, String> {
    reply.trim().parse::<i64>().map_err(|_| format!("the Chirp proxy sent {reply:?}, not a reply code"))
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
    }
}

fn io_message(doing: &str, e: std::io::Error) -> String {
    // A socket timeout shows up as WouldBlock on Unix.
    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else {
        format!("{doing}: {e}")
    }
}

/// A (name, request line) waiting to be sent.
type Update = (String, String);

/// Replace the queued value of `update`'s attribute, or queue it.
fn upsert(queue: &mut Vec<Update>, update: Update) {
    match queue.iter_mut().find(|u| u.0 == update.0) {
        Some(slot) => *slot = update,
        None => queue.push(update),
    }
}

#[derive(Default)]
struct Queue {
    /// The newest value of each attribute not yet sent: a new report overwrites older
    /// values instead of piling up, so the queue never outgrows [`MAX_ATTRS`] entries.
    pending: Vec<Update>,
    /// Values whose send failed on the connection; they go out again with the next
    /// batch, behind any newer values. (Retrying at once would spin on a dead proxy.)
    retry: Vec<Update>,
    /// Every name ever queued, for the starter's limit on distinct attributes.
    names: BTreeSet<String>,
    /// The worker has taken a batch and not finished it.
    busy: bool,
    /// The [`Chirp`] handle is gone: send what is pending, then stop.
    closed: bool,
}

struct Shared {
    config: Config,
    queue: Mutex<Queue>,
    changed: Condvar,
    warned_transport: AtomicBool,
    warned_refused: AtomicBool,
}

impl Shared {
    fn new(config: Config) -> Shared {
        Shared {
            config,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            warned_transport: AtomicBool::new(false),
            warned_refused: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; if something did, the queue is still sound.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The proxy could not be reached or stopped answering.
    fn transport_failed(&self, e: &str) {
        if !self.warned_transport.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cannot update the job ad through Chirp ({}): {e}; training goes on, and further Chirp failures are logged at debug level",
                self.config.endpoint()
            );
        } else {
            tracing::debug!("chirp: {}: {e}", self.config.endpoint());
        }
    }

    /// One attribute was refused, by baton's checks or by the proxy.
    fn refused(&self, name: &str, why: &str) {
        if !self.warned_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!("job-ad attribute {name} not set through Chirp: {why}; further refusals are logged at debug level");
        } else {
            tracing::debug!("chirp: {name} not set: {why}");
        }
    }

    /// Send one batch on a fresh connection; returns what could not be sent and is worth
    /// another try (not the attributes the proxy refused).
    fn send(&self, batch: &[Update]) -> Vec<Update> {
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        let mut conn = match Conn::open(&self.config, deadline) {
            Ok(c) => c,
            Err(e) => {
                self.transport_failed(&e);
                return batch.to_vec();
            }
        };
        for (i, (name, line)) in batch.iter().enumerate() {
            match conn.command(line) {
                Ok(0) => {}
                Ok(code) => self.refused(name, &format!("the Chirp proxy answered {code}")),
                Err(e) => {
                    self.transport_failed(&e);
                    return batch[i..].to_vec();
                }
            }
        }
        tracing::debug!("chirp: sent {} attribute(s) to {}", batch.len(), self.config.endpoint());
        Vec::new()
    }
}

fn worker(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut q = shared.lock();
            while q.pending.is_empty() && !q.closed {
                q = shared.changed.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.pending.is_empty() {
                return;
            }
            q.busy = true;
            // What failed last time goes first, so a batch keeps the order things were
            // reported in; newer values of the same attributes replace it.
            let mut batch = std::mem::take(&mut q.retry);
            for update in std::mem::take(&mut q.pending) {
                upsert(&mut batch, update);
            }
            batch
        };
        let failed = shared.send(&batch);
        let mut q = shared.lock();
        q.busy = false;
        for update in failed {
            if !q.pending.iter().any(|u| u.0 == update.0) {
                upsert(&mut q.retry, update);
            }
        }
        shared.changed.notify_all();
    }
}

/// Reports progress into the job ad. Cheap to call from async code: it never blocks on
/// the network.
pub struct Chirp {
    shared: Arc<Shared>,
}

impl Chirp {
    /// A reporter when `_CONDOR_CHIRP_CONFIG` is set; `None` when it is not, or (with one
    /// warning) when its file cannot be read.
    pub fn from_env() -> Option<Chirp> {
        let path = std::env::var_os(ENV_CONFIG).filter(|p| !p.is_empty())?;
        Chirp::from_config_file(Path::new(&path))
    }

    pub fn from_config_file(path: &Path) -> Option<Chirp> {
        let config = match Config::read(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{ENV_CONFIG} is set, but {} is not a usable Chirp config ({e}); no progress in the job ad", path.display());
                return None;
            }
        };
        let endpoint = config.endpoint();
        let shared = Arc::new(Shared::new(config));
        let for_worker = shared.clone();
        if let Err(e) = std::thread::Builder::new().name("baton-chirp".into()).spawn(move || worker(for_worker)) {
            tracing::warn!("cannot start the Chirp reporter thread: {e}; no progress in the job ad");
            return None;
        }
        tracing::info!("reporting progress into the job ad through Chirp ({endpoint}): condor_q -af {ATTR_SEQ} {ATTR_EPOCH}");
        Some(Chirp { shared })
    }

    /// Queue attributes for the job ad and return at once. Invalid names are refused
    /// (logged), long strings shortened; a value still queued from an earlier report
    /// is replaced by the newer one.
    pub fn report(&self, attrs: Vec<(String, ChirpValue)>) {
        let mut updates = Vec::with_capacity(attrs.len());
        for (name, value) in attrs {
            if let Err(e) = check_name(&name) {
                self.shared.refused(&name, &e);
                continue;
            }
            if matches!(&value, ChirpValue::Str(_)) && value.to_classad().1 {
                tracing::debug!("chirp: the value of {name} was shortened to fit the starter's {MAX_EXPR_BYTES} bytes");
            }
            let line = encode_set_delayed(&name, &value);
            updates.push((name, line));
        }
        if updates.is_empty() {
            return;
        }
        let mut q = self.shared.lock();
        for (name, line) in updates {
            if !q.names.contains(&name) {
                if q.names.len() >= MAX_ATTRS {
                    self.shared.refused(&name, &format!("HTCondor keeps at most {MAX_ATTRS} Chirp attributes per job"));
                    continue;
                }
                q.names.insert(name.clone());
            }
            upsert(&mut q.pending, (name, line));
        }
        self.shared.changed.notify_all();
    }

    /// Wait up to `timeout` for everything reported so far to be sent or given up;
    /// true when it was. For the end of a run, where the process is about to exit.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.lock();
        while !q.pending.is_empty() || q.busy {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return false;
            };
            q = self.shared.changed.wait_timeout(q, left).map(|(q, _)| q).unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

impl Drop for Chirp {
    fn drop(&mut self) {
        // The worker sends what is pending (within its timeout) and ends.
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;
    use std::io::BufRead;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// fixtures/chirp_server.py, a stand-in for the starter's Chirp proxy.
    struct FakeProxy {
        child: Child,
        dir: tempfile::TempDir,
    }

    impl FakeProxy {
        fn start(flags: &[&str]) -> FakeProxy {
            let dir = tempfile::tempdir().unwrap();
            let mut child = Command::new("python3")
                .arg(root().join("fixtures/chirp_server.py"))
                .arg("--config")
                .arg(dir.path().join("chirp.config"))
                .arg("--record")
                .arg(dir.path().join("record.jsonl"))
                .args(["--lifetime", "120"])
                .args(flags)
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 must be on PATH for the Chirp tests");
            let mut ready = String::new();
            let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready);
            assert!(ready.starts_with("listening"), "chirp_server.py did not start: {ready:?}");
            FakeProxy { child, dir }
        }

        fn config(&self) -> PathBuf {
            self.dir.path().join("chirp.config")
        }

        fn chirp(&self) -> Chirp {
            Chirp::from_config_file(&self.config()).expect("a valid config")
        }

        fn events(&self, kind: &str) -> Vec<Json> {
            let text = std::fs::read_to_string(self.dir.path().join("record.jsonl")).unwrap_or_default();
            text.lines().map(|l| serde_json::from_str::<Json>(l).unwrap()).filter(|e| e["event"] == kind).collect()
        }

        /// Wait until `n` set requests have arrived (the worker may still be sending).
        fn sets(&self, n: usize) -> Vec<Json> {
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let sets = self.events("set");
                if sets.len() >= n || Instant::now() > until {
                    return sets;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for FakeProxy {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn attrs(list: &[(&str, ChirpValue)]) -> Vec<(String, ChirpValue)> {
        list.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
    }

    fn s(v: &str) -> ChirpValue {
        ChirpValue::Str(v.into())
    }

    /// The value the proxy decoded, back as a ChirpValue.
    fn decoded(set: &Json) -> ChirpValue {
        let v = &set["value"];
        if let Some(i) = v["int"].as_i64() {
            ChirpValue::Int(i)
        } else if let Some(r) = v["real"].as_str() {
            ChirpValue::Real(r.parse().unwrap())
        } else {
            ChirpValue::Str(v["string"].as_str().unwrap_or_else(|| panic!("no value in {set}")).into())
        }
    }

    /// Strings that break naive quoting, for the round trips.
    fn tricky() -> Vec<(&'static str, ChirpValue)> {
        vec![
            ("ChirpT1", s("NVIDIA H100 80GB HBM3")),
            ("ChirpT2", s(r"C:\dir\ back\\slash\")),
            ("ChirpT3", s(r#"say "hi" \"there\""#)),
            ("ChirpT4", s("new\nline, tab\tand cr\r")),
            ("ChirpT5", s("bell\x07 esc\x1b del\x7f vt\x0b ff\x0c")),
            ("ChirpT6", s("ünïcödé 日本 😀")),
            ("ChirpT7", s("")),
            ("ChirpT8", s("  leading and trailing  ")),
            ("ChirpT9", s(r#"\n is not a newline; \\ \ \""#)),
            ("ChirpT10", s("'single' ?question?")),
            ("ChirpI1", ChirpValue::Int(0)),
            ("ChirpI2", ChirpValue::Int(-42)),
            ("ChirpI3", ChirpValue::Int(i64::MAX)),
            ("ChirpI4", ChirpValue::Int(i64::MIN)),
            ("ChirpR1", ChirpValue::Real(1.0)),
            ("ChirpR2", ChirpValue::Real(0.1)),
            ("ChirpR3", ChirpValue::Real(-2.5e-300)),
            ("ChirpR4", ChirpValue::Real(1e20)),
            ("ChirpR5", ChirpValue::Real(123456.789)),
        ]
    }

    fn same(a: &ChirpValue, b: &ChirpValue) -> bool {
        match (a, b) {
            // Bit for bit, so 0.1 must come back as exactly 0.1.
            (ChirpValue::Real(x), ChirpValue::Real(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            _ => a == b,
        }
    }

    #[test]
    fn strings_are_quoted_like_htcondors_unparser() {
        let q = |v: &str| classad_string(v, MAX_EXPR_BYTES).0;
        assert_eq!(q("epoch 3"), r#""epoch 3""#);
        assert_eq!(q(""), r#""""#);
        assert_eq!(q(r#"a"b"#), r#""a\"b""#);
        assert_eq!(q(r"a\b"), r#""a\\b""#);
        assert_eq!(q("a\nb\tc\rd"), r#""a\nb\tc\rd""#);
        assert_eq!(q("\x07\x08\x0b\x0c"), r#""\a\b\v\f""#);
        assert_eq!(q("\x01\x1b\x7f"), r#""\001\033\177""#);
        assert_eq!(q("é"), r#""\303\251""#);
        assert_eq!(q("'?"), r#""'?""#);
        assert_eq!(q("a\0b"), r#""ab""#, "NUL cannot be in a ClassAd string");
    }

    #[test]
    fn arguments_are_escaped_like_htchirp() {
        assert_eq!(escape_arg("plain"), "plain");
        assert_eq!(escape_arg("a b\tc\nd\re\\f\"g"), "a\\ b\\\tc\\\nd\\\re\\\\f\"g");
    }

    #[test]
    fn set_lines() {
        let line = |n: &str, v: ChirpValue| encode_set_delayed(n, &v);
        assert_eq!(line(ATTR_EPOCH, ChirpValue::Int(3)), "set_job_attr_delayed ChirpBatonEpoch 3\n");
        assert_eq!(line("ChirpX", ChirpValue::Int(-5)), "set_job_attr_delayed ChirpX -5\n");
        assert_eq!(line(ATTR_DEVICE, s("epoch 3")), "set_job_attr_delayed ChirpBatonDevice \"epoch\\ 3\"\n");
        // ClassAd quoting first (`\` -> `\\`, `"` -> `\"`), then Chirp escaping doubles
        // every backslash and escapes the space.
        assert_eq!(line("ChirpX", s(r#"C:\dir "x""#)), "set_job_attr_delayed ChirpX \"C:\\\\\\\\dir\\ \\\\\"x\\\\\"\"\n");
        // A newline never goes raw onto the wire, not even escaped.
        assert_eq!(line("ChirpX", s("a\nb")), "set_job_attr_delayed ChirpX \"a\\\\nb\"\n");
        assert_eq!(line(ATTR_FLUSH_SECONDS, ChirpValue::Real(1.0)), "set_job_attr_delayed ChirpBatonFlushSeconds 1.0\n");
        assert_eq!(line("ChirpX", ChirpValue::Real(1e20)), "set_job_attr_delayed ChirpX 1e20\n");
        assert_eq!(line("ChirpX", ChirpValue::Real(-0.5)), "set_job_attr_delayed ChirpX -0.5\n");
        assert_eq!(line("ChirpX", ChirpValue::Real(f64::NAN)), "set_job_attr_delayed ChirpX real(\"NaN\")\n");
        assert_eq!(line("ChirpX", ChirpValue::Real(f64::INFINITY)), "set_job_attr_delayed ChirpX real(\"INF\")\n");
        assert_eq!(line("ChirpX", ChirpValue::Real(f64::NEG_INFINITY)), "set_job_attr_delayed ChirpX -real(\"INF\")\n");
    }

    #[test]
    fn reals_keep_every_bit_and_never_look_like_integers() {
        for x in [0.0, -0.0, 1.0, 0.1, 1.0 / 3.0, 1e16, 1e17, 1e-7, 5e-324, f64::MAX, -123456.789] {
            let lit = classad_real(x);
            assert!(lit.contains(['.', 'e']), "{lit} would read as an integer");
            assert_eq!(lit.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{lit}");
        }
    }

    #[test]
    fn long_strings_are_cut_to_the_starters_limit() {
        let (lit, cut) = classad_string(&"x".repeat(991), MAX_EXPR_BYTES);
        assert_eq!((lit.len(), cut), (993, false));
        let (lit, cut) = classad_string(&"x".repeat(992), MAX_EXPR_BYTES);
        assert_eq!((lit.len(), cut), (993, true));
        assert!(lit.ends_with("x\""));
        // Never half an escape or half a character: é is 8 bytes escaped.
        let (lit, cut) = classad_string(&"é".repeat(500), MAX_EXPR_BYTES);
        assert!(cut && lit.len() <= MAX_EXPR_BYTES);
        assert_eq!((lit.len() - 2) % 8, 0);
        let (lit, _) = classad_string(&"\"".repeat(600), MAX_EXPR_BYTES);
        assert!(lit.len() <= MAX_EXPR_BYTES && lit.ends_with("\\\"\""), "{lit}");
        // The longest possible line still fits the protocol's line limit.
        let name = format!("Chirp{}", "N".repeat(MAX_NAME_BYTES - 5));
        assert!(check_name(&name).is_ok());
        let line = encode_set_delayed(&name, &s(&"\\".repeat(5000)));
        assert!(line.len() <= LINE_MAX, "{}", line.len());
    }

    #[test]
    fn names() {
        for ok in [ATTR_EPOCH, ATTR_STEP, ATTR_SEQ, ATTR_TIME, ATTR_FLUSH_SECONDS, ATTR_DEVICE, "Chirp", "Chirp_x9"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = format!("Chirp{}", "x".repeat(MAX_NAME_BYTES));
        for bad in ["", "BatonEpoch", "chirpLower", "Chirp Epoch", "Chirp-x", "ChirpÉ", "Chirp\n", long.as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn attribute_helpers() {
        assert_eq!(
            progress_attrs(4, Some(3), Some(120), 1_700_000_000.9),
            attrs(&[
                (ATTR_SEQ, ChirpValue::Int(4)),
                (ATTR_EPOCH, ChirpValue::Int(3)),
                (ATTR_STEP, ChirpValue::Int(120)),
                (ATTR_TIME, ChirpValue::Int(1_700_000_000)),
            ])
        );
        assert_eq!(
            progress_attrs(u64::MAX, None, None, 0.0),
            attrs(&[(ATTR_SEQ, ChirpValue::Int(i64::MAX)), (ATTR_TIME, ChirpValue::Int(0))])
        );
        assert_eq!(flush_attrs(2.5), attrs(&[(ATTR_FLUSH_SECONDS, ChirpValue::Real(2.5))]));
        assert_eq!(device_attrs("NVIDIA H100"), attrs(&[(ATTR_DEVICE, s("NVIDIA H100"))]));
    }

    #[test]
    fn config_files() {
        let want = Config { host: "127.0.0.1".into(), port: 9618, cookie: "c0ffee".into() };
        assert_eq!(Config::parse("127.0.0.1 9618 c0ffee\n"), Ok(want.clone()));
        assert_eq!(Config::parse("  127.0.0.1\t9618   c0ffee  "), Ok(want));
        for bad in ["", "\n", "127.0.0.1 9618", "127.0.0.1 port c0ffee", "127.0.0.1 0 c", "127.0.0.1 70000 c", "a 1 c d"] {
            assert!(Config::parse(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(Chirp::from_config_file(&dir.path().join("missing")).is_none());
        std::fs::write(dir.path().join("garbled"), "not a config").unwrap();
        assert!(Chirp::from_config_file(&dir.path().join("garbled")).is_none());
    }

    /// Failures are logged once at warn, then at debug: a dead proxy must not flood the log.
    #[test]
    fn one_warning_then_debug() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber =
            tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_ansi(false).with_writer(move || w.clone()).finish();
        let shared = Shared::new(Config::parse("127.0.0.1 1 c").unwrap());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5 {
                shared.transport_failed("connection refused");
                shared.refused("ChirpX", "the Chirp proxy answered -1");
            }
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches(" WARN ").count(), 2, "{log}");
        assert_eq!(log.matches("DEBUG").count(), 8, "{log}");
    }

    #[test]
    fn values_round_trip_exactly_through_the_proxy() {
        let proxy = FakeProxy::start(&[]);
        let chirp = proxy.chirp();
        let cases = tricky();
        chirp.report(attrs(&cases));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        let sets = proxy.sets(cases.len());
        assert_eq!(sets.len(), cases.len(), "{sets:?}");
        for ((name, value), set) in cases.iter().zip(&sets) {
            assert_eq!(set["reply"], 0, "{set}");
            assert_eq!(set["name"], *name);
            assert!(same(&decoded(set), value), "{name}: sent {value:?}, the proxy read {set}");
            let line = encode_set_delayed(name, value);
            assert_eq!(set["raw"].as_str(), Some(line.trim_end_matches('\n')));
        }
        // One batch, one connection, one handshake.
        let cookies = proxy.events("cookie");
        assert_eq!(cookies.len(), 1);
        assert_eq!(cookies[0]["ok"], true);
    }

    #[test]
    fn every_batch_connects_afresh_and_newer_values_replace_queued_ones() {
        let proxy = FakeProxy::start(&[]);
        let chirp = proxy.chirp();
        chirp.report(device_attrs("GPU 0"));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        chirp.report(progress_attrs(1, Some(1), None, 100.0));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        assert_eq!(proxy.events("cookie").len(), 2);
        let sets = proxy.sets(4);
        assert_eq!(sets.iter().map(|s| s["conn"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 2, 2]);

        // Values queued while nothing is sent are merged, newest wins, order kept.
        let shared = Shared::new(Config::parse("127.0.0.1 1 c").unwrap());
        let queued = Chirp { shared: Arc::new(shared) }; // no worker: nothing is taken
        queued.report(progress_attrs(1, Some(1), None, 100.0));
        queued.report(progress_attrs(2, Some(2), Some(5), 200.0));
        let names: Vec<_> = queued.shared.lock().pending.iter().map(|u| u.1.clone()).collect();
        assert_eq!(
            names,
            [
                "set_job_attr_delayed ChirpBatonSeq 2\n",
                "set_job_attr_delayed ChirpBatonEpoch 2\n",
                "set_job_attr_delayed ChirpBatonTime 200\n",
                "set_job_attr_delayed ChirpBatonStep 5\n",
            ]
        );
    }

    #[test]
    fn invalid_names_never_leave_baton() {
        let proxy = FakeProxy::start(&[]);
        let chirp = proxy.chirp();
        chirp.report(attrs(&[("BatonEpoch", ChirpValue::Int(1)), ("Chirp Epoch", ChirpValue::Int(2)), ("ChirpOk", ChirpValue::Int(3))]));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        let sets = proxy.sets(1);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0]["name"], "ChirpOk");
    }

    #[test]
    fn at_most_the_starters_number_of_attributes() {
        let shared = Shared::new(Config::parse("127.0.0.1 1 c").unwrap());
        let chirp = Chirp { shared: Arc::new(shared) }; // no worker: the queue stays as reported
        let many: Vec<_> = (0..MAX_ATTRS + 5).map(|i| (format!("ChirpN{i}"), ChirpValue::Int(i as i64))).collect();
        chirp.report(many);
        chirp.report(attrs(&[("ChirpN0", ChirpValue::Int(-1)), ("ChirpNew", ChirpValue::Int(0))]));
        let q = chirp.shared.lock();
        assert_eq!(q.pending.len(), MAX_ATTRS);
        assert_eq!(q.pending[0].1, "set_job_attr_delayed ChirpN0 -1\n", "a known name may still change");
        assert!(!q.pending.iter().any(|u| u.0 == "ChirpNew"));
    }

    #[test]
    fn error_replies_are_taken_in_stride() {
        let proxy = FakeProxy::start(&["--fail-set"]);
        let chirp = proxy.chirp();
        chirp.report(progress_attrs(1, Some(1), None, 100.0));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        // Every attribute was tried on the one connection; a refusal is final, not retried.
        let sets = proxy.sets(3);
        assert_eq!(sets.len(), 3);
        assert!(sets.iter().all(|s| s["reply"] == -1 && s["conn"] == 1));
        assert!(chirp.shared.lock().retry.is_empty());
        chirp.report(flush_attrs(0.25));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        assert_eq!(proxy.sets(4).len(), 4);
    }

    #[test]
    fn a_hanging_proxy_never_holds_up_the_caller() {
        let proxy = FakeProxy::start(&["--hang"]);
        let chirp = proxy.chirp();
        let t = Instant::now();
        // One report, so that one attempt is all there is to wait for.
        chirp.report([progress_attrs(1, Some(1), None, 100.0), flush_attrs(1.5)].concat());
        assert!(t.elapsed() < Duration::from_millis(200), "report blocked for {:?}", t.elapsed());
        // The worker gives up after its timeout, and keeps the values for the next try.
        assert!(chirp.wait_idle(ATTEMPT_TIMEOUT + Duration::from_secs(2)));
        let took = t.elapsed();
        assert!(took >= ATTEMPT_TIMEOUT - Duration::from_millis(100) && took < ATTEMPT_TIMEOUT + Duration::from_secs(1), "{took:?}");
        assert_eq!(chirp.shared.lock().retry.len(), 4);
    }

    #[test]
    fn no_proxy_listening_is_quiet_and_quick() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chirp.config");
        std::fs::write(&config, format!("127.0.0.1 {port} c0ffee\n")).unwrap();
        let chirp = Chirp::from_config_file(&config).unwrap();
        let t = Instant::now();
        chirp.report(device_attrs("cpu"));
        assert!(chirp.wait_idle(Duration::from_secs(3)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(chirp.shared.lock().retry.len(), 1);
    }

    #[test]
    fn a_wrong_cookie_sends_nothing() {
        let proxy = FakeProxy::start(&["--cookie", "right"]);
        let text = std::fs::read_to_string(proxy.config()).unwrap().replace("right", "wrong");
        std::fs::write(proxy.config(), text).unwrap();
        let chirp = proxy.chirp();
        chirp.report(device_attrs("cpu"));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        assert_eq!(proxy.events("cookie").len(), 1);
        assert_eq!(proxy.events("cookie")[0]["ok"], false);
        assert!(proxy.events("set").is_empty());
    }

    #[test]
    fn values_that_failed_to_send_go_out_with_the_next_report() {
        let proxy = FakeProxy::start(&["--close-first", "1"]);
        let chirp = proxy.chirp();
        chirp.report([device_attrs("GPU 0"), progress_attrs(1, Some(1), None, 100.0)].concat());
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        assert!(proxy.events("set").is_empty());
        assert!(!chirp.shared.lock().retry.is_empty());
        chirp.report(progress_attrs(2, Some(2), None, 200.0));
        assert!(chirp.wait_idle(Duration::from_secs(5)));
        let sets = proxy.sets(4);
        let got: Vec<_> = sets.iter().map(|s| (s["name"].as_str().unwrap().to_string(), decoded(s))).collect();
        assert_eq!(
            got,
            attrs(&[
                (ATTR_DEVICE, s("GPU 0")),
                (ATTR_SEQ, ChirpValue::Int(2)),
                (ATTR_EPOCH, ChirpValue::Int(2)),
                (ATTR_TIME, ChirpValue::Int(200)),
            ])
        );
    }

    #[test]
    fn dropping_the_reporter_still_sends_what_was_reported() {
        let proxy = FakeProxy::start(&[]);
        let chirp = proxy.chirp();
        chirp.report(flush_attrs(3.0));
        drop(chirp);
        let sets = proxy.sets(1);
        assert_eq!(sets.len(), 1);
        assert_eq!(decoded(&sets[0]), ChirpValue::Real(3.0));
    }

    /// The venv's Python with the PyPI `htcondor` package, if the tests have one.
    fn htcondor_python() -> Option<PathBuf> {
        let p = std::env::var_os("BATON_TEST_MOTO")
            .map(|m| PathBuf::from(m).with_file_name("python3"))
            .unwrap_or_else(|| root().join(".venv/bin/python3"));
        let ok = Command::new(&p).args(["-c", "import classad2, htcondor2.htchirp"]).output();
        match ok {
            Ok(o) if o.status.success() => Some(p),
            _ => {
                eprintln!(
                    "NOTE: skipping the comparison with htcondor2.htchirp: {} cannot import it (install requirements-test.txt into .venv)",
                    p.display()
                );
                None
            }
        }
    }

    /// HTCondor's own Python client (`htcondor2.htchirp`, values quoted by `classad2.quote`)
    /// sends byte for byte the lines baton sends. Reals are given as baton writes them
    /// and classad2 must read them back as exactly the same number.
    #[test]
    fn same_lines_as_htcondors_python_client() {
        let Some(python) = htcondor_python() else { return };
        const SCRIPT: &str = r#"
import json, math, sys
import classad2
from htcondor2.htchirp import HTChirp
cases = json.load(open(sys.argv[1]))
host, port, cookie = open(sys.argv[2]).read().split()
chirp = HTChirp(host=host, port=int(port), cookie=cookie)
with chirp:
    for c in cases:
        if c["kind"] == "str":
            expr = classad2.quote(c["value"])
        elif c["kind"] == "int":
            expr = str(c["value"])
        else:
            expr, want = c["literal"], float(c["value"])
            got = classad2.ExprTree(expr).eval()
            assert isinstance(got, float), (expr, got)
            assert got == want or (math.isnan(got) and math.isnan(want)), (expr, got, want)
        chirp.set_job_attr_delayed(c["name"], expr)
"#;
        let mut cases = tricky();
        cases.extend([
            ("ChirpR6", ChirpValue::Real(f64::NAN)),
            ("ChirpR7", ChirpValue::Real(f64::INFINITY)),
            ("ChirpR8", ChirpValue::Real(f64::NEG_INFINITY)),
            ("ChirpR9", ChirpValue::Real(5e-324)),
        ]);
        let json: Vec<Json> = cases
            .iter()
            .map(|(name, v)| match v {
                ChirpValue::Int(i) => serde_json::json!({"name": name, "kind": "int", "value": i}),
                ChirpValue::Str(s) => serde_json::json!({"name": name, "kind": "str", "value": s}),
                ChirpValue::Real(x) => {
                    serde_json::json!({"name": name, "kind": "real", "value": format!("{x:?}"), "literal": classad_real(*x)})
                }
            })
            .collect();
        let proxy = FakeProxy::start(&[]);
        let cases_file = proxy.dir.path().join("cases.json");
        std::fs::write(&cases_file, serde_json::to_vec(&json).unwrap()).unwrap();
        let out = Command::new(&python).args(["-c", SCRIPT]).arg(&cases_file).arg(proxy.config()).output().unwrap();
        assert!(out.status.success(), "htchirp failed: {}", String::from_utf8_lossy(&out.stderr));
        let sets = proxy.sets(cases.len());
        assert_eq!(sets.len(), cases.len());
        for ((name, value), set) in cases.iter().zip(&sets) {
            assert_eq!(set["reply"], 0, "{set}");
            let baton = encode_set_delayed(name, value);
            assert_eq!(
                set["raw"].as_str(),
                Some(baton.trim_end_matches('\n')),
                "{name}: htchirp sent {}, baton sends {baton:?}",
                set["raw"]
            );
        }
    }
}
