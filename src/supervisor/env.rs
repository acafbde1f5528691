//! The trainer's environment: the BATON_* variables that tell it where to save, how to
//! commit, and which checkpoint it resumes from.

use std::path::Path;

use crate::attempt::{Attempt, NodeStart};
use crate::commit;
use crate::manifest::Manifest;

/// The checkpoint the command was last started from (a restore, or an in-place restart
/// after the checkpoint exit code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedFrom {
    pub seq: u64,
    pub epoch: Option<u64>,
    pub step: Option<u64>,
    /// The device the checkpoint was written on.
    pub device: String,
}

impl StartedFrom {
    pub fn restored(m: &Manifest) -> Self {
        StartedFrom { seq: m.seq, epoch: m.epoch, step: m.step, device: m.device.clone() }
    }
}

/// Variables to set, and variables to remove so that stale ones inherited from baton's
/// own environment cannot mislead the trainer.
#[derive(Debug, PartialEq, Eq)]
pub struct Env {
    pub set: Vec<(String, String)>,
    pub unset: Vec<&'static str>,
}

pub fn for_trainer(attempt: &Attempt, dir: &Path, socket: &Path, from: Option<&StartedFrom>) -> Env {
    let mut set = vec![
        ("BATON_CHECKPOINT_DIR".into(), dir.display().to_string()),
        ("BATON_RUN_ID".into(), attempt.run.to_string()),
        ("BATON_ATTEMPT".into(), attempt.number.to_string()),
        ("BATON_DEVICE".into(), attempt.device.clone()),
        (commit::ENV_SOCKET.into(), socket.display().to_string()),
    ];
    if let Ok(exe) = std::env::current_exe() {
        set.push(("BATON_BIN".into(), exe.display().to_string()));
    }
    let mut unset = vec![];
    match from {
        Some(from) => {
            set.push(("BATON_RESTORED_SEQ".into(), from.seq.to_string()));
            set.push(("BATON_PREV_DEVICE".into(), from.device.clone()));
            match from.epoch {
                Some(e) => set.push(("BATON_RESTORED_EPOCH".into(), e.to_string())),
                None => unset.push("BATON_RESTORED_EPOCH"),
            }
            match from.step {
                Some(s) => set.push(("BATON_RESTORED_STEP".into(), s.to_string())),
                None => unset.push("BATON_RESTORED_STEP"),
            }
        }
        None => unset.extend(["BATON_RESTORED_SEQ", "BATON_RESTORED_EPOCH", "BATON_RESTORED_STEP", "BATON_PREV_DEVICE"]),
    }
    Env { set, unset }
}

/// What torchrun and the trainer need to know of the other nodes: torchrun's own names
/// (MASTER_ADDR, MASTER_PORT, NODE_RANK, NNODES, for `--master-addr "$MASTER_ADDR"` and
/// the like) and baton's. A single-node attempt that restored a checkpoint of several
/// nodes learns only that size.
pub fn for_node(n: &NodeStart) -> Vec<(String, String)> {
    let mut set = Vec::new();
    if let (Some(addr), Some(port), Some(generation)) = (&n.master_addr, n.master_port, n.generation) {
        set.extend([
            ("MASTER_ADDR".to_string(), addr.clone()),
            ("MASTER_PORT".to_string(), port.to_string()),
            ("NODE_RANK".to_string(), n.node.to_string()),
            ("NNODES".to_string(), n.nodes.to_string()),
            ("BATON_NODE_RANK".to_string(), n.node.to_string()),
            ("BATON_NODES".to_string(), n.nodes.to_string()),
            ("BATON_RENDEZVOUS_GENERATION".to_string(), generation.to_string()),
        ]);
    }
    if let Some(r) = n.restored_nodes {
        set.push(("BATON_RESTORED_NODES".to_string(), r.to_string()));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::RunId;
    use std::path::PathBuf;

    fn attempt() -> Attempt {
        Attempt {
            run: RunId::parse("resnet-1").expect("a valid run id"),
            number: 3,
            host: "node7".into(),
            device: "cuda:H100".into(),
            device_info: None,
            htcondor: Default::default(),
            writer: "node7:1:1".into(),
            part: None,
        }
    }

    fn get<'a>(env: &'a Env, name: &str) -> Option<&'a str> {
        env.set.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn vars(from: Option<&StartedFrom>) -> Env {
        for_trainer(&attempt(), &PathBuf::from("/scratch/ckpt"), &PathBuf::from("/scratch/.baton-ckpt/commit.sock"), from)
    }

    #[test]
    fn the_trainer_learns_where_it_runs() {
        let env = vars(None);
        assert_eq!(get(&env, "BATON_CHECKPOINT_DIR"), Some("/scratch/ckpt"));
        assert_eq!(get(&env, "BATON_RUN_ID"), Some("resnet-1"));
        assert_eq!(get(&env, "BATON_ATTEMPT"), Some("3"));
        assert_eq!(get(&env, "BATON_DEVICE"), Some("cuda:H100"));
        assert_eq!(get(&env, "BATON_SOCKET"), Some("/scratch/.baton-ckpt/commit.sock"));
        assert!(get(&env, "BATON_BIN").is_some());
    }

    #[test]
    fn a_fresh_start_removes_every_restored_variable() {
        let env = vars(None);
        assert_eq!(env.unset, vec!["BATON_RESTORED_SEQ", "BATON_RESTORED_EPOCH", "BATON_RESTORED_STEP", "BATON_PREV_DEVICE"]);
        for name in &env.unset {
            assert_eq!(get(&env, name), None);
        }
    }

    #[test]
    fn a_restore_tells_seq_epoch_step_and_previous_device() {
        let from = StartedFrom { seq: 12, epoch: Some(4), step: Some(4000), device: "cuda:A100".into() };
        let env = vars(Some(&from));
        assert_eq!(get(&env, "BATON_RESTORED_SEQ"), Some("12"));
        assert_eq!(get(&env, "BATON_RESTORED_EPOCH"), Some("4"));
        assert_eq!(get(&env, "BATON_RESTORED_STEP"), Some("4000"));
        assert_eq!(get(&env, "BATON_PREV_DEVICE"), Some("cuda:A100"));
        assert!(env.unset.is_empty());
    }

    #[test]
    fn an_unknown_epoch_or_step_is_removed_not_left_stale() {
        let from = StartedFrom { seq: 5, epoch: None, step: None, device: "cpu".into() };
        let env = vars(Some(&from));
        assert_eq!(get(&env, "BATON_RESTORED_SEQ"), Some("5"));
        assert_eq!(env.unset, vec!["BATON_RESTORED_EPOCH", "BATON_RESTORED_STEP"]);
    }
}
