//! The host side of a guest network interface: a tap device opened through `/dev/net/tun`.
//!
//! The tap is opened by name in the network namespace of the calling thread, which is how each
//! environment gets its own network: the function host runs each `vmm` in its environment's
//! namespace, and every namespace may have a tap of the same name. Frames carry a
//! `virtio_net_hdr_v1` in front (`IFF_VNET_HDR` with a 12-byte header), so the offload fields
//! go between the guest and the host kernel unchanged.
//!
//! Opening and the offload setting are `ioctl`s; after that the device only reads and writes
//! the file descriptor (non-blocking), one frame per call.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

/// Where taps come from.
const TUN_PATH: &str = "/dev/net/tun";
/// The longest interface name Linux takes (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("cannot open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    #[error("cannot attach to tap {name} (TUNSETIFF)")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the virtio-net header size of tap {name} (TUNSETVNETHDRSZ)")]
    SetVnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the offloads of tap {name} (TUNSETOFFLOAD)")]
    SetOffload {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Checks `name` as Linux would (`dev_valid_name`), so that a bad name is refused with its
/// reason rather than cut short or mangled by the kernel.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("not a usable interface name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err("contains '/', ':', a NUL or white space");
    }
    Ok(())
}

/// An open tap. Closing it detaches the VMM; a tap that was created by the open (none of that
/// name existed) goes away with it, a persistent one stays.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap `name` in the calling thread's network namespace (creating it if
    /// there is none, which needs `CAP_NET_ADMIN`), with a `vnet_hdr_len`-byte virtio-net
    /// header on every frame and no offloads until [`Tap::set_offload`].
    pub fn open(name: &str, vnet_hdr_len: usize) -> Result<Tap, TapError> {
        check_name(name).map_err(|why| TapError::BadName {
            name: name.to_owned(),
            why,
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        // SAFETY: `ifreq` is plain old data (a name array and a union of integers, sockaddrs
        // and a pointer), for which all-zero bytes are a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        // The flags fit a c_short (the largest is 0x4000).
        #[allow(clippy::cast_possible_truncation)]
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        ifr.ifr_ifru.ifru_flags = flags;
        // SAFETY: TUNSETIFF reads (and may write back) one `ifreq`, which lives on our stack
        // for the whole call; the name is NUL-terminated (check_name keeps it under IFNAMSIZ).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_owned(),
        };
        let len = libc::c_int::try_from(vnet_hdr_len).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which points at `len`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
        if rc < 0 {
            return Err(TapError::SetVnetHdrSize {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads (`TUN_F_*`) frames *to the guest* may use: checksums left for the guest
    /// to complete, TCP segments larger than the MTU. Only what the guest driver accepted.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(TapError::SetOffload {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Keeps the tap after its last handle closes (`TUNSETPERSIST`), as `ip tuntap add` does:
    /// for a tap made ahead of the VMM that attaches to it.
    pub fn persist(&self) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(1u8),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Lets `uid`/`gid` attach to this (persistent) tap without privileges, as a jailed
    /// `vmm` that opens it after dropping root must.
    pub fn give_to(&self, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        for (request, id) in [(libc::TUNSETOWNER, uid), (libc::TUNSETGROUP, gid)] {
            // SAFETY: TUNSETOWNER and TUNSETGROUP take the id by value; no memory is passed.
            let rc =
                unsafe { libc::ioctl(self.file.as_raw_fd(), request, libc::c_ulong::from(id)) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Reads one frame (header first) into `buf`; `WouldBlock` when none is waiting. A frame
    /// longer than `buf` is cut short by the kernel.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (header first).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
