//! How every program of the workspace reports, in one place.
//!
//! - **Diagnostics** go through the [`log`] facade (`log::info!`, `log::warn!`, ...) in every
//!   crate. Each binary calls [`init`] first thing, which writes them to stderr as
//!   `<program>: LEVEL message`, one write per line so that lines of several threads never mix.
//! - **Errors**: each error type derives `thiserror::Error`, and its message says what failed
//!   without repeating its cause, which stays reachable through `source()`. The whole story is
//!   the chain, written on one line by [`Chain`] (in log lines, error replies and a binary's
//!   last words).
//!
//! What a program prints as its output (a readiness line, a function's log) is not a diagnostic
//! and does not go through here.

use log::{LevelFilter, Log, Metadata, Record};
use std::error::Error;
use std::fmt;
use std::io::Write;

/// Displays an error and then each of its causes, `: `-separated. A cause whose text is
/// already shown is skipped: other crates' errors (linux-loader's, for one) often print their
/// source in their own message as well.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&shown)
    }
}

/// The `log` backend: `<program>: LEVEL message` on stderr.
struct Stderr {
    program: &'static str,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let line = line(self.program, record);
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// One diagnostic as it is written.
fn line(program: &str, record: &Record) -> String {
    format!("{program}: {} {}\n", record.level(), record.args())
}

/// Writes this process's diagnostics to stderr as `program`'s, those at `level` and above.
/// Where a backend is installed already (a program that uses a library of ours and logs its
/// own way), that one and its level stay.
pub fn init(program: &'static str, level: LevelFilter) {
    if log::set_boxed_logger(Box::new(Stderr { program })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the drive")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_once() {
        let error = Outer(std::io::Error::other("no such file"));
        assert_eq!(Chain(&error).to_string(), "opening the drive: no such file");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        let error = Outer(std::io::Error::other(Repeats(std::io::Error::other("bad"))));
        assert_eq!(Chain(&error).to_string(), "opening the drive: loading: bad");
    }

    #[test]
    fn lines_name_the_program_and_the_level() {
        let written = line(
            "vmm",
            &Record::builder()
                .level(log::Level::Info)
                .args(format_args!("restored in {} ms", 12))
                .build(),
        );
        assert_eq!(written, "vmm: INFO restored in 12 ms\n");
        init("logging-test", LevelFilter::Info);
        assert!(log::log_enabled!(log::Level::Warn));
        assert!(!log::log_enabled!(log::Level::Debug));
        // A second backend does not replace the first, nor its level.
        init("ignored", LevelFilter::Debug);
        assert!(!log::log_enabled!(log::Level::Debug));
    }
}
