//! The unsafe code init cannot do without, where nix and socket2 have no safe wrapper: the
//! interface-flag ioctls that bring `lo` up, the kernel RNG ioctls used after a restore, and
//! registering a descriptor with tokio's reactor. Each is one small function with a safe
//! signature, so the rest of init has no `unsafe`.

use socket2::{Domain, Socket, Type};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
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

/// Sets `flags` on the interface `name` (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS`).
pub fn add_interface_flags(name: &str, flags: libc::c_short) -> io::Result<()> {
    let mut request = ifreq(name)?;
    // Any socket will do: the ioctls act on the namespace's interfaces, not on the socket. It is
    // made here so that the requests below surely reach the socket layer's ioctls.
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
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

/// `/dev/urandom`, opened for the RNG's ioctls.
pub struct Urandom(File);

impl Urandom {
    pub fn open() -> io::Result<Urandom> {
        let file = OpenOptions::new().write(true).open("/dev/urandom")?;
        // The ioctl numbers below mean something else to other drivers: make sure of the device.
        let metadata = file.metadata()?;
        let urandom = nix::sys::stat::makedev(1, 9);
        if !metadata.file_type().is_char_device() || metadata.rdev() != urandom {
            return Err(io::Error::other(
                "/dev/urandom is not the kernel's urandom device (1:9)",
            ));
        }
        Ok(Urandom(file))
    }

    /// `RNDADDENTROPY` with `pool_info`, a complete `struct rand_pool_info` (header and bytes);
    /// refused (`InvalidInput`) unless the header's `buf_size` is the number of bytes after it.
    pub fn add_entropy(&self, pool_info: &[u8]) -> io::Result<()> {
        const INT: usize = size_of::<libc::c_int>();
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let (header, bytes) = pool_info.split_at_checked(2 * INT).ok_or_else(invalid)?;
        let buf_size = header[INT..].try_into().map(libc::c_int::from_ne_bytes);
        if buf_size.ok().and_then(|n| usize::try_from(n).ok()) != Some(bytes.len()) {
            return Err(invalid());
        }
        // SAFETY: the descriptor is the urandom device (checked in `open`), for which this is
        // RNDADDENTROPY; `pool_info` holds a rand_pool_info header whose `buf_size` (checked just
        // above) matches the bytes that follow it, so the kernel reads only within the slice, and
        // it reads with user-copy routines, which take any alignment.
        unsafe { rndaddentropy(self.0.as_raw_fd(), pool_info.as_ptr()) }?;
        Ok(())
    }

    /// `RNDRESEEDCRNG`: the next read from the CRNG uses the entropy added so far.
    pub fn reseed_crng(&self) -> io::Result<()> {
        // SAFETY: the descriptor is the urandom device (checked in `open`), for which this is
        // RNDRESEEDCRNG, which takes no argument.
        unsafe { rndreseedcrng(self.0.as_raw_fd()) }?;
        Ok(())
    }
}

/// Registers `fd` with tokio's reactor (which must be running on this thread).
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for as long as it lives, nothing else can close it, and its
    // `as_raw_fd` always returns the same descriptor: what `register` requires.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_info_whose_header_does_not_match_its_bytes_never_reaches_the_kernel() {
        let urandom = Urandom::open().unwrap();
        let header = |bits: i32, size: i32| [bits.to_ne_bytes(), size.to_ne_bytes()].concat();
        for bad in [
            vec![0; 7],
            [header(24, 4), vec![1, 2, 3]].concat(),
            [header(24, 2), vec![1, 2, 3]].concat(),
            [header(24, -1), vec![1, 2, 3]].concat(),
        ] {
            let refused = urandom.add_entropy(&bad).unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn interface_names_must_fit_an_ifreq() {
        assert!(ifreq("lo").is_ok());
        for bad in ["a-name-of-16-chr", "l\0o"] {
            let refused = ifreq(bad).unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
