//! The machine's identity on the network: loopback up (the Runtime API listens on 127.0.0.1),
//! the hostname, and, for a function with networking, `eth0` (the virtio-net device the host
//! gives it) with the fixed address every environment's guest has.
//!
//! The guest's address, gateway and MAC are the same in every environment
//! ([`proto::guest::net`]): the host gives each environment its own network namespace and
//! translates this address to one of its own. So a snapshot's restored copies all come up with a
//! working, already configured, interface.

use crate::sys;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

pub use proto::guest::net::{ADDRESS, GATEWAY, HOSTNAME, INTERFACE, NETMASK};

nix::ioctl_write_ptr_bad!(siocsifaddr, libc::SIOCSIFADDR, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifnetmask, libc::SIOCSIFNETMASK, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocaddrt, libc::SIOCADDRT, libc::rtentry);

/// Brings the `lo` interface up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`).
pub fn loopback_up() -> io::Result<()> {
    sys::add_interface_flags("lo", up_flag()?)
}

fn up_flag() -> io::Result<libc::c_short> {
    libc::c_short::try_from(libc::IFF_UP)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Sets the hostname.
pub fn set_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name)?;
    Ok(())
}

/// Whether the host gave this VM a network device.
pub fn has_interface() -> bool {
    std::path::Path::new("/sys/class/net")
        .join(INTERFACE)
        .exists()
}

/// Gives [`INTERFACE`] its address and brings it up, and routes everything through
/// [`GATEWAY`]: four ioctls on one socket, the cheapest way there (no netlink messages to
/// build and parse, no `ip` process, no `ip=` on the kernel command line, which also cost
/// boot time).
pub fn interface_up() -> io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let fd = socket.as_raw_fd();
    let mut request = sys::ifreq(INTERFACE)?;
    request.ifr_ifru.ifru_addr = sockaddr(ADDRESS);
    // SAFETY: `request` is a valid ifreq naming the interface, with an AF_INET address in
    // `ifru_addr`; it outlives the call, and the kernel only reads it.
    unsafe { siocsifaddr(fd, &request) }.map_err(|e| context(e, "SIOCSIFADDR"))?;
    request.ifr_ifru.ifru_netmask = sockaddr(NETMASK);
    // SAFETY: as above, with the netmask in `ifru_netmask`.
    unsafe { siocsifnetmask(fd, &request) }.map_err(|e| context(e, "SIOCSIFNETMASK"))?;
    // The environment's network is IPv4 only; without this, bringing the link up also starts
    // IPv6 autoconfiguration (a link-local address, its duplicate detection, router
    // solicitations), guest kernel work for nothing. Absent without IPv6 in the kernel.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{INTERFACE}/disable_ipv6"),
        "1",
    );
    sys::add_interface_flags(INTERFACE, up_flag()?)?;
    // SAFETY: rtentry is plain old data (integers, socket addresses and a pointer that may be
    // null), for which all-zero bytes are a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(GATEWAY);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: `route` is a valid rtentry (a default route through the gateway; `rt_dev` null:
    // the kernel picks the interface that reaches the gateway); it outlives the call, and the
    // kernel only reads it.
    unsafe { siocaddrt(fd, &route) }.map_err(|e| context(e, "SIOCADDRT (default route)"))?;
    Ok(())
}

/// `address` as a `struct sockaddr` holding a `sockaddr_in` (port 0).
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    // sockaddr_in after the family: the port (2 bytes), then the address, both in network order.
    for (dst, src) in data[2..6].iter_mut().zip(address.octets()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    libc::sockaddr {
        sa_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sa_data: data,
    }
}

fn context(errno: nix::errno::Errno, what: &str) -> io::Error {
    io::Error::new(io::Error::from(errno).kind(), format!("{what}: {errno}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sockaddr_holds_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let bytes: Vec<u8> = sa.sa_data[..6].iter().map(|c| c.to_ne_bytes()[0]).collect();
        assert_eq!(bytes, [0, 0, 172, 16, 0, 2]);
        // The same layout as the kernel's sockaddr_in.
        assert_eq!(size_of::<libc::sockaddr>(), size_of::<libc::sockaddr_in>());
    }
}
