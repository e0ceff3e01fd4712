//! A Lambda custom runtime.
//!
//! The library is a blocking client of the Runtime API ([`Client`]) and a runtime loop
//! ([`run`]) in the spirit of the `lambda_runtime` crate, without an async executor:
//!
//! ```no_run
//! use bootstrap::{run, service_fn, Context, HandlerError};
//!
//! fn main() -> std::process::ExitCode {
//!     run(|| Ok(service_fn(|event: &[u8], _ctx: &Context| Ok::<_, HandlerError>(event.to_vec()))))
//! }
//! ```
//!
//! [`typed_fn`] does the same for a handler on `serde` types: the event arrives deserialized
//! from JSON and the response leaves serialized.
//!
//! The `bootstrap` binary of this package is a custom runtime for any language: it drives a
//! long-lived worker process over the protocol in `WORKER_PROTOCOL.md`.

mod client;
mod config;
mod context;
mod error;
pub mod extension;
mod handler;
mod runtime;
mod streaming;
mod typed;

pub use client::{Client, Invocation};
pub use config::Config;
pub use context::Context;
pub use error::{error_type, ConfigError, ContextError, Error};
pub use handler::{service_fn, Function, HandlerError, ServiceFn};
/// The error body of the Runtime API's error endpoints, as [`Client`] takes it.
pub use proto::runtime_api::ErrorRequest;
pub use runtime::{run, run_streaming, run_streaming_with_client, run_with_client};
pub use streaming::{stream_fn, ResponseWriter, StreamFn, StreamingFunction};
pub use typed::{decode_event, encode_response, typed_fn, TypedFn};
