//! `baton data`: datasets in the store (push, pull, list, inspect).

use std::path::PathBuf;
use std::sync::Arc;

use super::StoreArg;
use baton::data::cache::{parse_size, Cache};
use baton::data::pull::PullSettings;
use baton::data::{DataRef, DatasetName};
use baton::error::{usage, Classify, ErrorKind};
use baton::format;

/// Datasets: store a directory once, pull it (through a node-local cache) before jobs start.
#[derive(clap::Args)]
#[command(
    long_about = "Datasets live in the same store as the checkpoints, in the same content-addressed \
chunks: a version that changes a few files stores only those, and what a dataset shares with \
anything already in the store is stored once. Each push makes a new, write-once version.\n\n\
Pulls check every chunk against its hash and every file against its sha256. With --cache DIR \
(or $BATON_CACHE_DIR) chunks are kept in a node-local cache that the jobs on one machine share: \
the second job, or a restart on the same machine, downloads nothing. See docs/data.md.",
    after_help = "Examples:\n  baton data push ./imagenet --name imagenet          store a new version\n  \
baton data list                                     every dataset\n  \
baton data inspect imagenet                         its versions; imagenet@2 lists version 2's files\n  \
baton data pull imagenet@2 --to /scratch/in --cache /var/tmp/baton-cache\n  \
baton run --data imagenet=/scratch/in -- python3 train.py    (pulled before the command starts)"
)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand)]
enum DataCommand {
    Push(PushArgs),
    Pull(PullArgs),
    List(ListArgs),
    Inspect(InspectArgs),
}

/// Store a directory as the next version of a dataset.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  baton data push ./imagenet --name imagenet\n  \
baton data push /data/c4 --name c4 --store s3://ml/store --json")]
struct PushArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The directory to store (every regular file under it; symlinks to files inside it).
    dir: PathBuf,
    /// The dataset's name (letters, digits, . _ -).
    #[arg(long, value_name = "NAME", value_parser = DatasetName::parse)]
    name: DatasetName,
    /// Files read and uploaded at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// zstd level for chunks (0: store raw).
    #[arg(long, value_name = "LEVEL", default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=19))]
    zstd_level: i32,
    /// Print the new version's manifest as JSON.
    #[arg(long)]
    json: bool,
}

/// The node-local chunk cache, for `data pull` and `run --data`.
#[derive(clap::Args, Clone)]
pub struct CacheArgs {
    /// A node-local cache of chunks shared by the jobs on this machine, e.g. /var/tmp/baton-cache
    /// [default: none].
    #[arg(long, env = "BATON_CACHE_DIR", value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Bound on the cache's size, e.g. 20G; least recently used chunks are evicted
    /// [default: half its filesystem, at most 50G].
    #[arg(long, env = "BATON_CACHE_MAX", value_name = "SIZE", value_parser = parse_size)]
    cache_max: Option<u64>,
}

impl CacheArgs {
    pub fn open(&self) -> anyhow::Result<Option<Arc<Cache>>> {
        match &self.cache {
            None => Ok(None),
            Some(dir) => {
                let dir = std::path::absolute(dir).map_err(|e| usage(format!("--cache {}: {e}", dir.display())))?;
                Ok(Some(Arc::new(Cache::open(&dir, self.cache_max)?)))
            }
        }
    }
}

/// Bring a dataset version into a new or empty directory, every byte checked.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  baton data pull imagenet --to ./in                  newest version\n  \
baton data pull imagenet@2 --to ./in --cache /var/tmp/baton-cache --cache-max 200G")]
struct PullArgs {
    #[command(flatten)]
    store: StoreArg,
    /// NAME or NAME@VERSION [default version: the newest].
    #[arg(value_name = "NAME[@VERSION]", value_parser = DataRef::parse)]
    data: DataRef,
    /// Directory to write into; must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
    /// Chunks downloaded at once.
    #[arg(long, value_name = "N", default_value_t = baton::data::pull::CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Print what was done as JSON (files, bytes, chunks fetched from the store, cache hits).
    #[arg(long)]
    json: bool,
}

/// List the datasets in the store.
#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Show a dataset's versions, or one version's files.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  baton data inspect imagenet            its versions\n  \
baton data inspect imagenet@2 --json   version 2's manifest")]
struct InspectArgs {
    #[command(flatten)]
    store: StoreArg,
    /// NAME (its versions) or NAME@VERSION (that version's files).
    #[arg(value_name = "NAME[@VERSION]", value_parser = DataRef::parse)]
    data: DataRef,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    match a.command {
        DataCommand::Push(a) => push(a).await,
        DataCommand::Pull(a) => pull(a).await,
        DataCommand::List(a) => list(a).await,
        DataCommand::Inspect(a) => inspect(a).await,
    }
}

