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

/// Where the first [`VmExit`] is posted (by a vCPU thread, a device, the event loop) and waited
/// for. Later exits are dropped: the first cause is the one worth reporting.
#[derive(Default)]
pub struct ExitSignal {
    exit: Mutex<Option<VmExit>>,
    posted: Condvar,
}

impl ExitSignal {
    pub fn post(&self, exit: VmExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
            self.posted.notify_all();
        }
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
}
