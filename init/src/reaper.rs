//! PID 1's process-table chores: reaping zombies and signalling the runtime.
//!
//! Orphans are re-parented to PID 1 and must be reaped, but the runtime is also a child of init,
//! and tokio (inside rapid) waits for it by pid to learn its exit status. So the reaper never
//! calls `waitpid(-1)`: it lists init's zombie children in /proc and reaps each by pid, except a
//! process-group leader (what rapid makes the runtime) during a grace period in which tokio
//! reaps it. A leader still unreaped after that is an orphan that called `setsid`, and is reaped.

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{getpid, Pid};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How long a zombie group leader is left for tokio before the reaper takes it.
pub const LEADER_GRACE: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` the reaper needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
    pub fn leads_its_group(&self) -> bool {
        self.pid == self.pgrp
    }
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and parentheses, so fields are
/// read after its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat {
        pid,
        state,
        ppid,
        pgrp,
    })
}

/// init's children, from /proc.
pub fn children() -> Vec<Stat> {
    let me = getpid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .filter(|s| s.ppid == me)
        .collect()
}

/// Reaps zombie children, remembering leaders it leaves for tokio.
#[derive(Default)]
pub struct Reaper {
    leaders: HashMap<i32, Instant>,
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
            let _ = waitpid(Pid::from_raw(zombie.pid), Some(WaitPidFlag::WNOHANG));
        }
        !self.leaders.is_empty()
    }
}

/// Reaps on every SIGCHLD (and again after the grace period while leaders wait). Runs forever.
pub async fn run() {
    let mut reaper = Reaper::default();
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        crate::log::say!("cannot watch SIGCHLD; zombies will not be reaped");
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
pub fn runtime_groups() -> Vec<i32> {
    children()
        .into_iter()
        .filter(|s| s.leads_its_group() && !s.is_zombie())
        .map(|s| s.pid)
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
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let stat = parse_stat("42 (my (weird) cmd) Z 1 42 42 0 -1 4194560 0").unwrap();
        assert_eq!(
            stat,
            Stat {
                pid: 42,
                state: 'Z',
                ppid: 1,
                pgrp: 42
            }
        );
        assert!(stat.is_zombie() && stat.leads_its_group());
        for bad in ["", "42 (x", "x (y) S 1 2", "42 (y) S", "42 (y) S 1 nope"] {
            assert_eq!(parse_stat(bad), None, "{bad}");
        }
    }

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
        let pid = |child: std::process::Child| i32::try_from(child.id()).unwrap();
        let (plain, leader) = (pid(plain), pid(leader));
        let zombie = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
                .is_some_and(|s| s.is_zombie())
        };
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
