//! A function on the `bootstrap` library's typed handlers: the event is a `Greeting` request in
//! JSON, the response a `Greeting` reply. `scripts/package-lambda.sh bootstrap/examples/rust-handler`
//! turns it into a Lambda deployment package whose `bootstrap` is this binary.

use bootstrap::{run, typed_fn, Context};
use serde::{Deserialize, Serialize};
use std::process::ExitCode;

#[derive(Deserialize)]
struct Request {
    name: String,
    #[serde(default)]
    shout: bool,
}

#[derive(Serialize)]
struct Reply {
    message: String,
    request_id: String,
    function_arn: String,
    function_name: Option<String>,
    deadline_ms: u64,
}

/// The function's own failure; Lambda reports it with `errorType` `GreetError`.
#[derive(Debug, thiserror::Error)]
enum GreetError {
    #[error("the name is empty: there is nobody to greet")]
    EmptyName,
}

fn greet(request: Request, ctx: &Context) -> Result<Reply, GreetError> {
    let name = request.name.trim();
    if name.is_empty() {
        return Err(GreetError::EmptyName);
    }
    let mut message = format!("Hello, {name}!");
    if request.shout {
        message = message.to_uppercase();
    }
    Ok(Reply {
        message,
        request_id: ctx.request_id.clone(),
        function_arn: ctx.invoked_function_arn.clone(),
        function_name: ctx.env_config.function_name.clone(),
        deadline_ms: ctx.deadline_ms,
    })
}

fn main() -> ExitCode {
    run(|| Ok(typed_fn(greet)))
}
