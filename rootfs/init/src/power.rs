//! How init ends. As PID 1 it must never exit (the kernel would panic): it kills everything,
//! syncs, and resets the machine with `reboot(RB_AUTOBOOT)`, which with `reboot=k` on the kernel
//! command line is an i8042 reset the VMM sees as the guest's end (a plain `RB_POWER_OFF` only
//! halts the vCPU). As an ordinary process, or with `--no-setup`, it just exits.

use crate::log::say;

/// Ends init with `code` (only an ordinary process has an exit code to give).
pub fn off(system: bool, code: i32) -> ! {
    if !system {
        std::process::exit(code);
    }
    // SAFETY: kill(-1) from PID 1 signals every other process; sync and reboot take no pointers.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    say!(
        "reboot failed: {}; halting here",
        std::io::Error::last_os_error()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
