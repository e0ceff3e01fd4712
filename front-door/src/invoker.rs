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

    /// Runs one asynchronous event: as [`Invoker::invoke`], except that where that would
    /// refuse it at once for want of an environment (a throttle), this waits for one to free,
    /// until `deadline` (then it is throttled). By default the same as `invoke`, for invokers
    /// that queue rather than refuse.
    fn invoke_event(
        &self,
        invocation: Invocation,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Outcome, InvokeError>> + Send {
        let _ = deadline;
        self.invoke(invocation)
    }
}
