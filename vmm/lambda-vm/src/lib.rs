//! The host-side function service behind `lambda-vm`: a Lambda function runs in a microVM (the
//! `vmm` crate), its guest init serves the Runtime API inside, and invocations reach it over the
//! host link. The invoke endpoint is `rapid`'s, the same code as local mode.
//!
//! - [`service`]: the [`FunctionService`], an `Invoker` that boots or restores microVMs;
//! - [`guest`]: one function environment, a microVM and its host link;
//! - [`snapshots`]: where SnapStart snapshots live, keyed to what they were made from;
//! - [`host_link`]: the host end of the host link.

pub mod guest;
pub mod host_link;
pub mod service;
pub mod snapshots;

pub use service::{chain, FunctionService, StartError};
