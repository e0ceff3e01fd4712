//! The KVM virtual machine monitor and the host-side function service.
//!
//! Only the host side of the host link exists so far ([`host_link`]): it accepts the guest init's
//! connection on the Firecracker-style hybrid-vsock Unix socket and relays invocations, logs and
//! restores over it. The VMM itself is tracked by its own issue.

pub mod host_link;
