//! `baton run`: wrap a training command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::StoreArg;
use baton::error::usage;
use baton::htcondor::Sandbox;
use baton::store::StoreUrl;
use baton::supervisor::{self, RunConfig};

/// Used when neither the flag nor an HTCondor ad gives a vacate window: the grace period
/// Slurm (KillWait) and Kubernetes give by default.
pub const DEFAULT_VACATE_WINDOW: Duration = Duration::from_secs(30);

/// Run a training command: restore, launch, upload commits, survive eviction.
#[derive(clap::Args)]
#[command(
    long_about = "Run a training command under baton.\n\n\
Before the command starts, the newest intact checkpoint of the run is restored into the \
checkpoint directory. The command commits checkpoints with `baton commit` (or by writing to \
$BATON_SOCKET), by exiting with the checkpoint exit code (it is restarted in place at once), or \
by exiting 0 (final checkpoint). Commits upload in the background. On SIGTERM (or INT, HUP, QUIT, \
USR1, USR2) the signal is forwarded to the command's process group; the command gets its share of \
the vacate window to commit and exit, then it is killed, the newest commit is flushed, and baton \
exits with the command's status before the window ends.",
    after_help = "Examples:\n  baton run --store s3://bucket/ckpt --run-id resnet-1 -- python3 train.py --epochs 90\n  \
baton run --checkpoint-exit-code 85 -- ./train.sh          (existing exit-85 jobs)\n\
Environment given to the command: BATON_CHECKPOINT_DIR, BATON_RUN_ID, BATON_ATTEMPT, BATON_RESTORED_SEQ/EPOCH/STEP, \
BATON_DEVICE, BATON_PREV_DEVICE, BATON_SOCKET, BATON_BIN, BATON_FAMILY (marks the command's processes for cleanup), BATON_DATA_<NAME> for each --data; with --nodes above 1 also MASTER_ADDR, MASTER_PORT, NODE_RANK, NNODES (for torchrun), BATON_NODE_RANK, BATON_NODES, BATON_RENDEZVOUS_GENERATION, and BATON_RESTORED_NODES (the node count of the checkpoint restored).\n\
With datasets:\n  baton run --run-id r1 --data imagenet=/scratch/in --cache /var/tmp/baton-cache -- python3 train.py"
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArg,
    /// Names the run across restarts [default: $BATON_RUN_ID, else from the HTCondor job ad].
    #[arg(long, value_name = "ID", value_parser = super::parse_run_id)]
    run_id: Option<baton::identity::RunId>,
    /// Where the command reads and writes its checkpoint files
    /// [default: $_CONDOR_SCRATCH_DIR/checkpoint, else ./checkpoint].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Exit code meaning "checkpoint written, restart me" [default: the job ad's SuccessCheckpointExitCode].
    #[arg(long, value_name = "CODE", value_parser = parse_checkpoint_exit_code)]
    checkpoint_exit_code: Option<i32>,
    /// Time between the soft kill and the hard kill, e.g. 600s or 2m
    /// [default: job ad JobMaxVacateTime, else machine ad MachineMaxVacateTime, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    vacate_window: Option<Duration>,
    /// Fraction of the vacate window the command gets to save and exit before it is killed;
    /// the rest is baton's, to flush.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5, value_parser = parse_share)]
    trainer_share: f64,
    /// Send this signal to the command instead of the one baton received (e.g. INT for
    /// trainers that save on KeyboardInterrupt).
    #[arg(long, value_name = "SIGNAL", value_parser = baton::process::parse_signal)]
    forward_signal: Option<nix::sys::signal::Signal>,
    /// Chunks uploaded at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    upload_concurrency: u16,
    /// While the command trains, background uploads run this much below its CPU priority
    /// (a nice increment, 0-19; 0: the same), so training comes first. Restores, and the
    /// flush once the command is evicted or ends, run at normal priority.
    #[arg(long, value_name = "N", env = "BATON_UPLOAD_NICE", default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    upload_nice: i32,
    /// zstd level for chunks (0: store raw).
    #[arg(long, value_name = "LEVEL", default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=19))]
    zstd_level: i32,
    /// The device to record and pass as BATON_DEVICE [default: from the machine ad or nvidia-smi, else cpu].
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Nodes of a run on several nodes: every node runs `baton run` with the same run id,
    /// its --node-rank and this count (docs/htcondor.md, section 6) [default: 1].
    #[arg(long, value_name = "N", env = "BATON_NODES", value_parser = clap::value_parser!(u32).range(1..=baton::store::MAX_NODES as i64))]
    nodes: Option<u32>,
    /// This node's rank, 0 to N-1, with --nodes N (in a submit file with `queue N`:
    /// --node-rank $(ProcId)). Node 0 publishes its address in the store; the others wait for it.
    #[arg(long, value_name = "RANK", env = "BATON_NODE_RANK")]
    node_rank: Option<u32>,
    /// How long a node other than node 0 waits for node 0's address.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    rendezvous_timeout: Duration,
    /// Node 0: the address the other nodes reach it at [default: this host's routed address].
    #[arg(long, value_name = "ADDR")]
    master_addr: Option<String>,
    /// Node 0: the port torchrun listens on [default: a free one].
    #[arg(long, value_name = "PORT")]
    master_port: Option<u16>,
    /// Pull a dataset into PATH before the command starts, while the checkpoint is
    /// restored (NAME: its newest version; NAME@VERSION: that one). The command finds it in
    /// PATH and in $BATON_DATA_<NAME> (uppercased, other characters `_`). Repeatable.
    #[arg(long = "data", value_name = "NAME[@VERSION]=PATH", value_parser = baton::data::Mount::parse)]
    data: Vec<baton::data::Mount>,
    #[command(flatten)]
    cache: super::data::CacheArgs,
    /// Dataset chunks downloaded at once.
    #[arg(long, value_name = "N", default_value_t = baton::data::pull::CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    data_concurrency: u16,
    /// The training command and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// 0 means "finished" and would restart a finished command forever; exit statuses are
