//! How a VM run ends, and the process exit code that tells a script what happened.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked to stop (an i8042 reset, which is how `reboot=k` powers off).
    Shutdown,
    /// The guest broke in a way KVM reported: a triple fault, an instruction the hypervisor
    /// could not emulate, a failed VM entry.
    GuestCrash(String),
    /// The VMM itself failed (a KVM call, a device's backend).
    VmmError(String),
}

impl VmExit {
    /// Exit code of the `vmm` binary: 0 guest shutdown, 1 VMM error, 3 guest crash (2 is left to
    /// command-line usage errors).
    pub fn code(&self) -> i32 {
        match self {
            VmExit::Shutdown => 0,
            VmExit::VmmError(_) => 1,
            VmExit::GuestCrash(_) => 3,
        }
    }
}

/// Called once when the VM stops (see [`ExitSignal::on_exit`]).
pub type ExitWatcher = Box<dyn FnOnce() + Send>;

/// Where the first [`VmExit`] is posted (by a vCPU thread, a device, the event loop) and waited
/// for. Later exits are dropped: the first cause is the one worth reporting.
#[derive(Default)]
pub struct ExitSignal {
    exit: Mutex<Option<VmExit>>,
    posted: Condvar,
    watchers: Mutex<Vec<ExitWatcher>>,
}

impl ExitSignal {
    pub fn post(&self, exit: VmExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        *slot = Some(exit);
        self.posted.notify_all();
        drop(slot);
        let watchers =
            std::mem::take(&mut *self.watchers.lock().unwrap_or_else(|e| e.into_inner()));
        for watcher in watchers {
            watcher();
        }
    }

    /// Calls `watcher` once the VM has stopped: at once if it already has, else from the
    /// thread that posts the exit (a vCPU or the event loop, under its seccomp filter, so the
    /// watcher should only wake someone: send on a channel, write an eventfd).
    pub fn on_exit(&self, watcher: ExitWatcher) {
        // Under the exit lock, so a post cannot slip between the check and the registration.
        let slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            drop(slot);
            watcher();
            return;
        }
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(watcher);
    }

    pub fn get(&self) -> Option<VmExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for an exit, up to `timeout` (`None`: forever).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match timeout {
            None => self
                .posted
                .wait_while(slot, |s| s.is_none())
                .unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                self.posted
                    .wait_timeout_while(slot, t, |s| s.is_none())
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        slot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_wins() {
        let signal = ExitSignal::default();
        assert_eq!(signal.wait(Some(Duration::from_millis(1))), None);
        signal.post(VmExit::Shutdown);
        signal.post(VmExit::VmmError("later".into()));
        assert_eq!(signal.wait(None), Some(VmExit::Shutdown));
        assert_eq!(VmExit::GuestCrash(String::new()).code(), 3);
    }

    #[test]
    fn a_watcher_is_called_once_whether_it_comes_before_or_after_the_exit() {
        let signal = ExitSignal::default();
        let (sender, calls) = std::sync::mpsc::channel();
        let early = sender.clone();
        signal.on_exit(Box::new(move || early.send("early").unwrap()));
        signal.post(VmExit::Shutdown);
        signal.post(VmExit::Shutdown);
        signal.on_exit(Box::new(move || sender.send("late").unwrap()));
        assert_eq!(calls.iter().collect::<Vec<_>>(), ["early", "late"]);
    }
}
