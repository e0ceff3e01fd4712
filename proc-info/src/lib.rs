//! A process as `/proc` shows it, read in one place: its [`Stat`] fields (state, parent,
//! process group, start time), its [`Identity`] (pid and start time), lines of its `status`
//! file and its children.
//!
//! A pid alone does not name a process for long: once it exits, the kernel hands the number to
//! the next one. The pid and the start time together do, for as long as the host runs. Whatever
//! records "who made this" so that a later process can tell whether the maker is still there
//! (a cgroup, a network slot's claim) records an [`Identity`].
//!
//! The parsing is plain text work, tested without any particular process table.

use std::fmt;
use std::io;
use std::str::FromStr;

/// The fields of `/proc/<pid>/stat` this workspace reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// The command name (field 2), at most 15 bytes, without its parentheses.
    pub command: String,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// When the process started, in clock ticks after boot (field 22).
    pub start_ticks: u64,
}

impl Stat {
    /// Parses a `/proc/<pid>/stat` text. The command name may hold spaces and parentheses, so
    /// the fixed fields are read after its last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let (head, rest) = text.rsplit_once(')')?;
        let (pid, command) = head.split_once(" (")?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        // Fields 6 to 21 lie between the process group and the start time.
        let start_ticks = fields.nth(16)?.parse().ok()?;
        Some(Stat {
            pid: pid.trim().parse().ok()?,
            command: command.to_owned(),
            state,
            ppid,
            pgrp,
            start_ticks,
        })
    }

    /// Process `pid`'s fields now; `None` once it is gone (or its entry cannot be read).
    pub fn read(pid: u32) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// The process has exited and waits for its parent to reap it.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    pub fn leads_its_group(&self) -> bool {
        self.pid == self.pgrp
    }

    pub fn identity(&self) -> Identity {
        Identity {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }
}

/// Every process this one can see, as it was when its entry was read.
pub fn all() -> impl Iterator<Item = Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter_map(Stat::read)
}

/// Whether process `pid` exists and has not exited (a zombie does not count).
pub fn is_alive(pid: u32) -> bool {
    Stat::read(pid).is_some_and(|stat| !stat.is_zombie())
}

/// One process for good: its pid and when it started. Written `<pid>-<start ticks>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub pid: u32,
    pub start_ticks: u64,
}

impl Identity {
    /// This process's identity.
    pub fn of_this_process() -> io::Result<Identity> {
        Identity::of(std::process::id()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/stat has no start time",
            )
        })
    }

    /// The identity of the process that has pid `pid` now, if there is one.
    pub fn of(pid: u32) -> Option<Identity> {
        Stat::read(pid).map(|stat| stat.identity())
    }

    /// Whether this very process is still there (a zombie counts: its pid is not free yet).
    /// A process whose entry exists but cannot be read counts too: what cannot be told dead is
    /// never cleaned up after.
    pub fn is_running(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(text) => Stat::parse(&text).map(|stat| stat.identity()) == Some(*self),
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pid, self.start_ticks)
    }
}

impl FromStr for Identity {
    type Err = ();

    /// `<pid>-<start ticks>`, as [`Identity`] is displayed.
    fn from_str(text: &str) -> Result<Identity, ()> {
        let (pid, start) = text.split_once('-').ok_or(())?;
        Ok(Identity {
            pid: pid.parse().map_err(|_| ())?,
            start_ticks: start.parse().map_err(|_| ())?,
        })
    }
}

/// The words after `key:` in a `/proc/<pid>/status` text (`VmHWM:  1234 kB` gives
/// `["1234", "kB"]`); `None` without such a line.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<Vec<&'a str>> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        Some(value.split_whitespace().collect())
    })
}

/// A `status` field counted in kB (`VmHWM`, `VmRSS`, `RssAnon`, ...).
pub fn status_kb(status: &str, key: &str) -> Option<u64> {
    match status_field(status, key)?.as_slice() {
        [value, "kB"] | [value] => value.parse().ok(),
        _ => None,
    }
}

/// Field `key` of process `pid`'s status in kB; `None` once it is gone.
pub fn read_status_kb(pid: u32, key: &str) -> Option<u64> {
    status_kb(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

/// The children of every thread of `pid` (`/proc/<pid>/task/<tid>/children`; a kernel without
/// `CONFIG_PROC_CHILDREN` shows none).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_survive_odd_command_names() {
        let text = "4321 (a (b) c) S 1 4321 4321 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615";
        let stat = Stat::parse(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                pid: 4321,
                command: "a (b) c".into(),
                state: 'S',
                ppid: 1,
                pgrp: 4321,
                start_ticks: 987_654,
            }
        );
        assert!(stat.leads_its_group() && !stat.is_zombie());
        assert_eq!(Stat::parse("42 (short) S 1"), None);
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn this_process_is_running_and_another_start_is_not() {
        let me = Identity::of_this_process().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_running());
        assert!(is_alive(me.pid));
        assert_eq!(me.to_string().parse::<Identity>(), Ok(me));
        // Our pid with another start time: a process that had our pid before us.
        let earlier = Identity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!earlier.is_running());
        let gone = Identity {
            pid: u32::MAX,
            start_ticks: 1,
        };
        assert!(!gone.is_running() && !is_alive(gone.pid));
        for bad in ["", "1", "1-", "-1", "1-x", "x-1", "1 2"] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
        assert!(all().any(|stat| stat.identity() == me));
    }

    #[test]
    fn status_fields_are_read_by_key() {
        let status = "Name:\tsh\nVmHWM:\t    1234 kB\nVmRSS:\t  99 kB\nThreads:\t3\n";
        assert_eq!(status_kb(status, "VmHWM"), Some(1234));
        assert_eq!(status_kb(status, "VmRSS"), Some(99));
        assert_eq!(status_kb(status, "Threads"), Some(3));
        assert_eq!(status_kb(status, "Vm"), None);
        assert_eq!(status_field(status, "Name"), Some(vec!["sh"]));
        assert!(read_status_kb(std::process::id(), "VmRSS").is_some_and(|kb| kb > 0));
    }

    #[test]
    fn a_child_is_listed_under_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let listed = children(std::process::id()).contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        // Without CONFIG_PROC_CHILDREN there is no list to be in.
        let tid = std::process::id();
        let shown = std::path::Path::new(&format!("/proc/{tid}/task/{tid}/children")).exists();
        assert!(listed || !shown);
    }
}
