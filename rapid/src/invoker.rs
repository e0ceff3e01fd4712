//! Where invocations run, as the invoke endpoint and the asynchronous queue see it: the local
//! sandbox ([`Handle`]), or a microVM behind the VMM's function service. One trait, so both
//! serve the same endpoint with the same semantics.

use crate::config::EnvironmentConfig;
use crate::sandbox::{Handle, Invocation, InvokeError, Outcome};
use std::future::Future;

pub trait Invoker: Clone + Send + Sync + 'static {
    /// The function's configuration: its name, timeout, async retry settings.
    fn config(&self) -> &EnvironmentConfig;

    /// Writes one line to the function's log.
    fn log(&self, line: &str);

    /// Runs one invocation and waits for its outcome.
    fn invoke(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Outcome, InvokeError>> + Send;
}

impl Invoker for Handle {
    fn config(&self) -> &EnvironmentConfig {
        Handle::config(self)
    }

    fn log(&self, line: &str) {
        Handle::log(self, line)
    }

    fn invoke(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Outcome, InvokeError>> + Send {
        Handle::invoke(self, invocation)
    }
}
