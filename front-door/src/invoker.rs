//! Where invocations run, as the invoke endpoint and the asynchronous queue see it: a local
//! sandbox (`lambda-local`), or a pool of microVMs (`lambda-vm`). One trait, so both
//! serve the same endpoint with the same semantics.

use crate::function::Function;
use proto::invoke::{Answer, Invocation, InvokeError, Outcome};
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

    /// Runs one invocation; a response the function streams is handed over as a stream as soon
    /// as it begins (`InvokeWithResponseStream`). Where the environments cannot stream, the
    /// whole outcome.
    fn invoke_streaming(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Answer, InvokeError>> + Send {
        let invoke = self.invoke(invocation);
        async move { invoke.await.map(Answer::Whole) }
    }
}
