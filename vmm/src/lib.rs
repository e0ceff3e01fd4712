//! The KVM virtual machine monitor and the host-side function service.

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod error;
pub mod exit;
pub mod host_caps;
pub mod host_link;
pub mod logger;
pub mod microvm;
pub mod service;
pub mod snapshot;
pub mod vstate;
