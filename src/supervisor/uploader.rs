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
            fallbacks: Vec::new(),
            last_ok: None,
            last_durable: None,
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
    async fn upload(&self, job: &Job, last_ok: Option<&Manifest>, last_durable: Option<&Manifest>) -> anyhow::Result<Manifest> {
        if let Some(m) = last_durable {
            self.still_ours(m).await?;
        }
        match &job.source {
            Source::Snapshot(snap) => upload::upload(&self.store, &self.attempt, &job.info, snap, &self.settings, &self.known).await,
            Source::Same(seq) => match last_ok {
                Some(m) if m.seq == *seq => upload::repeat(&self.store, &self.attempt, &job.info, m).await,
                _ => Err(anyhow::anyhow!("it repeats checkpoint {seq}, which did not become durable")),
            },
        }
    }
}

impl Target {
    /// Whether the newest manifest this attempt wrote is still the one in the store. A
    /// server that ignores create-only conditions lets a second writer of the run (an
    /// attempt HTCondor believes gone) overwrite it, and the read-back right after the
    /// write can come too early to see that. Read again before every later commit, it
    /// does: the loser finds out within one commit and stops loudly (exit 73) instead of
    /// training on while its checkpoints hold the other writer's bytes.
    async fn still_ours(&self, m: &Manifest) -> anyhow::Result<()> {
        let there = self.store.get_checkpoint_bytes(&self.attempt.run, m.seq, m.part.map(|p| p.node)).await?;
        if there != m.to_bytes() {
            return Err(StoreError::Conflict {
                key: format!("checkpoint {} of run {}", m.seq, self.attempt.run),
                detail: "another writer replaced this attempt's manifest after it was written (the store ignores create-only conditions, and an older attempt of this run is still running)".into(),
            }
            .into());
        }
        Ok(())
    }
}

struct Worker {
    target: Target,
    jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    newest_only: Arc<AtomicBool>,
    queue: VecDeque<Job>,
    /// During an eviction, commits a newer one superseded, oldest first: not uploaded,
    /// but kept, files and all, until the newest is durable, to upload instead should it
    /// fail. (Discarding them at once also unlinked files the newest may share by hard
    /// link, which changed their ctime under its integrity check: a false alarm that cost
    /// the whole attempt.)
    fallbacks: Vec<Job>,
    /// The newest checkpoint uploaded from a snapshot: what a `Source::Same` repeats.
    last_ok: Option<Manifest>,
    /// The newest manifest this attempt wrote, checked before the next commit.
    last_durable: Option<Manifest>,
}

impl Worker {
    async fn work(mut self) {
        while self.wait_for_jobs().await {
            if self.newest_only() {
                self.drop_superseded();
            }
            let job = self.queue.pop_front().expect("wait_for_jobs returns true only with a job queued");
            match self.upload_unless_superseded(&job).await {
                Some(result) => {
                    let durable = result.is_ok();
                    self.report(job, result);
                    self.settle_fallbacks(durable);
                }
                None => {
                    // The manifest is an upload's last write, so a cancelled one leaves
                    // only chunks, which a later upload reuses or `prune` collects.
                    tracing::warn!("eviction: cancelling the upload of checkpoint {} (superseded by a newer commit)", job.info.seq);
                    self.fallbacks.push(job);
                }
            }
        }
        for old in std::mem::take(&mut self.fallbacks) {
            self.superseded(old);
        }
    }

    /// After an upload: once a checkpoint is durable, the older ones it superseded are
    /// no longer needed; if it failed and nothing newer waits, the newest of them is
    /// uploaded instead, so an eviction never loses an older checkpoint it could keep.
    fn settle_fallbacks(&mut self, durable: bool) {
        if durable {
            for old in std::mem::take(&mut self.fallbacks) {
                self.superseded(old);
            }
        } else if self.queue.is_empty() {
            if let Some(older) = self.fallbacks.pop() {
                tracing::warn!("eviction: the newest checkpoint failed; uploading checkpoint {} instead", older.info.seq);
                self.queue.push_back(older);
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
                // Nothing is left to fall back on: its files are the newest's now.
                let _ = self.done.send(Done { seq: old.info.seq, outcome: Outcome::Superseded });
                newest.source = old.source;
            } else {
                tracing::warn!("eviction: skipping the upload of checkpoint {} (superseded by a newer commit)", old.info.seq);
                self.fallbacks.push(old);
            }
        }
    }

