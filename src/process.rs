//! The command's process family, handled like an init process (tini, dumb-init): its
//! own process group, a parent-death signal so it never outlives baton, reaping of
//! every child (baton is a subreaper, so double-forked grandchildren come back to it),
//! and exit statuses reported the way a shell does. A watcher process (see
//! [`crate::watcher`]) outlives baton to kill the family when baton itself is SIGKILLed.

use crate::procfs;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicI32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The status an init process reports: the code, or 128 + the signal number.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => {
                let name = Signal::try_from(*s).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "signal {s} ({name})")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found (check the name after `--` and PATH)")]
    NotFound(String),
    #[error("{0}: permission denied (is it executable? chmod +x)")]
    NotExecutable(String),
    #[error("{0}: cannot start: {1}")]
    Other(String, std::io::Error),
}

/// glibc gives every thread that allocates its own arena and keeps freed memory in it;
/// with a pool of hashing/compression threads that made peak RSS grow with the
/// checkpoint size; one arena kept it flat at the same speed (docs/benchmarks.md, the
/// MALLOC_ARENA_MAX=1 rows).
///
/// Chunk buffers are 1-8 MiB (store format 2). Left to itself, glibc serves each from a
/// fresh mmap or trims the heap after it is freed, so every chunk's pages are faulted in
/// anew: a 2 GiB restore took 110,000 page faults and a third more system time than with
/// these two settings (15,000 faults; docs/performance.md). A fixed mmap threshold above
/// the largest chunk and a trim threshold of a few chunks keep the buffers in the heap for
/// the next chunk; the peak stays that of the bytes in flight.
///
/// Call first thing in `main`, before any thread exists.
pub fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Make orphaned descendants re-parent to baton so they can be reaped and killed.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Start the command in a new process group. Call from the thread that lives as long
/// as baton (the parent-death signal fires when the *thread* that forked exits).
pub fn spawn(argv: &[OsString], env: &[(String, String)], unset: &[&str]) -> Result<Pid, SpawnError> {
    let name = argv[0].to_string_lossy().into_owned();
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).process_group(0);
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // baton died between fork and prctl: do not run orphaned.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SpawnError::NotFound(name)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(SpawnError::NotExecutable(name)),
        Err(e) => Err(SpawnError::Other(name, e)),
    }
}

/// The watcher's pid once started. It is baton's helper, not part of the command's
/// family: [`kill_everything`] spares it, since its whole purpose is to outlive baton.
static WATCHER: AtomicI32 = AtomicI32::new(0);

/// baton's end of the pipe to the watcher, and the watcher's pid.
pub struct Watcher {
    /// Closed when the watcher is dropped, or by the kernel when baton is killed; either
    /// way the watcher's read ends (EOF). Close-on-exec, so no child of baton holds it.
    tell: Option<std::fs::File>,
    pub pid: Pid,
}

/// How long a normal exit waits for the watcher's last sweep: one pass over /proc when
/// baton already killed the family; never long enough to endanger the exit deadline.
const WATCHER_EXIT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Drop for Watcher {
    /// baton is ending normally: end the watcher's read, let it sweep (it normally finds
    /// nothing), and reap it, so that not even the watcher outlives `baton run`.
    fn drop(&mut self) {
        self.tell.take();
        let start = std::time::Instant::now();
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if start.elapsed() < WATCHER_EXIT_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                // Gone, already reaped, or still sweeping a large family: it finishes on its own.
                _ => break,
            }
        }
        WATCHER.store(0, Ordering::SeqCst);
    }
}

impl Watcher {
    /// Start baton's own program as the watcher (`baton __watch TOKEN`): exec'd, not a bare
    /// fork of this threaded process; in a process group of its own, so signals forwarded
    /// to the command's group or sent to baton's never reach it; with the eviction signals
    /// ignored from before its exec (an ignored disposition survives exec).
    pub fn start(token: &str) -> std::io::Result<Watcher> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0("baton")
            .arg(crate::watcher::ARG)
            .arg(token)
            .stdin(std::process::Stdio::from(read))
            .stdout(std::process::Stdio::null())
            .process_group(0);
        // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                for sig in crate::signals::EVICTION {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        WATCHER.store(pid.as_raw(), Ordering::SeqCst);
        Ok(Watcher { tell: Some(std::fs::File::from(write)), pid })
    }

    /// Tell the watcher the command's current process group (0: none), to kill if baton dies.
    pub fn watch_group(&self, pgid: Option<Pid>) {
        let line = format!("{}\n", pgid.map(|p| p.as_raw()).unwrap_or(0));
        // A watcher that is gone (EPIPE; SIGPIPE is ignored) leaves today's guarantees.
        if let Some(mut tell) = self.tell.as_ref() {
            let _ = tell.write_all(line.as_bytes());
        }
    }
}

/// Signal the whole group; a group that is already gone is fine.
pub fn signal_group(pgid: Pid, sig: Signal) {
    let _ = killpg(pgid, sig);
}

/// A process as `/proc` shows it: enough to decide whom a forwarded signal reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: i32,
    pub pgid: i32,
    /// (device, inode) of the program it runs, when readable.
    pub exe: Option<(u64, u64)>,
}

