//! Ready `vmm` processes of one SnapStart function: each already started, jailed for the
//! function's snapshot, seccomp-filtered, in its own network namespace with its tap, its host
//! link listening, and waiting on its API socket with no VM. A new environment then costs one
//! `PUT /snapshot/load` ([`crate::guest::Guest::resume`]) instead of a process start, a jail and
//! a network first.
//!
//! A thread of the pool's own keeps `target` of them (refilled as they are taken, a dead one
//! replaced once [`ReadyPool::check`] sees it); none is made before the function has a
//! snapshot, and all of them go when the snapshot changes or the pool stops. Each is one of the
//! service's [`crate::guest::Environments`] (starting) from the moment it is made, so stopping
//! the service waits for them too.

use crate::guest::{GuestSpec, Prepared};
use crate::snapshots::Snapshot;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the refill waits after a failure before it tries again (a host out of something).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The ready processes of one function.
pub struct ReadyPool {
    state: Mutex<State>,
    changed: Condvar,
    target: usize,
}

struct State {
    /// The snapshot the processes are made for; `None` until the function has one.
    snapshot: Option<Snapshot>,
    ready: Vec<Prepared>,
    /// Being made now.
    making: usize,
    stopped: bool,
}

impl ReadyPool {
    /// A pool keeping `target` ready processes (none when zero).
    pub fn new(target: usize) -> Arc<ReadyPool> {
        Arc::new(ReadyPool {
            state: Mutex::new(State {
                snapshot: None,
                ready: Vec::new(),
                making: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
            target,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the thread that keeps the pool filled with processes made from `spec`;
    /// `next_env` numbers each, `log` says what failed. It ends with [`ReadyPool::stop`].
    pub fn start(
        self: &Arc<Self>,
        name: &str,
        spec: GuestSpec,
        next_env: impl Fn() -> u64 + Send + 'static,
        log: impl Fn(&str) + Send + 'static,
    ) {
        if self.target == 0 {
            return;
        }
        let pool = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name(format!("ready-{name}"))
            .spawn(move || pool.refill(&spec, &next_env, &log));
        if let Err(e) = started {
            log::error!("cannot start the ready-process thread: {e}");
        }
    }

    /// The snapshot the function restores from now: processes for another one go.
    pub fn offer(&self, snapshot: &Snapshot) {
        let mut state = self.lock();
        if state
            .snapshot
            .as_ref()
            .is_some_and(|s| s.dir == snapshot.dir)
        {
            return;
        }
        state.snapshot = Some(snapshot.clone());
        let stale = std::mem::take(&mut state.ready);
        drop(state);
        drop(stale);
        self.changed.notify_all();
    }

    /// The snapshot in `dir` as the pool knows it (its manifest read once), if it is the one.
    pub fn snapshot(&self, dir: &Path) -> Option<Snapshot> {
        let state = self.lock();
        state.snapshot.as_ref().filter(|s| s.dir == dir).cloned()
    }

    /// The snapshot in `dir` did not restore: no process is made for it any more.
    pub fn forget(&self, dir: &Path) {
        let mut state = self.lock();
        if state.snapshot.as_ref().is_some_and(|s| s.dir == dir) {
            state.snapshot = None;
            let stale = std::mem::take(&mut state.ready);
            drop(state);
            drop(stale);
        }
    }

    /// A ready process for the snapshot in `dir`, if one is waiting; the pool makes another.
    pub fn take(&self, dir: &Path) -> Option<Prepared> {
        let prepared = {
            let mut state = self.lock();
            if state.snapshot.as_ref().is_none_or(|s| s.dir != dir) {
                return None;
            }
            state.ready.pop()
        };
        self.changed.notify_all();
        prepared
    }

    /// The ready processes' IDs.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().ready.iter().map(Prepared::pid).collect()
    }

    /// Drops the ready processes that died (killed while waiting), so that the pool makes
    /// others; returns their process IDs.
    pub fn check(&self) -> Vec<u32> {
        let dead = {
            let mut state = self.lock();
            let mut dead = Vec::new();
            let mut index = 0;
            while index < state.ready.len() {
                if state.ready[index].died() {
                    dead.push(state.ready.swap_remove(index));
                } else {
                    index += 1;
                }
            }
            dead
        };
        let pids: Vec<u32> = dead.iter().map(Prepared::pid).collect();
        drop(dead);
        if !pids.is_empty() {
            self.changed.notify_all();
        }
        pids
    }

    /// Ends the pool: its processes go now, and none is made again.
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        let ready = std::mem::take(&mut state.ready);
        drop(state);
        drop(ready);
        self.changed.notify_all();
    }

    /// The refill thread's loop: waits until a process is missing, makes it, adds it.
    fn refill(&self, spec: &GuestSpec, next_env: &dyn Fn() -> u64, log: &dyn Fn(&str)) {
        loop {
            let snapshot = {
                let mut state = self.lock();
                loop {
                    if state.stopped {
                        return;
                    }
                    let missing = state.ready.len() + state.making < self.target;
                    match &state.snapshot {
                        Some(snapshot) if missing => break snapshot.clone(),
                        _ => {
                            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                }
            };
            self.lock().making += 1;
            let made = Prepared::for_restore(spec, next_env(), &snapshot);
            let mut state = self.lock();
            state.making -= 1;
            match made {
                Ok(prepared) => {
                    let current = state
                        .snapshot
                        .as_ref()
                        .is_some_and(|s| s.dir == snapshot.dir);
                    if current && !state.stopped {
                        state.ready.push(prepared);
                    } else {
                        drop(state);
                        drop(prepared);
                    }
                }
                Err(e) => {
                    let stopped = state.stopped;
                    let current = state
                        .snapshot
                        .as_ref()
                        .is_some_and(|s| s.dir == snapshot.dir);
                    drop(state);
                    if stopped || spec.environments.stopping() {
                        return;
                    }
                    if !current {
                        // Its snapshot went meanwhile (discarded, or replaced): nothing failed.
                        continue;
                    }
                    log(&format!(
                        "a ready vmm process failed to start: {}",
                        logging::Chain(&e)
                    ));
                    // Waits on the condition, so that a stop ends the wait at once.
                    let state = self.lock();
                    let _ = self
                        .changed
                        .wait_timeout_while(state, RETRY_AFTER, |s| !s.stopped);
                }
            }
        }
    }
}

/// Memory a `vmm` takes besides its guest's (its own heap, stacks and page tables), for the
/// bound below.
const VMM_OWN_MIB: u64 = 16;

/// How many of `wanted` ready processes a function whose guests have `guest_mib` may keep:
/// each may become a running guest at once, so all of them together may promise at most half
/// of the memory the host has available now (`MemAvailable`). Unbounded when that cannot be
/// read.
pub fn bounded_by_memory(wanted: usize, guest_mib: u32) -> usize {
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
    let Some(available_kib) = available_kib else {
        return wanted;
    };
    let each_mib = u64::from(guest_mib) + VMM_OWN_MIB;
    let fit = (available_kib / 1024 / 2) / each_mib.max(1);
    wanted.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_bound_never_raises_and_stops_huge_guests() {
        assert_eq!(bounded_by_memory(0, 128), 0);
        assert!(bounded_by_memory(2, 128) <= 2);
        // No host has half of 1000 TiB available.
        assert_eq!(bounded_by_memory(4, u32::MAX), 0);
    }
}
