//! The command line: flags, help, logging and printing. The engine modules return data;
//! only this module talks to the user.

mod advise;
mod commit;
mod data;
mod exit;
mod inspect;
mod prune;
mod restore;
mod run;
mod simulate;
mod verify;

use clap::{Parser, Subcommand};

use baton::error::usage;
use baton::store::{Store, StoreUrl};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Checkpoint-aware training wrapper for preemptible slots",
    long_about = "baton runs a training command so that evictions cost minutes, not days: it restores \
the newest valid checkpoint before the command starts, uploads each committed checkpoint in the \
background (sha256, zstd, content-addressed chunks), and on eviction lets the trainer save, \
flushes what is not yet durable and exits before the hard kill.\n\n\
Typical HTCondor use:  executable = baton\n                      arguments = run --store s3://bucket/ckpt -- python3 train.py",
    after_help = "Store URLs: a path or file:///path (the default store is a local directory), s3://bucket/prefix \
(AWS_* variables, AWS_ENDPOINT_URL for non-AWS servers), pelican://host/namespace/path or osdf:///namespace/path \
(bearer token from --token-file, BEARER_TOKEN, BEARER_TOKEN_FILE or HTCondor's $_CONDOR_CREDS). Default: $BATON_STORE, else ~/.local/share/baton/store.\n\
Docs: docs/protocol.md (trainer side), docs/store.md (layout), docs/exit-codes.md."
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). Logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Check the command line and exit (used to test submit files' `arguments`).
    #[arg(long, global = true, hide = true)]
    parse_only: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct StoreArg {
    /// Where checkpoints live: a path, file:///path, s3://bucket/prefix,
    /// pelican://host/namespace/path or osdf:///namespace/path.
    #[arg(long, env = "BATON_STORE", value_name = "URL", value_parser = check_store_url)]
    store: Option<String>,
    /// Pelican/OSDF: the bearer token file, looked at before BEARER_TOKEN,
    /// BEARER_TOKEN_FILE, $XDG_RUNTIME_DIR/bt_u<uid>, /tmp/bt_u<uid>, TOKEN and
    /// $_CONDOR_CREDS (re-read before every request batch).
    #[arg(long, env = "BATON_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
}

impl StoreArg {
    pub fn url(&self) -> anyhow::Result<StoreUrl> {
        match &self.store {
            Some(s) => StoreUrl::parse(s).map_err(usage),
            None => Ok(StoreUrl::Dir(default_store_dir())),
        }
    }

    pub fn open(&self) -> anyhow::Result<Store> {
        let options = baton::store::Options { token_file: self.token_file.clone() };
        Store::open_with(&self.url()?, &options)
    }

    /// `--token-file` as an absolute path, for `baton run` processes started elsewhere.
    pub fn token_file(&self) -> anyhow::Result<Option<std::path::PathBuf>> {
        Ok(match &self.token_file {
            Some(p) => Some(std::path::absolute(p)?),
            None => None,
        })
    }
}

/// Store URLs are checked while the command line is parsed (so `--parse-only` catches
/// a bad one too); the text is kept as written.
pub(crate) fn check_store_url(s: &str) -> Result<String, String> {
    StoreUrl::parse(s).map(|_| s.to_string())
}

fn default_store_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(d).join("baton/store");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => std::path::PathBuf::from(h).join(".local/share/baton/store"),
        None => std::path::PathBuf::from("baton-store"),
    }
}

#[derive(Subcommand)]
enum Command {
    Run(run::Args),
    Simulate(simulate::Args),
    Inspect(inspect::Args),
    Advise(advise::Args),
    Verify(verify::Args),
    Restore(restore::Args),
    Prune(prune::Args),
    Commit(commit::Args),
    Data(data::Args),
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        // rustls-platform-verifier logs every rejected certificate at ERROR; baton says
        // it once, in its own error.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("baton={level},warn,rustls_platform_verifier=off")));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if cli.parse_only {
        let problem = match &cli.command {
            Command::Run(a) => a.problem(),
            Command::Simulate(a) => a.problem(),
            _ => None,
        };
        if let Some(p) = problem {
            eprintln!("baton: error: {p}");
            return 2;
        }
        println!("command line ok");
        return 0;
    }
    init_logging(cli.verbose, cli.quiet);
    if matches!(cli.command, Command::Inspect(_) | Command::Advise(_) | Command::Verify(_) | Command::Prune(_) | Command::Data(_)) {
        // `baton inspect | head` should end quietly, as other Unix tools do.
        baton::signals::default_sigpipe();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baton: cannot start: {e}");
            return 1;
        }
    };
    // A current-thread runtime keeps the event loop, and every fork, on the main thread:
    // the command's parent-death signal is tied to the thread that forked it.
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(a) => run::run(a).await,
            Command::Simulate(a) => simulate::run(a).await,
            Command::Inspect(a) => inspect::run(a).await,
            Command::Advise(a) => advise::run(a).await,
            Command::Verify(a) => verify::run(a).await,
            Command::Restore(a) => restore::run(a).await,
            Command::Prune(a) => prune::run(a).await,
            Command::Commit(a) => commit::run(a).await,
            Command::Data(a) => data::run(a).await,
        }
    });
    // Do not wait for blocking work still in flight (a compression the flush deadline
    // cut short): baton must be gone before the hard kill.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: error: {}", baton::error::chain(e.as_ref()));
            exit::code_of(&e)
        }
    }
}

/// Parse `K=V`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn parse_run_id(s: &str) -> Result<baton::identity::RunId, String> {
    baton::identity::RunId::parse(s)
}
