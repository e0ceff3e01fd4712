//! A minimal `log` backend: `vmm: LEVEL message` on stderr. The VMM logs little (device
//! misbehaviour, guest errors), so filtering by level is all it needs; the API's `PUT /logger`
//! can send it to a file and change what each line shows ([`configure`]).

use log::{LevelFilter, Log, Metadata, Record};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

struct Sink {
    /// `None`: stderr.
    file: Option<File>,
    show_level: bool,
    show_origin: bool,
}

struct Logger {
    sink: Mutex<Sink>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = String::from("vmm:");
        if sink.show_level {
            line.push_str(&format!(" {}", record.level()));
        }
        if sink.show_origin {
            let file = record.file().unwrap_or("?");
            line.push_str(&format!(" {file}:{}", record.line().unwrap_or(0)));
        }
        line.push_str(&format!(" {}\n", record.args()));
        // A log that cannot be written is not worth stopping for.
        let _ = match &mut sink.file {
            Some(file) => file.write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger {
    sink: Mutex::new(Sink {
        file: None,
        show_level: true,
        show_origin: false,
    }),
};

/// Installs the logger; a second call only changes the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Changes the level, where lines go (a file appended to, or a named pipe), and whether each
/// shows its level and its source file and line; `None` leaves a setting as it is.
pub fn configure(
    level: Option<LevelFilter>,
    path: Option<&Path>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
) -> std::io::Result<()> {
    let file = path
        .map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        })
        .transpose()?;
    let _ = log::set_logger(&LOGGER);
    let mut sink = LOGGER.sink.lock().unwrap_or_else(|e| e.into_inner());
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