/// 0-255, and 128 + N is how a shell reports death by signal N.
fn parse_checkpoint_exit_code(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(0) => Err("0 means the command finished; pick a code the trainer uses only for \"checkpoint written, restart me\" (HTCondor's convention is 85)".into()),
        Ok(c) if (1..=255).contains(&c) => Ok(c),
        _ => Err(format!("{s}: an exit code is a number from 1 to 255 (HTCondor's convention is 85)")),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s}: not a number"))?;
    if !(0.05..=0.95).contains(&v) {
        return Err(format!("{s}: must be between 0.05 and 0.95"));
    }
    Ok(v)
}

const MISSING_COMMAND: &str = "baton run needs a command after `--`, for example: baton run --run-id r1 -- python3 train.py";

impl Args {
    /// What is wrong with the command line that clap cannot see, for `--parse-only` too.
    pub fn problem(&self) -> Option<String> {
        if self.command.is_empty() {
            return Some(MISSING_COMMAND.into());
        }
        baton::data::check_mounts(&self.data).err()
    }
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    if a.command.is_empty() {
        return Err(usage(MISSING_COMMAND));
    }
    let sandbox = Sandbox::from_env();
    let run = match a.run_id {
        Some(r) => r,
        None => match std::env::var("BATON_RUN_ID").ok().filter(|s| !s.is_empty()) {
            Some(s) => baton::identity::RunId::parse(&s).map_err(|e| usage(format!("BATON_RUN_ID: {e}")))?,
            None => sandbox.run_id().ok_or_else(|| match sandbox.run_id_problem() {
                Some(problem) => {
                    usage(format!("no run id: {problem}, so baton cannot name the run after the job; pass --run-id ID or set BATON_RUN_ID"))
                }
                None => usage("no run id: pass --run-id ID or set BATON_RUN_ID (under HTCondor it comes from the job ad's GlobalJobId)"),
            })?,
        },
    };
    let url = a.store.url()?;
    let dir = match a.dir {
        Some(d) => d,
        None => match &sandbox.scratch {
            Some(s) => s.join("checkpoint"),
            None => PathBuf::from("checkpoint"),
        },
    };
    let dir = std::path::absolute(&dir).map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    if std::fs::metadata(&dir).is_ok_and(|m| !m.is_dir()) {
        return Err(usage(format!(
            "the checkpoint directory {} exists and is not a directory; pass --dir with a directory",
            dir.display()
        )));
    }
    if let (StoreUrl::Dir(store_dir), Some(scratch), true) = (&url, &sandbox.scratch, sandbox.job.is_some()) {
        if std::path::absolute(store_dir).map(|p| p.starts_with(scratch)).unwrap_or(false) {
            tracing::warn!(
                "THE STORE {} IS INSIDE THIS JOB'S SCRATCH DIRECTORY: it is deleted with the slot, so checkpoints will not survive an eviction. Use --store s3://... or a shared filesystem.",
                store_dir.display()
            );
        }
    }
    let (vacate_window, window_source) = match (a.vacate_window, sandbox.vacate_window()) {
        (Some(w), _) => (w, "--vacate-window".to_string()),
        (None, Some((secs, source))) if secs > 0.0 => (Duration::from_secs_f64(secs), source.to_string()),
        _ if sandbox.job.is_some() || sandbox.machine.is_some() => {
            tracing::warn!(
                "the HTCondor ads give no vacate window (neither JobMaxVacateTime in the job ad nor MachineMaxVacateTime in the machine ad); baton plans for the default {} s (set --vacate-window to change it)",
                DEFAULT_VACATE_WINDOW.as_secs()
            );
            (DEFAULT_VACATE_WINDOW, "the default (the ads give none)".to_string())
        }
        _ => (DEFAULT_VACATE_WINDOW, "the default (no flag, no HTCondor ad)".to_string()),
    };
    if vacate_window < Duration::from_secs(2) {
        return Err(usage(format!(
            "a vacate window of {:.1} s ({window_source}) leaves no time to save and flush; baton needs at least 2 s",
            vacate_window.as_secs_f64()
        )));
    }
    let checkpoint_exit_code = match (a.checkpoint_exit_code, sandbox.checkpoint_exit_code()) {
        (Some(c), _) => Some(c),
        (None, Some(c)) if (1..=255).contains(&c) => {
            tracing::info!("checkpoint exit code {c} from the job ad (SuccessCheckpointExitCode)");
            Some(c)
        }
        (None, Some(c)) => {
            tracing::warn!("ignoring SuccessCheckpointExitCode = {c} in the job ad: a checkpoint exit code is a number from 1 to 255");
            None
        }
        (None, None) => None,
    };
    let (device, device_info) = match a.device {
        Some(d) => (d, None),
        None => {
            let info = baton::device::detect_info(&sandbox);
            (info.to_string(), Some(info))
        }
    };
    let nodes = match (a.nodes.unwrap_or(1), a.node_rank) {
        (1, None | Some(0)) => None,
        (1, Some(r)) => return Err(usage(format!("--node-rank {r} needs --nodes with more than {r} nodes"))),
        (n, None) => {
            return Err(usage(format!(
                "--nodes {n} needs this node's --node-rank (0 to {}); in a submit file with `queue {n}`: --node-rank $(ProcId)",
                n - 1
            )))
        }
        (n, Some(r)) if r >= n => return Err(usage(format!("--node-rank {r} is out of range for --nodes {n} (0 to {})", n - 1))),
        (n, Some(r)) => Some(supervisor::NodesConfig {
            topology: baton::nodes::Topology { node: r, nodes: n },
            master_addr: a.master_addr,
            master_port: a.master_port,
            timeout: a.rendezvous_timeout,
        }),
    };
    let mut data = a.data;
    for m in &mut data {
        m.path = std::path::absolute(&m.path).map_err(|e| usage(format!("--data {}: {e}", m.path.display())))?;
    }
    baton::data::check_mounts(&data).map_err(usage)?;
    let data_settings = baton::data::pull::PullSettings {
        concurrency: a.data_concurrency as usize,
        cache: if data.is_empty() { None } else { a.cache.open()? },
    };
    let store = a.store.open()?;
    let cfg = RunConfig {
        store,
        run,
        dir,
        command: a.command,
        checkpoint_exit_code,
        vacate_window,
        window_source,
        trainer_share: a.trainer_share,
        forward_signal: a.forward_signal,
        upload: baton::upload::Settings { concurrency: a.upload_concurrency as usize, zstd_level: a.zstd_level },
        upload_nice: a.upload_nice,
        device,
        device_info,
        job_ids: sandbox.job_ids(),
        nodes,
        data,
        data_settings,
    };
    supervisor::run(cfg).await
}
