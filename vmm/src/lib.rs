//! A minimal KVM virtual machine monitor on the rust-vmm crates: boot, devices, pause,
//! snapshot and restore. It knows nothing of Lambda; the function service (`lambda-vm`) is a
//! crate of its own that uses it.

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exit;
pub mod host_caps;
pub mod jail;
pub mod microvm;
pub mod persist;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;
