//! Where platform and function log lines go: the seam between an environment and what hosts it
//! (stdout in local mode, the host link in a guest, a log tail on the invoke endpoint).

/// Where platform and function log lines go. Called synchronously, sometimes while the
/// environment's state is locked, so an implementation must not block for long nor call back
/// into the environment.
pub trait LogSink: Send + Sync {
    fn line(&self, line: &str);
}

/// Writes each line to stdout at once, so lines interleave correctly with anything else the
/// process prints.
pub struct StdoutLog;

impl LogSink for StdoutLog {
    fn line(&self, line: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
