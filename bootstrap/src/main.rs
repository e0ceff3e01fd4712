//! `bootstrap`: a Lambda custom runtime for any language. `_HANDLER` names an executable that is
//! started once (the function's init) and then fed invocations as frames on its stdin, answering
//! on its stdout (see `WORKER_PROTOCOL.md`).

mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    bootstrap::run(worker::Worker::from_env)
}
