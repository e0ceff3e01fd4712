//! What the host and the guest's init agree on without a message: the guest's network identity
//! (the same in every environment, so a snapshot restores into any of them with its interface
//! already configured) and the kernel command-line keys through which the host tells init how it
//! was started (the kernel hands unknown `NAME=value` words to PID 1 as environment variables).

pub mod net {
    use std::net::Ipv4Addr;

    /// The hostname init sets.
    pub const HOSTNAME: &str = "localhost";
    /// The function's network interface in the guest: the first (only) virtio-net device.
    pub const INTERFACE: &str = "eth0";
    /// The guest's address on [`INTERFACE`].
    pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
    /// The prefix length of the guest's link (a /30: the guest and its gateway).
    pub const PREFIX_LEN: u8 = 30;
    /// [`PREFIX_LEN`] as a netmask, for the ioctl init sets it with.
    pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 252);
    /// The host end of the guest's link (the tap in the environment's namespace).
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
    /// The guest's MAC address (locally administered; the last four bytes spell [`ADDRESS`]).
    pub const MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
    /// The gateway's (tap's) MAC address: a restored guest's ARP cache holds it from snapshot
    /// time, and a tap with another one would ignore the guest's frames until that entry went
    /// stale (tens of seconds).
    pub const GATEWAY_MAC: &str = "06:00:ac:10:00:01";

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_constants_agree() {
            let mask = u32::MAX << (32 - u32::from(PREFIX_LEN));
            assert_eq!(u32::from(NETMASK), mask);
            assert_eq!(u32::from(ADDRESS) & mask, u32::from(GATEWAY) & mask);
            assert_eq!(MAC[2..], ADDRESS.octets());
        }
    }
}

/// Kernel command-line keys the host adds for init.
pub mod cmdline {
    /// `INIT_INITIALIZATION_TYPE=<on-demand|provisioned-concurrency|snap-start>`: how the host
    /// started this environment, over the image's `function.json`.
    pub const INITIALIZATION_TYPE: &str = "INIT_INITIALIZATION_TYPE";
    /// `INIT_TIMING=1`: init times each invocation and sends the stamps to the host.
    pub const TIMING: &str = "INIT_TIMING";
    /// `INIT_INIT_TIMEOUT_MS=<ms>`: how long the function's init may take, over Lambda's 10 s.
    pub const INIT_TIMEOUT_MS: &str = "INIT_INIT_TIMEOUT_MS";
}
