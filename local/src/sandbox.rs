//! The local sandbox as the invoke API sees it: a `rapid` environment (which knows nothing of the
//! invoke API) behind the front door's [`Invoker`].

use front_door::{Function, Invoker};
use proto::invoke::{Answer, Invocation, InvokeError, Outcome};
use std::future::Future;

/// One local environment and the function it serves.
#[derive(Clone)]
pub struct LocalSandbox {
    pub handle: rapid::Handle,
    pub function: Function,
}

impl Invoker for LocalSandbox {
    fn function(&self) -> &Function {
        &self.function
    }

    fn log(&self, line: &str) {
        self.handle.log(line)
    }

    fn invoke(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Outcome, InvokeError>> + Send {
        self.handle.invoke(invocation)
    }

    fn invoke_streaming(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Answer, InvokeError>> + Send {
        self.handle.invoke_streaming(invocation)
    }
}
