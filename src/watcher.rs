//! The watcher: a small process that outlives a SIGKILLed baton and kills what the
//! command left running.
//!
//! baton's own protections (the command's parent-death signal, SIGKILL to its group and
//! to every child re-parented to baton, the subreaper) all need baton alive, or reach only
//! the direct child. So `baton run` starts its own program again as `baton __watch TOKEN`
//! before the command (`Watcher` in process.rs). Every process of the command's
//! family carries the token in its environment ([`FAMILY_ENV`], inherited by `setsid` and
//! double-forked helpers too; HTCondor's starter tracks job processes by an inherited
//! environment marker the same way). The watcher blocks reading a pipe whose only write
//! end is baton's: each line names the command's current process group; end of file
//! means baton is gone or going: killed (the kernel closed the pipe), or ending normally
//! (it closed the pipe and waits for the watcher to exit). Then it kills that group and every process of
//! its user whose environment holds the token, a few rounds until none is left (a forking
//! process can race one round), and exits. While baton lives it costs one sleeping process.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::BufRead;

use crate::procfs;
use std::time::Duration;

/// The hidden first argument that makes `baton` the watcher.
pub const ARG: &str = "__watch";

/// The environment variable that marks the command's family: `:`-separated tokens, one per
/// `baton run` it runs under (a `baton run` inside another's command keeps the outer token).
pub const FAMILY_ENV: &str = "BATON_FAMILY";

/// Rounds of killing, 20 ms apart: a family that keeps forking is outrun within a second.
const ROUNDS: usize = 50;

/// The value of [`FAMILY_ENV`] for a command started under `token`, given the value
/// baton itself inherited (if it runs inside another `baton run`).
pub fn family_value(inherited: Option<&str>, token: &str) -> String {
    match inherited.filter(|v| !v.is_empty()) {
        Some(outer) => format!("{outer}:{token}"),
        None => token.to_string(),
    }
}

/// A token no other live `baton run` on this host uses: its pid and the time it started.
pub fn new_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

/// Does a `/proc/PID/environ` block (NUL-separated `K=V`) carry `token`?
pub fn marked(environ: &[u8], token: &str) -> bool {
    let prefix = format!("{FAMILY_ENV}=");
    environ
        .split(|&b| b == 0)
        .any(|kv| kv.strip_prefix(prefix.as_bytes()).is_some_and(|v| v.split(|&b| b == b':').any(|t| t == token.as_bytes())))
}

/// A live process as the watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub pid: i32,
    pub pgid: i32,
    pub marked: bool,
}

/// Whom to kill: members of `group` (when baton named one) and marked processes, never
/// the watcher itself.
pub fn targets(table: &[Seen], group: i32, me: i32) -> Vec<i32> {
    table.iter().filter(|p| p.pid != me && (p.marked || (group > 0 && p.pgid == group))).map(|p| p.pid).collect()
}

/// Live (not zombie) processes of this user, with their group and mark.
fn scan(token: &str) -> Vec<Seen> {
    let uid = nix::unistd::geteuid().as_raw();
    procfs::processes()
        .into_iter()
        // Another user's processes are neither ours to read nor to kill.
        .filter(|p| !p.is_zombie() && procfs::uid(p.pid) == Some(uid))
        .map(|p| Seen { pid: p.pid, pgid: p.pgid, marked: procfs::environ(p.pid).is_some_and(|e| marked(&e, token)) })
        .collect()
}

/// Kill the group and every marked process until none is left; how many were killed.
pub fn sweep(token: &str, group: i32) -> usize {
    let me = std::process::id() as i32;
    let mut killed = std::collections::BTreeSet::new();
    for _ in 0..ROUNDS {
        let pids = targets(&scan(token), group, me);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.len()
}

/// `baton __watch TOKEN`: wait for baton to be gone, then clean up after it. Its stdin
/// is the pipe from baton.
pub fn main(token: &str) -> i32 {
    if token.is_empty() {
        eprintln!("baton: {ARG} needs the family token");
        return 2;
    }
    let mut group = 0;
    // Blocks while baton lives; ends at EOF (baton gone) or on a read error.
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) => group = l.trim().parse().unwrap_or(0),
            Err(_) => break,
        }
    }
    let killed = sweep(token, group);
    if killed > 0 {
        eprintln!("baton: watcher: killed {killed} process(es) the command left running after baton run ended");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_one_token_of_the_family_variable() {
        let env = b"PATH=/bin\0BATON_FAMILY=outer:42-abc\0HOME=/h\0";
        assert!(marked(env, "42-abc"));
        assert!(marked(env, "outer"));
        assert!(!marked(env, "42-ab"), "a prefix is another token");
        assert!(!marked(b"PATH=/bin\0XBATON_FAMILY=42-abc\0", "42-abc"));
        assert!(!marked(b"PATH=/bin\0NOTE=BATON_FAMILY=42-abc\0", "42-abc"));
        assert!(!marked(b"", "42-abc"), "a zombie's environment reads empty");
    }

    #[test]
    fn nested_runs_keep_the_outer_token() {
        assert_eq!(family_value(None, "t"), "t");
        assert_eq!(family_value(Some(""), "t"), "t");
        assert_eq!(family_value(Some("o"), "t"), "o:t");
        assert!(marked(format!("BATON_FAMILY={}\0", family_value(Some("o"), "t")).as_bytes(), "o"));
    }

    #[test]
    fn targets_are_the_group_and_the_marked_never_the_watcher() {
        let table = [
            Seen { pid: 10, pgid: 10, marked: true },  // the trainer
            Seen { pid: 11, pgid: 10, marked: false }, // cleared its environment, stayed in the group
            Seen { pid: 12, pgid: 12, marked: true },  // setsid / double-forked helper
            Seen { pid: 13, pgid: 13, marked: false }, // someone else's process
            Seen { pid: 5, pgid: 5, marked: true },    // the watcher (inherited an outer token)
        ];
        assert_eq!(targets(&table, 10, 5), [10, 11, 12]);
        assert_eq!(targets(&table, 0, 5), [10, 12], "no group named: only the marked");
    }

    #[test]
    fn tokens_differ_between_calls() {
        let a = new_token();
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(a, new_token());
        assert!(!a.contains(':'));
    }
}
