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
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

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

/// The message a panic was raised with (its payload is a `&str` or a `String` for every
/// `panic!` with a message), for code that catches a panic and reports it as an error: a
/// handler's panic in `bootstrap`, an environment's start in `lambda-vm`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}

/// The `log` backend: `<program>: LEVEL message` lines on stderr, or where [`configure`] says.
struct Backend {
    program: &'static str,
    sink: Mutex<Sink>,
}

struct Sink {
    /// `None`: stderr.
    file: Option<File>,
    show_level: bool,
    show_origin: bool,
}

/// The one backend of this process, made by [`init`].
static BACKEND: OnceLock<Backend> = OnceLock::new();

/// The crates (and binaries) of this workspace. Their diagnostics follow the level the program
/// was given; a dependency's (the NATS client announcing each connection, say) show from `WARN`
/// up, unless that level is `DEBUG` or finer: a program's stderr says what the program does.
const OURS: &[&str] = &[
    "bootstrap",
    "cgroups",
    "cluster",
    "front_door",
    "http_server",
    "init",
    "lambda_cluster",
    "lambda_local",
    "lambda_vm",
    "logging",
    "proc_info",
    "proto",
    "rapid",
    "rootfs",
    "vmm",
];

/// Whether a diagnostic of `target` at `level` is shown when the program's level is `max`.
fn shown(target: &str, level: log::Level, max: LevelFilter) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    level <= max
        && (level <= log::Level::Warn || max >= LevelFilter::Debug || OURS.contains(&krate))
}

impl Log for Backend {
    fn enabled(&self, metadata: &Metadata) -> bool {
        shown(metadata.target(), metadata.level(), log::max_level())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let line = line(self.program, &sink, record);
        // A diagnostic that cannot be written is not worth stopping for.
        let _ = match &mut sink.file {
            Some(file) => file.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {}
}

/// One diagnostic as it is written: `program: LEVEL file:line message` (the level and origin
/// as the sink shows them).
fn line(program: &str, sink: &Sink, record: &Record) -> String {
    let mut line = format!("{program}:");
    if sink.show_level {
        line.push_str(&format!(" {}", record.level()));
    }
    if sink.show_origin {
        let file = record.file().unwrap_or("?");
        line.push_str(&format!(" {file}:{}", record.line().unwrap_or(0)));
    }
    line.push_str(&format!(" {}\n", record.args()));
    line
}

/// Writes this process's diagnostics to stderr as `program`'s, those at `level` and above.
/// Where a backend is installed already (a program that uses a library of ours and logs its
/// own way, or a second call), that one and its level stay.
pub fn init(program: &'static str, level: LevelFilter) {
    let backend = BACKEND.get_or_init(|| Backend {
        program,
        sink: Mutex::new(Sink {
            file: None,
            show_level: true,
            show_origin: false,
        }),
    });
    if log::set_logger(backend).is_ok() {
        log::set_max_level(level);
    }
}

/// Changes the level, where lines go (a file appended to, or a named pipe), and whether each
/// shows its level and its source file and line (Firecracker's `PUT /logger`); `None` leaves a
/// setting as it is. Only for a process whose backend [`init`] installed.
pub fn configure(
    level: Option<LevelFilter>,
    path: Option<&Path>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
) -> std::io::Result<()> {
    let backend = BACKEND
        .get()
        .ok_or_else(|| std::io::Error::other("this process has no log backend of ours"))?;
    let file = path
        .map(|path| OpenOptions::new().create(true).append(true).open(path))
        .transpose()?;
    let mut sink = backend.sink.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = file {
        sink.file = Some(file);
    }
    if let Some(show) = show_level {
        sink.show_level = show;
    }
    if let Some(show) = show_origin {
        sink.show_origin = show;
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the drive")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_dependencys_chatter_shows_only_from_warn_up_or_when_debugging() {
        use log::Level;
        let info = LevelFilter::Info;
        assert!(shown("lambda_local::cluster", Level::Info, info));
        assert!(shown("vmm", Level::Info, info));
        assert!(!shown("async_nats::connector", Level::Info, info));
        assert!(shown("async_nats::connector", Level::Warn, info));
        assert!(shown("async_nats", Level::Info, LevelFilter::Debug));
        assert!(!shown("vmm", Level::Debug, info));
    }

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
        let mut sink = Sink {
            file: None,
            show_level: true,
            show_origin: false,
        };
        let written = |sink: &Sink| {
            line(
                "vmm",
                sink,
                &Record::builder()
                    .level(log::Level::Info)
                    .file(Some("src/x.rs"))
                    .line(Some(7))
                    .args(format_args!("restored in {} ms", 12))
                    .build(),
            )
        };
        assert_eq!(written(&sink), "vmm: INFO restored in 12 ms\n");
        (sink.show_level, sink.show_origin) = (false, true);
        assert_eq!(written(&sink), "vmm: src/x.rs:7 restored in 12 ms\n");
        init("logging-test", LevelFilter::Info);
        assert!(log::log_enabled!(log::Level::Warn));
        assert!(!log::log_enabled!(log::Level::Debug));
        // A second backend does not replace the first, nor its level.
        init("ignored", LevelFilter::Debug);
        assert!(!log::log_enabled!(log::Level::Debug));
    }
}
