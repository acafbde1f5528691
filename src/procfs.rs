//! What Linux's /proc says about processes: one reader for the process family, the
//! signal forwarding and the watcher, so the `stat` format is parsed in one place.

/// One line of `/proc/PID/stat`, the fields baton needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// R, S, D, Z (zombie: dead, waiting to be reaped), ...
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
}

impl Stat {
    /// Dead already; it only waits for its parent to reap it.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Parse one `stat` line. The command name is in parentheses and may contain spaces
    /// and parentheses of its own, so the fields are read after the last `)`.
    pub fn parse(pid: i32, line: &str) -> Option<Stat> {
        let mut fields = line[line.rfind(')')? + 1..].split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgid = fields.next()?.parse().ok()?;
        Some(Stat { pid, state, ppid, pgid })
    }
}

/// Every process visible right now (processes that end while being read are skipped).
pub fn processes() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            Stat::parse(pid, &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
        })
        .collect()
}

/// (device, inode) of the program `pid` runs, when readable.
pub fn exe_id(pid: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| (m.dev(), m.ino()))
}

/// The owner of process `pid`.
pub fn uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// The environment `pid` started with (NUL-separated `K=V`), when readable.
pub fn environ(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_spaces_and_parentheses_do_not_shift_the_fields() {
        let s = Stat::parse(42, "42 (my (weird) name) S 7 42 42 0 -1").unwrap();
        assert_eq!(s, Stat { pid: 42, state: 'S', ppid: 7, pgid: 42 });
        assert!(Stat::parse(1, "1 (init").is_none());
        assert!(Stat::parse(9, "9 (z) Z 1 9").unwrap().is_zombie());
    }

    #[test]
    fn this_process_is_listed_with_its_group() {
        let me = std::process::id() as i32;
        let s = processes().into_iter().find(|p| p.pid == me).expect("this process is in /proc");
        assert_eq!(s.pgid, nix::unistd::getpgrp().as_raw());
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
    }
}
