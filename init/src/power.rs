//! How init ends. As PID 1 it must never exit (the kernel would panic): it kills everything,
//! syncs, and resets the machine with `reboot(RB_AUTOBOOT)`, which with `reboot=k` on the kernel
//! command line is an i8042 reset the VMM sees as the guest's end (a plain `RB_POWER_OFF` only
//! halts the vCPU). As an ordinary process, or with `--no-setup`, it just exits.

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};

/// Ends init with `code` (only an ordinary process has an exit code to give).
pub fn off(system: bool, code: i32) -> ! {
    if !system {
        std::process::exit(code);
    }
    // From PID 1, -1 is every other process. Failures change nothing: the reboot follows.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    log::error!("reboot failed: {e}; halting here");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
