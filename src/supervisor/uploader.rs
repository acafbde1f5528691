//! The background uploader: one checkpoint at a time, oldest first, reporting each
//! outcome back to the event loop. Once told to keep only the newest (eviction),
//! checkpoints that a newer one supersedes are dropped, whether queued or uploading.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::attempt::Attempt;
use crate::capture::Snapshot;
use crate::manifest::Manifest;
use crate::store::{KnownChunks, Store, StoreError};
use crate::upload::{self, CommitInfo};

/// A commit waiting for upload.
pub struct Job {
    pub info: CommitInfo,
    pub source: Source,
}

pub enum Source {
    /// A fresh copy of the checkpoint directory.
    Snapshot(Snapshot),
    /// The same files as this earlier seq: the directory has not changed since.
    Same(u64),
}

impl Source {
    fn discard(&self) {
        if let Source::Snapshot(s) = self {
            s.discard();
        }
    }

    fn repeats(&self, seq: u64) -> bool {
        matches!(self, Source::Same(s) if *s == seq)
    }
}

/// What became of one commit's upload.
#[derive(Debug)]
pub enum Outcome {
    /// The manifest is written: the checkpoint is durable.
    Durable(Box<Manifest>),
    /// Dropped during an eviction for a newer commit: not a failure.
    Superseded,
    /// Another writer already owns the seq (a zombie attempt of the same run).
    Conflict(String),
    Failed(String),
}

#[derive(Debug)]
pub struct Done {
    pub seq: u64,
    pub outcome: Outcome,
}

/// The uploader task ended (it panicked): nothing queued will be uploaded.
#[derive(Debug, thiserror::Error)]
#[error("the uploader has stopped")]
pub struct Stopped;

/// The event loop's handle on the uploader; dropping it ends the task once the queue
/// is empty.
pub struct Uploader {
    jobs: mpsc::UnboundedSender<Job>,
    newest_only: Arc<AtomicBool>,
}

impl Uploader {
    /// Start the task; outcomes arrive on the returned receiver, one per queued job.
    pub fn spawn(
        store: Store,
        attempt: Attempt,
        settings: upload::Settings,
        known: KnownChunks,
    ) -> (Uploader, mpsc::UnboundedReceiver<Done>) {
        let (jobs_tx, jobs) = mpsc::unbounded_channel();
        let (done, done_rx) = mpsc::unbounded_channel();
        let newest_only = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            target: Target { store, attempt, settings, known },
            jobs,
            done,
            newest_only: newest_only.clone(),
            queue: VecDeque::new(),
            last_ok: None,
        };
        tokio::spawn(worker.work());
        (Uploader { jobs: jobs_tx, newest_only }, done_rx)
    }

    pub fn queue(&self, job: Job) -> Result<(), Stopped> {
        self.jobs.send(job).map_err(|_| Stopped)
    }

    /// From now on only the newest checkpoint has to beat the hard kill.
    pub fn keep_newest_only(&self) {
        self.newest_only.store(true, Ordering::SeqCst);
    }
}

/// Where uploads go and how.
struct Target {
    store: Store,
    attempt: Attempt,
    settings: upload::Settings,
    known: KnownChunks,
}

impl Target {
    async fn upload(&self, job: &Job, last_ok: Option<&Manifest>) -> anyhow::Result<Manifest> {
        match &job.source {
            Source::Snapshot(snap) => upload::upload(&self.store, &self.attempt, &job.info, snap, &self.settings, &self.known).await,
            Source::Same(seq) => match last_ok {
                Some(m) if m.seq == *seq => upload::repeat(&self.store, &self.attempt, &job.info, m).await,
                _ => Err(anyhow::anyhow!("it repeats checkpoint {seq}, which did not become durable")),
            },
        }
    }
}

struct Worker {
    target: Target,
    jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    newest_only: Arc<AtomicBool>,
    queue: VecDeque<Job>,
    /// The newest checkpoint uploaded from a snapshot: what a `Source::Same` repeats.
    last_ok: Option<Manifest>,
}

impl Worker {
    async fn work(mut self) {
        while self.wait_for_jobs().await {
            if self.newest_only() {
                self.drop_superseded();
            }
            let job = self.queue.pop_front().expect("wait_for_jobs returns true only with a job queued");
            match self.upload_unless_superseded(&job).await {
                Some(result) => self.report(job, result),
                None => {
                    // The manifest is an upload's last write, so a dropped one leaves only
                    // chunks, which a later upload reuses or `prune` collects.
                    job.source.discard();
                    self.superseded(job.info.seq, "cancelling");
                }
            }
        }
    }

    /// Take every job sent so far, waiting for one if none is queued; false once the
    /// handle is dropped and nothing is left.
    async fn wait_for_jobs(&mut self) -> bool {
        loop {
            while let Ok(j) = self.jobs.try_recv() {
                self.queue.push_back(j);
            }
            if !self.queue.is_empty() {
                return true;
            }
            match self.jobs.recv().await {
                Some(j) => self.queue.push_back(j),
                None => return false,
            }
        }
    }

    fn newest_only(&self) -> bool {
        self.newest_only.load(Ordering::SeqCst)
    }

    /// Drop every queued job but the newest.
    fn drop_superseded(&mut self) {
        while self.queue.len() > 1 {
            let old = self.queue.pop_front().expect("more than one job is queued");
            // A newer commit that repeats this one takes over its files.
            let newest = self.queue.back_mut().expect("more than one job was queued");
            if newest.source.repeats(old.info.seq) {
                newest.source = old.source;
            } else {
                old.source.discard();
            }
            self.superseded(old.info.seq, "skipping");
        }
    }

    /// Upload `job`, queueing what arrives meanwhile; none if a newer commit superseded
    /// it first. During an eviction a newer commit supersedes the upload in flight too:
    /// only the newest checkpoint has to beat the hard kill, and the window may not hold
    /// two uploads. (Not when the newer commit repeats this one's files.)
    async fn upload_unless_superseded(&mut self, job: &Job) -> Option<anyhow::Result<Manifest>> {
        let upload = self.target.upload(job, self.last_ok.as_ref());
        tokio::pin!(upload);
        loop {
            tokio::select! {
                r = &mut upload => return Some(r),
                Some(j) = self.jobs.recv() => {
                    let needs_this = j.source.repeats(job.info.seq);
                    self.queue.push_back(j);
                    if self.newest_only.load(Ordering::SeqCst) && !needs_this {
                        return None;
                    }
                }
            }
        }
    }

    fn report(&mut self, job: Job, result: anyhow::Result<Manifest>) {
        if let (Ok(m), Source::Snapshot(_)) = (&result, &job.source) {
            self.last_ok = Some(m.clone());
        }
        job.source.discard();
        let outcome = match result {
            Ok(m) => Outcome::Durable(Box::new(m)),
            Err(e) if is_conflict(&e) => Outcome::Conflict(format!("{e:#}")),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        let _ = self.done.send(Done { seq: job.info.seq, outcome });
    }

    fn superseded(&self, seq: u64, action: &str) {
        tracing::warn!("eviction: {action} the upload of checkpoint {seq} (superseded by a newer commit)");
        let _ = self.done.send(Done { seq, outcome: Outcome::Superseded });
    }
}

fn is_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Conflict { .. })))
}
