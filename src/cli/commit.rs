//! `baton commit`: called by the trainer to say "this checkpoint is complete".

use baton::commit::{self, Request};
use baton::error::{usage, ErrorKind, Failure};

/// Tell the supervising `baton run` that the checkpoint directory holds a complete checkpoint.
#[derive(clap::Args)]
#[command(long_about = "Tell the supervising `baton run` that the checkpoint directory now holds a \
complete checkpoint. Returns once baton has captured the files; after that the trainer may \
overwrite them. Only works inside a command started by `baton run` (it needs $BATON_SOCKET).")]
pub struct Args {
    /// Epoch the checkpoint belongs to (e.g. epochs completed).
    #[arg(long)]
    epoch: Option<u64>,
    /// Step within the epoch, or global step.
    #[arg(long)]
    step: Option<u64>,
    /// Extra metadata recorded in the manifest, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = super::parse_kv)]
    meta: Vec<(String, String)>,
    /// Give up when the supervisor has not answered within this time (it answers once
    /// the files are captured, which for a very large checkpoint takes a while).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Print the supervisor's reply on stdout, one JSON line (`{"ok":true,"seq":4}`), so a
    /// caller learns the checkpoint's seq (baton_ckpt's fallback path reads it).
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    baton::signals::ignore_eviction_signals();
    let socket = std::env::var(commit::ENV_SOCKET)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| usage("baton commit must be run by a command started with `baton run` ($BATON_SOCKET is not set)"))?;
    let req = Request { epoch: a.epoch, step: a.step, meta: a.meta.into_iter().collect() };
    let reply = commit::send(&socket, &req, a.timeout).await?;
    if a.json {
        println!("{}", serde_json::to_string(&reply)?);
    }
    if reply.ok {
        tracing::debug!("committed checkpoint {}", reply.seq.unwrap_or(0));
        Ok(0)
    } else {
        Err(Failure::new(ErrorKind::Checkpoint, format!("commit failed: {}", reply.error.unwrap_or_default())).into())
    }
}
