//! Who made a host-wide object: a process, named by pid and start time, written in a claim
//! file beside the objects it guards. A service that finds a claim whose owner is not running
//! knows the objects are left over and removes them, whatever its own slot or pid.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A process, by pid and start time (so a reused pid is not mistaken for the owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start_ticks: u64,
}

impl Owner {
    /// This process; `None` when /proc cannot say when it started.
    pub fn of_this_process() -> Option<Owner> {
        let pid = std::process::id();
        start_ticks(pid).map(|start_ticks| Owner { pid, start_ticks })
    }

    pub fn parse(claim: &str) -> Option<Owner> {
        let (pid, start) = claim.trim().split_once(' ')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start_ticks: start.parse().ok()?,
        })
    }

    /// The owner named in the claim file `path`, if it is one.
    pub fn of_claim(path: &Path) -> Option<Owner> {
        Owner::parse(&std::fs::read_to_string(path).ok()?)
    }

    pub fn is_running(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {}", self.pid, self.start_ticks)
    }
}

/// When process `pid` started (field 22 of /proc/PID/stat, in clock ticks since boot).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything, spaces included.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Claims the first free name of `candidates` in `dir` for `owner`: `dir/<name>`, created
/// exclusively. The claim appears whole, owner written, or not at all (it is written under a
/// private name and linked to its own, which fails if the name is taken), so a sweep never
/// sees an empty claim. `None` when every candidate is taken.
pub fn claim(
    dir: &Path,
    candidates: impl IntoIterator<Item = u32>,
    owner: Owner,
) -> io::Result<Option<(u32, PathBuf)>> {
    static CLAIMS: AtomicU64 = AtomicU64::new(0);
    let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
    let draft = dir.join(format!(".draft-{}-{n}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&draft)
        .and_then(|mut file| file.write_all(owner.to_string().as_bytes()))?;
    let mut claimed = Ok(None);
    for candidate in candidates {
        let path = dir.join(candidate.to_string());
        match std::fs::hard_link(&draft, &path) {
            Ok(()) => {
                claimed = Ok(Some((candidate, path)));
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                claimed = Err(e);
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&draft);
    claimed
}

/// Whether `name` is a claim's draft (`.draft-<pid>-<n>`) whose writer has exited.
pub fn draft_owner_gone(name: &str) -> bool {
    let pid = name
        .strip_prefix(".draft-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_recognised_by_pid_and_start_time() {
        let me = Owner::of_this_process().unwrap();
        assert!(me.is_running());
        assert_eq!(Owner::parse(&me.to_string()), Some(me));
        let restarted = Owner {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!restarted.is_running());
        assert_eq!(Owner::parse("garbage"), None);
    }

    #[test]
    fn claims_are_exclusive_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let me = Owner::of_this_process().unwrap();
        let (first, path) = claim(dir.path(), 0..3, me).unwrap().unwrap();
        let (second, _) = claim(dir.path(), 0..3, me).unwrap().unwrap();
        assert_eq!((first, second), (0, 1));
        assert_eq!(Owner::of_claim(&path), Some(me));
        claim(dir.path(), 2..3, me).unwrap().unwrap();
        assert_eq!(claim(dir.path(), 0..3, me).unwrap(), None, "all taken");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 3, "no draft is left");
    }
}
