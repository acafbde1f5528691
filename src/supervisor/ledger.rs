//! The commit ledger: which seqs this attempt committed, which are still uploading,
//! which became durable, and what the newest snapshot looked like.

use std::collections::BTreeSet;

use crate::capture::FileStamp;
use crate::commit::Request;

#[derive(Debug)]
pub struct Ledger {
    next_seq: u64,
    committed: Vec<u64>,
    outstanding: BTreeSet<u64>,
    durable: Vec<u64>,
    final_seq: Option<u64>,
    /// The newest snapshot's seq and what its live files looked like when copied.
    last_stamps: Option<(u64, Vec<FileStamp>)>,
    /// What the trainer said of its newest commit (epoch, step, meta).
    last_labels: Request,
}

impl Ledger {
    /// `next_seq` is the first seq no manifest in the store holds yet.
    pub fn new(next_seq: u64) -> Self {
        Ledger {
            next_seq,
            committed: vec![],
            outstanding: BTreeSet::new(),
            durable: vec![],
            final_seq: None,
            last_stamps: None,
            last_labels: Request::default(),
        }
    }

    /// The seq the next commit takes.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Take the next seq for a commit now queued for upload. `stamps` are its snapshot's
    /// stamps; none when it repeats an earlier commit's files, whose stamps stay the ones
    /// to compare with.
    pub fn commit(&mut self, stamps: Option<Vec<FileStamp>>, labels: &Request) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(stamps) = stamps {
            self.last_stamps = Some((seq, stamps));
        }
        self.last_labels = labels.clone();
        self.committed.push(seq);
        self.outstanding.insert(seq);
        seq
    }

    /// The command's final checkpoint (it exited 0), which must become durable.
    pub fn set_final(&mut self, seq: u64) {
        self.final_seq = Some(seq);
    }

    /// The upload of `seq` wrote its manifest.
    pub fn made_durable(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
        self.durable.push(seq);
    }

    /// The upload of `seq` ended without a manifest (failed, or dropped for a newer one).
    pub fn gave_up(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
    }

    /// The newest snapshot's seq and stamps, while a new commit may still repeat it: only
    /// a commit that is durable or on its way can stand for the same files.
    pub fn repeatable(&self) -> Option<(u64, &[FileStamp])> {
        let (seq, stamps) = self.last_stamps.as_ref()?;
        (self.durable.contains(seq) || self.outstanding.contains(seq)).then_some((*seq, stamps.as_slice()))
    }

    /// The labels for a commit of unchanged files that says nothing of itself (the
    /// final capture at exit 0, an exit with the checkpoint code): those of the newest
    /// commit, which holds the same bytes, so a restart of a finished run still learns
    /// its epoch and step.
    pub fn labels_for_repeat(&self, own: Request) -> Request {
        let says_nothing = own.epoch.is_none() && own.step.is_none() && own.meta.is_empty();
        if says_nothing {
            self.last_labels.clone()
        } else {
            own
        }
    }

    /// The final checkpoint, if there is one and it did not become durable.
    pub fn final_lost(&self) -> Option<u64> {
        self.final_seq.filter(|seq| !self.durable.contains(seq))
    }

    pub fn outstanding(&self) -> &BTreeSet<u64> {
        &self.outstanding
    }

    pub fn committed(&self) -> &[u64] {
        &self.committed
    }

    pub fn durable(&self) -> &[u64] {
        &self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamps of a real directory: `FileStamp`s come only from the filesystem.
    fn stamps_of(files: &[&str]) -> Vec<FileStamp> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for f in files {
            std::fs::write(dir.path().join(f), f.as_bytes()).expect("a file in the temporary directory");
        }
        crate::capture::stamps(dir.path()).expect("stamps of the temporary directory")
    }

    #[test]
    fn seqs_count_up_from_the_first_free_one() {
        let mut l = Ledger::new(7);
        assert_eq!(l.next_seq(), 7);
        assert_eq!(l.commit(None, &Request::default()), 7);
        assert_eq!(l.commit(Some(vec![]), &Request::default()), 8);
        assert_eq!(l.next_seq(), 9);
        assert_eq!(l.committed(), &[7, 8]);
        assert_eq!(l.outstanding().iter().copied().collect::<Vec<_>>(), vec![7, 8]);
        assert!(l.durable().is_empty());
    }

    #[test]
    fn uploads_settle_as_durable_or_not() {
        let mut l = Ledger::new(1);
        let (a, b, c) = (l.commit(None, &Request::default()), l.commit(None, &Request::default()), l.commit(None, &Request::default()));
        l.made_durable(b);
        l.gave_up(a);
        assert_eq!(l.outstanding().iter().copied().collect::<Vec<_>>(), vec![c]);
        l.made_durable(c);
        assert!(l.outstanding().is_empty());
        assert_eq!(l.durable(), &[b, c]);
        assert_eq!(l.committed(), &[a, b, c]);
    }

    #[test]
    fn the_newest_snapshot_can_be_repeated_while_uploading_or_durable() {
        let stamps = stamps_of(&["model.pt", "optim.pt"]);
        let mut l = Ledger::new(1);
        assert_eq!(l.repeatable(), None);
        let seq = l.commit(Some(stamps.clone()), &Request::default());
        assert_eq!(l.repeatable(), Some((seq, stamps.as_slice())));
        l.made_durable(seq);
        assert_eq!(l.repeatable(), Some((seq, stamps.as_slice())));
    }

    #[test]
    fn a_snapshot_that_failed_to_upload_cannot_be_repeated() {
        let mut l = Ledger::new(1);
        let seq = l.commit(Some(stamps_of(&["model.pt"])), &Request::default());
        l.gave_up(seq);
        assert_eq!(l.repeatable(), None);
    }

    #[test]
    fn a_repeat_keeps_the_snapshot_it_repeats_as_the_one_to_compare_with() {
        let stamps = stamps_of(&["model.pt"]);
        let mut l = Ledger::new(1);
        let first = l.commit(Some(stamps.clone()), &Request::default());
        let repeat = l.commit(None, &Request::default());
        assert_ne!(first, repeat);
        assert_eq!(l.repeatable(), Some((first, stamps.as_slice())));
        // Whatever becomes of the repeat, the snapshot's own upload decides.
        l.gave_up(repeat);
        assert_eq!(l.repeatable(), Some((first, stamps.as_slice())));
        l.gave_up(first);
        assert_eq!(l.repeatable(), None);
    }

    #[test]
    fn a_newer_snapshot_replaces_the_stamps() {
        let (old, new) = (stamps_of(&["a"]), stamps_of(&["a", "b"]));
        let mut l = Ledger::new(1);
        l.commit(Some(old), &Request::default());
        let seq = l.commit(Some(new.clone()), &Request::default());
        assert_eq!(l.repeatable(), Some((seq, new.as_slice())));
    }

    #[test]
    fn the_final_checkpoint_is_lost_until_durable() {
        let mut l = Ledger::new(1);
        assert_eq!(l.final_lost(), None);
        let seq = l.commit(None, &Request::default());
        l.set_final(seq);
        assert_eq!(l.final_lost(), Some(seq));
        l.made_durable(seq);
        assert_eq!(l.final_lost(), None);
    }

    #[test]
    fn a_final_checkpoint_that_failed_stays_lost() {
        let mut l = Ledger::new(3);
        let earlier = l.commit(None, &Request::default());
        l.made_durable(earlier);
        let seq = l.commit(None, &Request::default());
        l.set_final(seq);
        l.gave_up(seq);
        assert_eq!(l.final_lost(), Some(seq));
    }

    #[test]
    fn a_commit_that_says_nothing_takes_the_labels_of_the_newest_commit() {
        let mut l = Ledger::new(1);
        let epoch6 = Request { epoch: Some(6), step: Some(0), meta: [("loss".to_string(), "0.1".to_string())].into() };
        l.commit(Some(stamps_of(&["model.pt"])), &Request { epoch: Some(5), ..Default::default() });
        l.commit(None, &epoch6);
        assert_eq!(l.labels_for_repeat(Request::default()).epoch, Some(6));
        assert_eq!(l.labels_for_repeat(Request::default()).meta, epoch6.meta);
        // A commit that names itself keeps what it said.
        assert_eq!(l.labels_for_repeat(Request { step: Some(9), ..Default::default() }).epoch, None);
    }
}
