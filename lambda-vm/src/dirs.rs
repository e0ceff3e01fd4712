//! The service's directories on the host.
//!
//! - The **state directory** (`--state-dir`) is kept across runs: SnapStart snapshots
//!   (`snapshots/NAME/<key>`) and each function's store of accepted asynchronous events
//!   (`events/NAME/`). Its default is `/var/lib/lambda-vm` for root, else
//!   `$XDG_STATE_HOME/lambda-vm` (`~/.local/state/lambda-vm`).
//! - The **scratch directory** of one run, `lambda-vm-<pid>` under `--work-dir` (default: the
//!   system's temporary directory), holds what lives only while the service runs: each
//!   environment's sockets and VM configuration, the jail's mount point. It is removed at exit.
//!   The service holds a lock on it while it runs; a scratch directory whose lock nobody holds
//!   was left by a service that died (`kill -9`), and the next service to start there removes
//!   it (its cgroups go when the jail starts: [`crate::jail::JailHost::detect`]).

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default state directory for this user.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/lambda-vm");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let state_home = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state_home.join("lambda-vm")
}

const PREFIX: &str = "lambda-vm-";
const LOCK: &str = ".lock";

/// One run's scratch directory, locked while the service runs.
pub struct Scratch {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// What a dead service left: its scratch directory (removed) and its process id, whose
/// cgroups are to be swept.
pub struct Leftover {
    pub dir: PathBuf,
    pub pid: u32,
}

impl Scratch {
    /// Makes and locks `parent/lambda-vm-<pid>`, after removing the scratch directories there
    /// of services that are gone (returned).
    pub fn create(parent: &Path) -> std::io::Result<(Scratch, Vec<Leftover>)> {
        std::fs::create_dir_all(parent)?;
        let leftovers = sweep(parent);
        let dir = parent.join(format!("{PREFIX}{}", std::process::id()));
        // A directory of this name is a dead service's that had our pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        let mut lock = File::create(dir.join(LOCK))?;
        write!(lock, "{}", std::process::id())?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| std::io::Error::from(errno))?;
        Ok((Scratch { dir, _lock: lock }, leftovers))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory (the lock goes with it).
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// Removes the scratch directories under `parent` that no running service holds.
fn sweep(parent: &Path) -> Vec<Leftover> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut left = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if pid == std::process::id() || !abandoned(&dir, pid) {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            left.push(Leftover { dir, pid });
        }
    }
    left
}

/// Whether the service that made scratch directory `dir` is gone: nobody holds its lock (or,
/// from before locks, its process is not a `lambda-vm`).
fn abandoned(dir: &Path, pid: u32) -> bool {
    match File::open(dir.join(LOCK)) {
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
        Err(_) => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_or(true, |comm| comm.trim() != "lambda-vm"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_services_scratch_is_swept_and_a_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A dead one: its lock file is there, nobody holds it.
        let dead = parent.path().join(format!("{PREFIX}4000001"));
        std::fs::create_dir_all(dead.join("0/1")).unwrap();
        std::fs::write(dead.join(LOCK), "4000001").unwrap();
        // One from before locks, of a pid that is no lambda-vm.
        let old = parent.path().join(format!("{PREFIX}4000002"));
        std::fs::create_dir_all(&old).unwrap();
        // A live one: its lock is held.
        let live = parent.path().join(format!("{PREFIX}4000003"));
        std::fs::create_dir_all(&live).unwrap();
        let held = Flock::lock(
            File::create(live.join(LOCK)).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let unrelated = parent.path().join("something-else");
        std::fs::create_dir_all(&unrelated).unwrap();

        let (scratch, leftovers) = Scratch::create(parent.path()).unwrap();
        let mut pids: Vec<u32> = leftovers.iter().map(|l| l.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, [4000001, 4000002]);
        assert!(!dead.exists() && !old.exists());
        assert!(live.exists() && unrelated.exists());
        assert!(scratch.path().join(LOCK).exists());
        // Held by this run: not swept.
        assert!(sweep(parent.path()).is_empty());
        let path = scratch.path().to_owned();
        scratch.remove().unwrap();
        assert!(!path.exists());
        drop(held);
    }
}