/// Who gets a forwarded eviction signal: every member of group `pgid` except processes
/// running baton's own program (`own_exe`). Those are `baton commit`s the trainer started:
/// they ignore eviction signals from the first line of `main`, but a signal landing
/// between their `exec` and that line would kill them, and the trainer would see its
/// commit fail at the very moment it saves.
pub fn forward_targets(table: &[ProcEntry], pgid: i32, own_exe: Option<(u64, u64)>) -> Vec<i32> {
    table.iter().filter(|p| p.pgid == pgid && (own_exe.is_none() || p.exe != own_exe)).map(|p| p.pid).collect()
}

/// The members of process group `pgid`, with their programs, from /proc.
fn group_members(pgid: i32) -> Vec<ProcEntry> {
    procfs::processes()
        .into_iter()
        .filter(|p| p.pgid == pgid)
        .map(|p| ProcEntry { pid: p.pid, pgid: p.pgid, exe: procfs::exe_id(&p.pid.to_string()) })
        .collect()
}

/// Forward an eviction signal to the command's process group, sparing baton's own
/// `baton commit` processes (see [`forward_targets`]). Falls back to the whole group
/// when /proc cannot be read.
pub fn forward_to_group(pgid: Pid, sig: Signal) {
    let own = procfs::exe_id("self");
    let table = group_members(pgid.as_raw());
    if table.is_empty() || own.is_none() {
        signal_group(pgid, sig);
        return;
    }
    for pid in forward_targets(&table, pgid.as_raw(), own) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// Reap every child that has exited; return the status of `main` if it was among them.
pub fn reap(main: Option<Pid>) -> Option<Exit> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if Some(pid) == main {
                    found = Some(Exit::Code(code));
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                if Some(pid) == main {
                    found = Some(Exit::Signal(sig as i32));
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    found
}

/// (pid, parent pid) of every process right now, from /proc.
fn parent_map() -> Vec<(i32, i32)> {
    procfs::processes().into_iter().map(|p| (p.pid, p.ppid)).collect()
}

/// Every descendant of `root` right now (children, grandchildren ...).
pub fn descendants(root: i32) -> Vec<Pid> {
    let map = parent_map();
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &map {
            if ppid == p {
                out.push(Pid::from_raw(pid));
                frontier.push(pid);
            }
        }
    }
    out
}

/// Children of this process right now (including re-parented orphans), except the watcher.
pub fn children() -> Vec<Pid> {
    let me = std::process::id() as i32;
    let watcher = WATCHER.load(Ordering::SeqCst);
    parent_map()
        .into_iter()
        .filter(|&(pid, ppid)| ppid == me && (watcher == 0 || pid != watcher))
        .map(|(pid, _)| Pid::from_raw(pid))
        .collect()
}

/// SIGKILL the group (led by `main`) and every remaining child but the watcher, then
/// reap them. Used
/// on every way out of `baton run`, so nothing the command started outlives baton.
/// Returns `main`'s status if it was reaped here.
pub fn kill_everything(main: Option<Pid>) -> Option<Exit> {
    let mut found = None;
    if let Some(g) = main {
        signal_group(g, Signal::SIGKILL);
    }
    for _ in 0..50 {
        let kids = children();
        if kids.is_empty() {
            break;
        }
        for pid in kids {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        found = found.or(reap(main));
    }
    found.or(reap(main))
}

/// Parse `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{s}: not a signal number"));
    }
    let name = if t.starts_with("SIG") { t } else { format!("SIG{t}") };
    name.parse::<Signal>().map_err(|_| format!("{s}: unknown signal name (try TERM, INT, USR1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_reported_like_a_shell() {
        assert_eq!(Exit::Code(3).status(), 3);
        assert_eq!(Exit::Signal(9).status(), 137);
    }

    #[test]
    fn forwarded_signals_spare_batons_own_processes_only() {
        let baton = Some((1, 100));
        let python = Some((1, 200));
        let table = [
            ProcEntry { pid: 10, pgid: 10, exe: python }, // the trainer
            ProcEntry { pid: 11, pgid: 10, exe: python }, // a data-loader worker
            ProcEntry { pid: 12, pgid: 10, exe: baton },  // `baton commit` just started
            ProcEntry { pid: 13, pgid: 10, exe: None },   // unreadable: signalled
            ProcEntry { pid: 20, pgid: 20, exe: python }, // another group
            ProcEntry { pid: 5, pgid: 5, exe: baton },    // the supervisor itself
        ];
        assert_eq!(forward_targets(&table, 10, baton), [10, 11, 13]);
        assert_eq!(forward_targets(&table, 10, None), [10, 11, 12, 13]);
    }

    #[test]
    fn the_group_table_sees_this_process_and_its_program() {
        let me = std::process::id() as i32;
        let table = group_members(nix::unistd::getpgrp().as_raw());
        let entry = table.iter().find(|p| p.pid == me).expect("this process is in /proc");
        assert_eq!(entry.pgid, nix::unistd::getpgrp().as_raw());
        assert_eq!(entry.exe, procfs::exe_id("self"));
    }

    #[test]
    fn signal_names_parse() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigusr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_signal("NOPE").is_err());
    }
}
