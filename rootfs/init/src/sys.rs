//! The unsafe code init cannot do without, where nix and socket2 have no safe wrapper: the
//! interface-flag ioctls that bring `lo` up, the kernel RNG ioctls used after a restore, and
//! registering a descriptor with tokio's reactor. Each is one small function with a safe
//! signature, so the rest of init has no `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use tokio::io::unix::AsyncFd;

nix::ioctl_readwrite_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);
// `RNDADDENTROPY` is `_IOW('R', 0x03, int[2])` in <linux/random.h>: the size is the header of
// `struct rand_pool_info`, though the kernel reads the bytes that follow it too.
nix::ioctl_write_ptr_bad!(
    rndaddentropy,
    nix::request_code_write!(b'R', 0x03, 2 * size_of::<libc::c_int>()),
    u8
);
// `RNDRESEEDCRNG` is `_IO('R', 0x07)` (Linux 4.17 and later).
nix::ioctl_none!(rndreseedcrng, b'R', 0x07);

/// An `ifreq` naming `name`, its union zeroed.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data (a name and a union of integers and plain structs), for
    // which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name must leave room for the NUL the zeroed array already holds.
    if name.len() >= request.ifr_name.len() || name.as_bytes().contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    Ok(request)
}

/// Sets `flags` on the interface `name` (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS`), through `socket`,
/// any socket of the interface's network namespace.
pub fn add_interface_flags(
    socket: BorrowedFd<'_>,
    name: &str,
    flags: libc::c_short,
) -> io::Result<()> {
    let mut request = ifreq(name)?;
    // SAFETY: `request` is a valid ifreq naming an interface, exclusively borrowed for the call;
    // the kernel writes only `ifru_flags` into it.
    unsafe { siocgifflags(socket.as_raw_fd(), &mut request) }?;
    // SAFETY: SIOCGIFFLAGS succeeded, so it wrote the union's `ifru_flags` member.
    let current = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = current | flags;
    // SAFETY: `request` is a valid ifreq that outlives the call; the kernel only reads it.
    unsafe { siocsifflags(socket.as_raw_fd(), &request) }?;
    Ok(())
}

/// `RNDADDENTROPY` on `urandom` with `pool_info`, a complete `struct rand_pool_info` (header and
/// bytes), whose header the caller has checked against its length.
pub fn add_entropy(urandom: BorrowedFd<'_>, pool_info: &[u8]) -> io::Result<()> {
    const INT: usize = size_of::<libc::c_int>();
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let (header, bytes) = pool_info.split_at_checked(2 * INT).ok_or_else(invalid)?;
    let buf_size = header[INT..].try_into().map(libc::c_int::from_ne_bytes);
    if buf_size.ok().and_then(|n| usize::try_from(n).ok()) != Some(bytes.len()) {
        return Err(invalid());
    }
    // SAFETY: `pool_info` holds a rand_pool_info header whose `buf_size` (checked just above)
    // matches the bytes that follow it, so the kernel reads only within the slice; the kernel
    // copies the header field by field, so the byte slice's alignment does not matter.
    unsafe { rndaddentropy(urandom.as_raw_fd(), pool_info.as_ptr()) }?;
    Ok(())
}

/// `RNDRESEEDCRNG` on `urandom`: the next read from the CRNG uses the entropy added so far.
pub fn reseed_crng(urandom: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument; a descriptor that is not the RNG only fails.
    unsafe { rndreseedcrng(urandom.as_raw_fd()) }?;
    Ok(())
}

/// Registers `fd` with tokio's reactor (which must be running on this thread).
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives, nothing else can close it, and its
    // `as_raw_fd` always returns the same descriptor: what `register` requires.
    Ok(unsafe { AsyncFd::register(fd) }?)
}
