//! Each function's log: the lines its guests send (the runtime's output, `START`/`END`/`REPORT`)
//! and the service's own lines about it, every one naming the function and, where there is
//! one, the environment: `NAME[N] line` for a guest's, `lambda-vm: NAME[N]: message` for the
//! service's. They go to stdout and, with `--log-dir`, to `DIR/NAME.log` as well. The guests'
//! lines, unprefixed, are also shown to the log tails (`X-Amz-Log-Type: Tail`), which want
//! them as the runtime wrote them.

use front_door::LogTails;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct FunctionLog {
    name: String,
    tails: LogTails,
    file: Option<Mutex<File>>,
}

impl FunctionLog {
    /// The log of function `name`; with `dir`, also appended to `dir/NAME.log`.
    pub fn new(name: &str, tails: LogTails, dir: Option<&Path>) -> std::io::Result<FunctionLog> {
        let file = match dir {
            Some(dir) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{name}.log")))?,
            )),
            None => None,
        };
        Ok(FunctionLog {
            name: name.to_owned(),
            tails,
            file,
        })
    }

    /// A line from environment `env`'s guest.
    pub fn guest(&self, env: u64, line: &str) {
        self.tails.line(line);
        self.write(&format!("{}[{env}] {line}", self.name));
    }

    /// The service's own line about environment `env` of the function, or (`None`) about the
    /// function.
    pub fn service(&self, env: Option<u64>, message: &str) {
        let line = match env {
            Some(env) => format!("lambda-vm: {}[{env}]: {message}", self.name),
            None => format!("lambda-vm: {}: {message}", self.name),
        };
        self.write(&line);
    }

    fn write(&self, line: &str) {
        // One write per line, so lines of several environments never interleave.
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        if let Some(file) = &self.file {
            let _ = file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_names_the_function_and_its_environment_and_the_tail_sees_the_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let tails = LogTails::default();
        let watch = tails.watch("r1");
        let log = FunctionLog::new("greeter", tails, Some(dir.path())).unwrap();
        log.service(Some(3), "scaled out");
        log.guest(3, "START RequestId: r1 Version: $LATEST");
        log.guest(3, "REPORT RequestId: r1\tDuration: 1 ms");
        log.service(None, "throttled");
        let written = std::fs::read_to_string(dir.path().join("greeter.log")).unwrap();
        assert_eq!(
            written,
            "lambda-vm: greeter[3]: scaled out\n\
             greeter[3] START RequestId: r1 Version: $LATEST\n\
             greeter[3] REPORT RequestId: r1\tDuration: 1 ms\n\
             lambda-vm: greeter: throttled\n"
        );
        let tail = String::from_utf8(watch.finish()).unwrap();
        assert!(tail.starts_with("START RequestId: r1 "), "{tail}");
    }
}
