//! Many hosts as one function platform, on a NATS JetStream cluster (see this crate's
//! README): hosts register with a heartbeat ([`registry`]), functions are deployed to the
//! cluster rather than to a host ([`catalog`]), any host routes any synchronous invoke
//! ([`host`], over [`forward`] and [`wire`]), and asynchronous events live on a replicated
//! stream until each has its outcome ([`events`]); a SnapStart snapshot taken on one host is
//! restored by the others ([`snapshots`]). A host plugs in its environments through
//! [`Runner`] and serves [`front::Front`] as its invoke endpoint.

pub mod catalog;
pub mod connect;
pub mod events;
pub mod forward;
pub mod front;
pub mod host;
pub mod names;
mod objects;
pub mod registry;
pub mod runner;
pub mod snapshots;
pub mod wire;

pub use async_nats;
pub use connect::{Cluster, ClusterArgs, ConnectError};
pub use host::{HostSettings, Node};
pub use runner::{Load, RunError, RunFuture, Runner};
