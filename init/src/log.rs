//! Logging: init's own diagnostics go to stderr (the serial console as PID 1), prefixed `init:`;
//! the function's log (the runtime's output and rapid's START/END/REPORT lines) goes to the host
//! as `Log` frames.

use crate::host_link::Outbox;

/// Prints one of init's own diagnostics to stderr.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("init: {}", format_args!($($arg)*))
    };
}
pub(crate) use say;

/// rapid's log sink: every line becomes a `Log` frame for the host.
pub struct LinkLog {
    outbox: Outbox,
}

impl LinkLog {
    pub fn new(outbox: Outbox) -> LinkLog {
        LinkLog { outbox }
    }
}

impl rapid::LogSink for LinkLog {
    fn line(&self, line: &str) {
        self.outbox.log(line);
    }
}

/// An error and its causes, `outer: inner: innermost` (the one chain printer of the
/// Lambda-side crates).
pub use rapid::error_chain as chain;
