//! The function's log (the runtime's output and rapid's START/END/REPORT lines) goes to the host
//! as `Log` frames. init's own diagnostics are `log` lines on stderr (the serial console as PID
//! 1), `init: LEVEL message` ([`logging::init`]).

use crate::host_link::Outbox;

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
