//! The KVM virtual machine monitor and the host-side function service.

pub mod config;
pub mod devices;
pub mod host_link;
