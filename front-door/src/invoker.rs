//! Where invocations run, as the invoke endpoint and the asynchronous queue see it: a local
//! sandbox (`lambda-local`), or a pool of microVMs (`lambda-vm`). One trait, so both
//! serve the same endpoint with the same semantics.

use crate::function::Function;
use proto::invoke::{Answer, Invocation, InvokeError, Outcome};
use std::future::Future;

/// Why a function's reserved concurrency cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConcurrencyError {
    /// The host has no such limit (local mode runs one environment).
    #[error("Reserved concurrency does not apply here: {0}")]
    NotApplicable(&'static str),
    /// More than the host can run at once.
    #[error("ReservedConcurrentExecutions {asked} is more than the {max} environments this host runs at once (--max-concurrency)")]
    TooHigh { asked: u32, max: usize },
}

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

    /// The function's reserved concurrency, if it has one (`GetFunctionConcurrency`).
    fn reserved_concurrency(&self) -> Option<u32> {
        None
    }

    /// Reserves `reserved` environments for the function, or (`None`) removes the reservation
    /// (`PutFunctionConcurrency`, `DeleteFunctionConcurrency`).
    fn set_reserved_concurrency(&self, reserved: Option<u32>) -> Result<(), ConcurrencyError> {
        let _ = reserved;
        Err(ConcurrencyError::NotApplicable(
            "this server runs one environment",
        ))
    }
}
