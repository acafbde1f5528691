//! The commit channel between the trainer and the supervisor: a Unix stream socket at
//! `$BATON_SOCKET`. One JSON line in (`{"epoch":3,"step":0,"meta":{}}`), one JSON line
//! out (`{"ok":true,"seq":4}` or `{"ok":false,"error":"..."}`). The reply is sent only
//! after the files are captured, so the trainer may overwrite them once it has it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub const ENV_SOCKET: &str = "BATON_SOCKET";
const MAX_REQUEST: u64 = 64 * 1024;
/// Connections served at once. Each holds a file descriptor; more wait in the kernel's
/// backlog instead of exhausting baton's descriptors, which it needs for the store and
/// for the attempt's end record.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request line within this time: a connection that says
/// nothing is dropped rather than held forever.
const REQUEST_WAIT: Duration = Duration::from_secs(3);
/// After a failed accept (EMFILE and the like), wait before the next: retrying at once
/// spins a core and starves the trainer.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub type Incoming = (Request, tokio::sync::oneshot::Sender<Reply>);

/// Accept commit requests until the listener is dropped, handing each to `tx`.
pub async fn serve(listener: tokio::net::UnixListener, tx: tokio::sync::mpsc::Sender<Incoming>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut warned = false;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!("commit socket: cannot accept a connection ({e}); retrying");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            let reply = match tokio::time::timeout(REQUEST_WAIT, reader.read_line(&mut line)).await {
                Err(_) => return, // said nothing: not a client
                Ok(Err(e)) => Reply { ok: false, seq: None, error: Some(format!("cannot read the request: {e}")) },
                Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                    Err(e) => Reply {
                        ok: false,
                        seq: None,
                        error: Some(format!("not a commit request ({e}); send one JSON line like {{\"epoch\": 3}}")),
                    },
                    Ok(req) => {
                        let (rtx, rrx) = tokio::sync::oneshot::channel();
                        if tx.send((req, rtx)).await.is_err() {
                            Reply { ok: false, seq: None, error: Some("baton is shutting down".into()) }
                        } else {
                            rrx.await.unwrap_or(Reply { ok: false, seq: None, error: Some("baton is shutting down".into()) })
                        }
                    }
                },
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

/// The client side, used by `baton commit`. `wait` bounds the whole exchange: the
/// reply comes once the files are captured, so it must allow for copying a large
/// checkpoint, but a supervisor that never answers must not hang the trainer.
pub async fn send(socket: &str, req: &Request, wait: Duration) -> anyhow::Result<Reply> {
    tokio::time::timeout(wait, exchange(socket, req)).await.map_err(|_| {
        anyhow::anyhow!(
            "the baton supervisor at {socket} did not answer within {}; is `baton run` stuck? (raise the limit with --timeout)",
            humantime::format_duration(wait)
        )
    })?
}

async fn exchange(socket: &str, req: &Request) -> anyhow::Result<Reply> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the baton supervisor at {socket}: {e} (is `baton run` still running?)"))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    serde_json::from_str(reply.trim()).map_err(|e| anyhow::anyhow!("the supervisor sent an unreadable reply ({e}): {reply:?}"))
}
