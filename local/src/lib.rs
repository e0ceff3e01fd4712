//! Local mode's library side: the glue between a `rapid` environment and the front door, for the
//! `lambda-local` binary and for anything else that serves a local sandbox's invoke API (the
//! fuzz targets); and the pool of local environments a cluster host runs
//! ([`cluster_pool::LocalPool`]).

pub mod cluster_pool;
pub mod sandbox;

pub use sandbox::LocalSandbox;
