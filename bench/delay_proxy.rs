//! A TCP proxy that adds round-trip time, for the bench's latency rows (`bench/compare.sh`):
//! `tc netem` needs the sch_netem kernel module, which these machines do not have.
//! Every byte is delivered `rtt / 2` after it arrived, in each direction, with no limit
//! on bandwidth: a long fat pipe, which is what a distant object store looks like.
//!
//! usage: delay_proxy LISTEN_PORT UPSTREAM_HOST:PORT RTT_MS

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: delay_proxy LISTEN_PORT UPSTREAM_HOST:PORT RTT_MS");
        std::process::exit(2);
    }
    let upstream = args[2].clone();
    let rtt: u64 = args[3].parse().map_err(|e| std::io::Error::other(format!("RTT_MS: {e}")))?;
    let one_way = Duration::from_micros(rtt * 500);
    let listener = TcpListener::bind(("127.0.0.1", args[1].parse::<u16>().map_err(std::io::Error::other)?)).await?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // The connection set-up pays the round trip too.
            tokio::time::sleep(one_way * 2).await;
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(pipe(cr, sw, one_way), pipe(sr, cw, one_way));
        });
    }
}
