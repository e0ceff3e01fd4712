//! PID 1's process-table chores: reaping zombies and signalling the runtime.
//!
//! Orphans are re-parented to PID 1 and must be reaped, but the runtime is also a child of init,
//! and tokio (inside rapid) waits for it by pid to learn its exit status. So the reaper never
//! calls `waitpid(-1)`: it lists init's zombie children in /proc and reaps each by pid, except a
//! process-group leader (what rapid makes the runtime) during a grace period in which tokio
//! reaps it. A leader still unreaped after that is an orphan that called `setsid`, and is reaped.

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use proc_info::Stat;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How long a zombie group leader is left for tokio before the reaper takes it.
pub const LEADER_GRACE: Duration = Duration::from_secs(5);

/// init's children, from /proc.
pub fn children() -> Vec<Stat> {
    let me = std::process::id();
    proc_info::all().filter(|s| s.ppid == me).collect()
}

/// `pid` as nix takes it; every pid the kernel gives fits.
fn nix_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().map(Pid::from_raw)
}

/// Reaps zombie children, remembering leaders it leaves for tokio.
#[derive(Default)]
pub struct Reaper {
    leaders: HashMap<u32, Instant>,
}

impl Reaper {
    /// Reaps what can be reaped now; returns whether leaders are still waiting out their grace.
    pub fn reap(&mut self, now: Instant) -> bool {
        let zombies: Vec<Stat> = children().into_iter().filter(Stat::is_zombie).collect();
        self.leaders
            .retain(|pid, _| zombies.iter().any(|z| z.pid == *pid));
        for zombie in zombies {
            if zombie.leads_its_group() {
                let first_seen = *self.leaders.entry(zombie.pid).or_insert(now);
                if now.duration_since(first_seen) < LEADER_GRACE {
                    continue;
                }
                self.leaders.remove(&zombie.pid);
            }
            // The status is not wanted, and a zombie that vanished meanwhile is no error.
            if let Some(pid) = nix_pid(zombie.pid) {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            }
        }
        !self.leaders.is_empty()
    }
}

/// Reaps on every SIGCHLD (and again after the grace period while leaders wait). Runs forever.
pub async fn run() {
    let mut reaper = Reaper::default();
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        log::warn!("cannot watch SIGCHLD; zombies will not be reaped");
        return;
    };
    let mut waiting = reaper.reap(Instant::now());
    loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tokio::time::sleep(LEADER_GRACE), if waiting => {}
        }
        waiting = reaper.reap(Instant::now());
    }
}

/// The process groups of init's live children that lead their own group: the runtime's.
pub fn runtime_groups() -> Vec<Pid> {
    children()
        .into_iter()
        .filter(|s| s.leads_its_group() && !s.is_zombie())
        .filter_map(|s| nix_pid(s.pid))
        .collect()
}

/// Sends `signal` (a signal number) to every runtime group; returns how many there were, or 0
/// for a number that is no signal.
pub fn signal_runtime(signal: libc::c_int) -> usize {
    let Ok(signal) = Signal::try_from(signal) else {
        return 0;
    };
    let groups = runtime_groups();
    for &pgid in &groups {
        // A group that just vanished gives ESRCH: it needs no signal any more.
        let _ = killpg(pgid, signal);
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The point is that the reaper, not `Child::wait`, reaps them.
    #[allow(clippy::zombie_processes)]
    fn a_zombie_child_is_reaped_and_a_leader_only_after_its_grace() {
        use std::os::unix::process::CommandExt;
        // A child in our own process group (not a leader) and one leading its own.
        let plain = std::process::Command::new("true").spawn().unwrap();
        let leader = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let (plain, leader) = (plain.id(), leader.id());
        let zombie = |pid: u32| Stat::read(pid).is_some_and(|s| s.is_zombie());
        let start = Instant::now();
        while !(zombie(plain) && zombie(leader)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "children did not exit"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut reaper = Reaper::default();
        let now = Instant::now();
        assert!(reaper.reap(now));
        assert!(!zombie(plain), "the non-leader was reaped");
        assert!(zombie(leader), "the leader is left for tokio");
        assert!(!reaper.reap(now + LEADER_GRACE));
        assert!(!zombie(leader), "the leader is reaped after the grace");
    }
}
