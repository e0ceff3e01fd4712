//! The Lambda Runtime API server: the role AWS calls RAPID.
//!
//! It runs one function environment: it starts the runtime process (our `bootstrap` or any
//! executable), serves it the Runtime API (`/2018-06-01/runtime/*`) and feeds it invocations from
//! a pluggable source. A source is anything holding a [`Handle`] and calling [`Handle::invoke`]:
//! the emulator-compatible HTTP invoke endpoint ([`invoke_http`]) in local mode, the guest's host
//! link inside a microVM. Logs go to a [`LogSink`]; SnapStart's snapshot point is a
//! [`SnapshotHook`].
//!
//! Everything runs on one thread (a tokio current-thread runtime is enough): inside a microVM
//! under emulation every thread switch is expensive.

pub mod cgroup;
pub mod config;
pub mod extensions;
pub mod hooks;
pub mod process;
pub mod report;
pub mod response_stream;
pub mod runtime_api;
pub mod sandbox;
pub mod telemetry;

pub use config::EnvironmentConfig;
pub use hooks::{NoSnapshot, SnapshotHook};
pub use proto::log::{LogSink, StdoutLog};
pub use proto::InitializationType;
pub use sandbox::{Answer, Handle, Invocation, InvokeError, Outcome};
