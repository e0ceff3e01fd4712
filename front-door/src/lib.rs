//! Lambda's invoke API in front of a function's environments, whatever runs them: the Lambda
//! API's routes over a set of functions ([`api`]), the invoke endpoint ([`invoke_http`]), the asynchronous queue with its durable event store
//! ([`async_invoke`], [`event_store`]) and on-failure destination, and the log tail
//! ([`log_tail`]). `lambda-local` puts it in front of one local sandbox, `lambda-vm` in front of
//! a pool of microVMs; both implement [`Invoker`].
//!
//! Nothing here runs a runtime: the Runtime API side is the `rapid` crate, which this crate does
//! not depend on.

pub mod api;
pub mod async_invoke;
pub mod endpoint_flags;
pub mod event_store;
pub mod event_stream;
pub mod function;
pub mod invoke_http;
pub mod invoker;
pub mod log_tail;
pub mod streaming;

pub use api::Router;
pub use endpoint_flags::EndpointFlags;
pub use function::{AsyncPolicy, Code, Function};
pub use invoker::{ConcurrencyError, Invoker};
pub use log_tail::LogTails;
