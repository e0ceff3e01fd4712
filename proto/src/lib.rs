//! Wire formats, defined once and shared by every end that speaks them.
//!
//! - [`runtime_api`]: the AWS Lambda Runtime API (`/2018-06-01/runtime/...`), spoken between a
//!   runtime (our `bootstrap` or any third-party one) and the Runtime API server.
//! - [`invoke_api`]: the invoke endpoint of the AWS Runtime Interface Emulator, spoken between a
//!   client (`curl`, a test) and the function service.
//! - [`env`]: the reserved Lambda environment variables a runtime is started with.
//! - [`host_link`]: the length-prefixed, versioned frames between the host and the guest's init,
//!   over vsock (or a Unix socket outside a VM).
//! - [`function_config`]: `function.json`, the per-function settings (handler, memory, timeout,
//!   initialization type, environment), with its defaults and ranges; read by the image builder,
//!   the guest init and the host.
//! - [`guest`]: what host and guest agree on without a message: the guest's network identity and
//!   the kernel command-line keys for init.
//! - [`layout`]: where things live inside the guest image (written by the builder, read by init).
//! - [`readiness`]: the line a server prints once it serves, which scripts and tests wait for.
//! - [`invoke`]: one invocation and its outcome, as invocation sources and environments exchange
//!   them in process.
//! - [`log`]: where log lines go, and the one error-chain printer.
//! - [`time`]: epoch milliseconds and RFC 3339 timestamps.

pub mod env;
pub mod extensions_api;
pub mod function_config;
pub mod guest;
pub mod host_link;
pub mod invoke;
pub mod invoke_api;
pub mod layout;
pub mod log;
pub mod readiness;
pub mod runtime_api;
pub mod telemetry_api;
pub mod time;

pub use function_config::{FunctionConfig, InitializationType};
