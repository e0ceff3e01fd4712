//! The host-side function service behind `lambda-vm`: a Lambda function runs in a microVM (the
//! `vmm` crate), its guest init serves the Runtime API inside, and invocations reach it over the
//! host link. The invoke endpoint is `front-door`'s, the same code as local mode.
//!
//! - [`service`]: the [`FunctionService`], an `Invoker` that boots or restores microVMs;
//! - [`pool`]: one function's environments and the concurrency limits;
//! - [`guest`]: one function environment, a microVM and its host link;
//! - [`snapshots`]: where SnapStart snapshots live, keyed to what they were made from;
//! - [`host_link`]: the host end of the host link;
//! - [`network`]: one network namespace, tap and veth per environment;
//! - [`vmm_process`]: a microVM's own `vmm` process: starting it (forked by `spawner`'s threads so
//!   that it dies with the service), its jail, reaping it;
//! - [`vmm_api`]: the one control channel to each `vmm`, Firecracker's API;
//! - [`ready`]: a SnapStart function's `vmm` processes started ahead of the requests;
//! - [`cluster_host`]: the host's microVMs as environments of a cluster (`--cluster`).

pub mod checks;
pub mod cluster_host;
pub mod dirs;
pub mod guest;
pub mod host;
pub mod host_link;
pub mod jail;
pub mod logs;
pub mod network;
pub mod pool;
pub mod ready;
pub mod service;
pub mod snapshots;
mod spawner;
pub mod vmm_api;
pub mod vmm_process;

pub use service::{FunctionService, Scaling, StartError};
