//! The commit channel between the trainer and the supervisor: a Unix stream socket at
//! `$BATON_SOCKET`. One JSON line in (`{"epoch":3,"step":0,"meta":{}}`), one JSON line
//! out (`{"ok":true,"seq":4}` or `{"ok":false,"error":"..."}`). The reply is sent only
//! after the files are captured, so the trainer may overwrite them once it has it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub const ENV_SOCKET: &str = "BATON_SOCKET";
const MAX_REQUEST: u64 = 64 * 1024;

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
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let reply = match BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST)).read_line(&mut line).await {
                Err(e) => Reply { ok: false, seq: None, error: Some(format!("cannot read the request: {e}")) },
                Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
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

/// The client side, used by `baton commit`.
pub async fn send(socket: &str, req: &Request) -> anyhow::Result<Reply> {
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