    /// Upload `job`, queueing what arrives meanwhile; none if a newer commit superseded
    /// it first. During an eviction a newer commit supersedes the upload in flight too:
    /// only the newest checkpoint has to beat the hard kill, and the window may not hold
    /// two uploads. (Not when the newer commit repeats this one's files.)
    async fn upload_unless_superseded(&mut self, job: &Job) -> Option<anyhow::Result<Manifest>> {
        let upload = self.target.upload(job, self.last_ok.as_ref(), self.last_durable.as_ref());
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
        if let Ok(m) = &result {
            self.last_durable = Some(m.clone());
        }
        job.source.discard();
        let outcome = match result {
            Ok(m) => Outcome::Durable(Box::new(m)),
            Err(e) if is_conflict(&e) => Outcome::Conflict(crate::error::chain(e.as_ref())),
            Err(e) => Outcome::Failed(crate::error::chain(e.as_ref())),
        };
        let _ = self.done.send(Done { seq: job.info.seq, outcome });
    }

    /// A superseded commit is given up for good: its files go, and the loop hears of it.
    fn superseded(&self, old: Job) {
        old.source.discard();
        let _ = self.done.send(Done { seq: old.info.seq, outcome: Outcome::Superseded });
    }
}

fn is_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Conflict { .. })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture;
    use crate::identity::RunId;
    use crate::manifest::Reason;
    use crate::store::StoreUrl;
    use tempfile::TempDir;

    /// A directory store, a live checkpoint directory and a staging area. The tests run
    /// on a current-thread runtime, so the uploader sees every job queued before the
    /// test first waits: what it drops during an eviction does not depend on timing.
    struct Fixture {
        _store: TempDir,
        live: TempDir,
        staging: TempDir,
        store: Store,
        attempt: Attempt,
    }

    fn fixture() -> Fixture {
        let (store_dir, live, staging) = (temp(), temp(), temp());
        let store = Store::open(&StoreUrl::Dir(store_dir.path().to_path_buf())).expect("a directory store");
        let attempt = Attempt {
            run: RunId::parse("uploader-test").expect("a valid run id"),
            number: 1,
            host: "test".into(),
            device: "cpu".into(),
            device_info: None,
            htcondor: Default::default(),
            writer: "test:1:1".into(),
            part: None,
        };
        Fixture { _store: store_dir, live, staging, store, attempt }
    }

    fn temp() -> TempDir {
        tempfile::tempdir().expect("a temporary directory")
    }

    impl Fixture {
        fn spawn(&self) -> (Uploader, mpsc::UnboundedReceiver<Done>) {
            Uploader::spawn(self.store.clone(), self.attempt.clone(), upload::Settings::default(), KnownChunks::default())
        }

        /// The live directory holding `content`, snapshotted for `seq`.
        fn snapshot(&self, seq: u64, content: &str) -> Source {
            std::fs::write(self.live.path().join("model.bin"), content).expect("a file in the live directory");
            let staging = self.staging.path().join(seq.to_string());
            Source::Snapshot(capture::snapshot(self.live.path(), &staging, capture::Hold::Copy).expect("a snapshot"))
        }
    }

    fn job(seq: u64, source: Source) -> Job {
        let info = CommitInfo { seq, reason: Reason::Commit, epoch: None, step: None, meta: Default::default(), created: 1.7e9 };
        Job { info, source }
    }

    async fn next(done: &mut mpsc::UnboundedReceiver<Done>) -> Done {
        done.recv().await.expect("an outcome for every queued job")
    }

    fn durable(d: Done) -> Box<Manifest> {
        match d.outcome {
            Outcome::Durable(m) => m,
            other => panic!("checkpoint {} is not durable: {other:?}", d.seq),
        }
    }

    #[tokio::test]
    async fn uploads_run_oldest_first_and_each_reports_once() {
        let f = fixture();
        let (up, mut done) = f.spawn();
        up.queue(job(1, f.snapshot(1, "one"))).expect("the uploader runs");
        up.queue(job(2, f.snapshot(2, "two"))).expect("the uploader runs");
        let (a, b) = (next(&mut done).await, next(&mut done).await);
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_ne!(durable(a).files, durable(b).files);
    }

    #[tokio::test]
    async fn during_an_eviction_only_the_newest_queued_commit_is_uploaded() {
        let f = fixture();
        let (up, mut done) = f.spawn();
        up.keep_newest_only();
        for (seq, content) in [(1, "one"), (2, "two"), (3, "three")] {
            up.queue(job(seq, f.snapshot(seq, content))).expect("the uploader runs");
        }
        // The newest first; the ones it superseded are given up once it is durable.
        let d = next(&mut done).await;
        assert_eq!(d.seq, 3);
        durable(d);
        for seq in [1, 2] {
            let d = next(&mut done).await;
            assert_eq!(d.seq, seq);
            assert!(matches!(d.outcome, Outcome::Superseded), "{:?}", d.outcome);
        }
    }

    #[tokio::test]
    async fn during_an_eviction_a_failed_newest_commit_falls_back_to_the_one_it_superseded() {
        let f = fixture();
        let (up, mut done) = f.spawn();
        up.keep_newest_only();
        up.queue(job(1, f.snapshot(1, "one"))).expect("the uploader runs");
        // Held by hard link, then written again in place before its upload: never committed.
        std::fs::write(f.live.path().join("model.bin"), "two").expect("a file in the live directory");
        let linked = capture::snapshot(f.live.path(), &f.staging.path().join("2"), capture::Hold::Link).expect("a snapshot");
        std::fs::write(f.live.path().join("model.bin"), "two, rewritten").expect("a rewrite");
        up.queue(job(2, Source::Snapshot(linked))).expect("the uploader runs");
        let d = next(&mut done).await;
        assert_eq!(d.seq, 2);
        assert!(matches!(d.outcome, Outcome::Failed(_)), "{:?}", d.outcome);
        let d = next(&mut done).await;
        assert_eq!(d.seq, 1);
        durable(d);
    }

    #[tokio::test]
    async fn a_repeat_of_a_durable_snapshot_commits_the_same_files() {
        let f = fixture();
        let (up, mut done) = f.spawn();
        up.queue(job(1, f.snapshot(1, "one"))).expect("the uploader runs");
        up.queue(job(2, Source::Same(1))).expect("the uploader runs");
        let (first, repeat) = (durable(next(&mut done).await), durable(next(&mut done).await));
        assert_eq!((first.seq, repeat.seq), (1, 2));
        assert_eq!(first.files, repeat.files);
    }

    #[tokio::test]
    async fn a_superseding_repeat_takes_over_the_files_it_repeats() {
        let f = fixture();
        let (up, mut done) = f.spawn();
        up.keep_newest_only();
        up.queue(job(1, f.snapshot(1, "one"))).expect("the uploader runs");
        up.queue(job(2, Source::Same(1))).expect("the uploader runs");
        let d = next(&mut done).await;
        assert_eq!(d.seq, 1);
        assert!(matches!(d.outcome, Outcome::Superseded), "{:?}", d.outcome);
        let repeat = durable(next(&mut done).await);
        assert_eq!(repeat.seq, 2);
        assert_eq!(repeat.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["model.bin"]);
    }

    #[tokio::test]
    async fn a_repeat_of_a_checkpoint_that_never_became_durable_fails() {
        let f = fixture();
        let (up, mut done) = f.spawn();
        up.queue(job(4, Source::Same(3))).expect("the uploader runs");
        let d = next(&mut done).await;
        assert_eq!(d.seq, 4);
        match d.outcome {
            Outcome::Failed(e) => assert!(e.contains("did not become durable"), "{e}"),
            other => panic!("expected a failure: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_seq_another_writer_owns_is_a_conflict_not_a_failure() {
        let f = fixture();
        f.store.put_manifest(&f.attempt.run, 1, bytes::Bytes::from_static(b"{}")).await.expect("the other writer's manifest");
        let (up, mut done) = f.spawn();
        up.queue(job(1, f.snapshot(1, "one"))).expect("the uploader runs");
        let d = next(&mut done).await;
        assert!(matches!(d.outcome, Outcome::Conflict(_)), "{:?}", d.outcome);
    }
}