async fn push(a: PushArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let settings = baton::data::PushSettings {
        upload: baton::upload::Settings { zstd_level: a.zstd_level, ..Default::default() },
        files_at_once: a.concurrency as usize,
    };
    let m = baton::data::push(&store, &a.name, &a.dir, &settings).await?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&m.to_bytes()));
    } else {
        println!(
            "pushed dataset {} version {}: {} file(s), {}; {} new ({} stored) in {}",
            m.name,
            m.version,
            m.files.len(),
            format::bytes(m.sizes.logical_bytes),
            format::bytes(m.sizes.new_bytes),
            format::bytes(m.sizes.stored_bytes),
            format::seconds(m.sizes.upload_seconds)
        );
    }
    Ok(0)
}

async fn pull(a: PullArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let target = std::path::absolute(&a.to).map_err(|e| usage(format!("{}: {e}", a.to.display())))?;
    if let Ok(meta) = std::fs::symlink_metadata(&target) {
        let empty = meta.is_dir() && !meta.file_type().is_symlink() && std::fs::read_dir(&target).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            return Err(usage(format!("{} exists and is not an empty directory; pull into a new directory", target.display())));
        }
    }
    let settings = PullSettings { concurrency: a.concurrency as usize, cache: a.cache.open()? };
    let (_, stats) = baton::data::pull::pull(&store, &a.data, &target, None, &settings).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!("pulled {stats}");
    }
    Ok(0)
}

async fn list(a: ListArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let sets = baton::data::summaries(&store).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sets)?);
    } else {
        print_datasets(&store, &sets);
    }
    Ok(0)
}

/// The dataset table, also shown by `baton inspect`.
pub fn print_datasets(store: &baton::store::Store, sets: &[baton::data::DatasetSummary]) {
    if sets.is_empty() {
        println!("no datasets in {}", store.url());
        return;
    }
    println!("{:<40} {:>8} {:>6} {:>8} {:>9}  UPDATED", "DATASET", "VERSIONS", "LATEST", "FILES", "SIZE");
    for s in sets {
        match &s.error {
            None => println!(
                "{:<40} {:>8} {:>6} {:>8} {:>9}  {}",
                s.name,
                s.versions,
                s.latest,
                s.files.unwrap_or(0),
                format::bytes_short(s.logical_bytes.unwrap_or(0)),
                s.created.map(format::time).unwrap_or_default()
            ),
            Some(e) => println!("{:<40} {:>8} {:>6} DAMAGED: {e}", s.name, s.versions, s.latest),
        }
    }
}

async fn inspect(a: InspectArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let version = baton::data::resolve(&store, &a.data).await?;
    if a.data.version.is_some() {
        let m = baton::data::load(&store, &a.data.name, version).await?;
        if a.json {
            println!("{}", String::from_utf8_lossy(&m.to_bytes()));
            return Ok(0);
        }
        println!("dataset {} version {}, pushed {} from {}", m.name, m.version, format::time(m.created), m.host);
        println!(
            "  sizes    {} logical, {} new, {} stored; upload {}\n",
            format::bytes(m.sizes.logical_bytes),
            format::bytes(m.sizes.new_bytes),
            format::bytes(m.sizes.stored_bytes),
            format::seconds(m.sizes.upload_seconds)
        );
        println!("{:>12} {:>6} {:>6}  {:<64}  PATH", "SIZE", "MODE", "CHUNKS", "SHA256");
        for f in &m.files {
            println!("{:>12} {:>6o} {:>6}  {:<64}  {}", f.size, f.mode, f.chunks.len(), f.sha256, f.path);
        }
        return Ok(0);
    }
    // Every version: a damaged one is shown as such, not a reason to stop.
    let mut rows = Vec::new();
    for v in store.list_dataset_versions(&a.data.name).await? {
        rows.push(match baton::data::load(&store, &a.data.name, v).await {
            Ok(m) => serde_json::json!({
                "version": v, "files": m.files.len(), "created": m.created, "host": m.host,
                "logical_bytes": m.sizes.logical_bytes, "new_bytes": m.sizes.new_bytes, "stored_bytes": m.sizes.stored_bytes,
            }),
            Err(e) if e.kind() == ErrorKind::Integrity => serde_json::json!({ "version": v, "error": e.to_string() }),
            Err(e) => return Err(e.into()),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "name": a.data.name.as_str(), "versions": rows }))?);
        return Ok(0);
    }
    println!("dataset {} in {}\n", a.data.name, store.url());
    println!("{:>8} {:>8} {:>10} {:>10} {:>10}  PUSHED", "VERSION", "FILES", "LOGICAL", "NEW", "STORED");
    for r in &rows {
        match r.get("error") {
            Some(e) => println!("{:>8} DAMAGED: {}", r["version"].as_u64().unwrap_or(0), e.as_str().unwrap_or_default()),
            None => println!(
                "{:>8} {:>8} {:>10} {:>10} {:>10}  {} on {}",
                r["version"].as_u64().unwrap_or(0),
                r["files"].as_u64().unwrap_or(0),
                format::bytes_short(r["logical_bytes"].as_u64().unwrap_or(0)),
                format::bytes_short(r["new_bytes"].as_u64().unwrap_or(0)),
                format::bytes_short(r["stored_bytes"].as_u64().unwrap_or(0)),
                r["created"].as_f64().map(format::time).unwrap_or_default(),
                r["host"].as_str().unwrap_or_default()
            ),
        }
    }
    Ok(0)
}
