//! What a host gives the cluster: the environments it runs (local sandboxes in `lambda-local`,
//! microVMs in `lambda-vm`), behind one trait.

use crate::catalog::FunctionRecord;
use crate::registry::FunctionLoad;
use proto::invoke::{Invocation, InvokeError, Outcome};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// This host's environments now.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub max_concurrency: usize,
    pub in_use: usize,
    pub functions: BTreeMap<String, FunctionLoad>,
}

/// Why a host did not run an invocation.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No idle environment (or, when it may start one, no room for one): try another host.
    #[error("no environment free")]
    Busy,
    /// This host cannot run the function (no artifact of a kind it runs, or the artifact
    /// could not be had): try another host.
    #[error("{0}")]
    Unavailable(String),
    /// The invocation started and got no outcome.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

/// A boxed future, since the trait is used as `dyn Runner`.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<Outcome, RunError>> + Send>>;

/// The environments of one host.
pub trait Runner: Send + Sync + 'static {
    /// The artifact kinds it runs (`zip`, `ext4`, `cpio`).
    fn runs(&self) -> Vec<String>;

    /// Its environments now, for its registry record.
    fn load(&self) -> Load;

    /// Runs `invocation` of `function` if it can start at once: on an idle environment of the
    /// function, or, with `may_start`, on a new one. The future answers [`RunError::Busy`] at
    /// its first poll when it cannot; it never waits in a queue.
    fn run(
        &self,
        function: Arc<FunctionRecord>,
        invocation: Invocation,
        may_start: bool,
    ) -> RunFuture;

    /// Writes a line to the host's log.
    fn log(&self, line: &str);
}
