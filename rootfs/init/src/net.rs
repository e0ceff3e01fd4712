//! The machine's identity on the network: loopback up (the Runtime API listens on 127.0.0.1) and
//! the hostname.

use crate::sys;
use std::io;

/// The hostname PID 1 sets.
pub const HOSTNAME: &str = "localhost";

/// Brings the `lo` interface up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`).
pub fn loopback_up() -> io::Result<()> {
    let up = libc::c_short::try_from(libc::IFF_UP)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    sys::add_interface_flags("lo", up)
}

/// Sets the hostname.
pub fn set_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name)?;
    Ok(())
}
