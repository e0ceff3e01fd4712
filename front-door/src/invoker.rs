//! Where invocations run, as the invoke endpoint and the asynchronous queue see it: a local
//! sandbox (`lambda-local`), or a pool of microVMs (`lambda-vm`). One trait, so both
//! serve the same endpoint with the same semantics.

use crate::function::Function;
use proto::invoke::{Invocation, InvokeError, Outcome};
use std::future::Future;

pub trait Invoker: Clone + Send + Sync + 'static {
    /// The function: its name, timeout, async retry settings.
    fn function(&self) -> &Function;

    /// Writes one line to the function's log.
    fn log(&self, line: &str);

    /// Runs one invocation and waits for its outcome.
    fn invoke(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Outcome, InvokeError>> + Send;
}
