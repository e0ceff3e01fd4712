//! The worker as an operating-system process: started with its stdin and stdout as the
//! protocol channel, tied to this process's life, and always reaped.

use super::protocol::{self, Frame, ReadError};
use std::io::{self, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a worker that hung up gets to exit by itself before it is killed, so that its own
/// exit status (rather than our SIGKILL) is what the error reports.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// A running worker. Dropping it kills and reaps the process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    /// Starts `program`. Its stderr is ours, so that what it logs is the function's log.
    ///
    /// It stays in our process group, so a platform that kills the group kills it too, and it
    /// gets SIGKILL if we die first, so it can never outlive the runtime that feeds it.
    pub fn spawn(program: &Path) -> io::Result<Process> {
        let parent = std::process::id();
        let mut command = Command::new(program);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(protocol::VERSION_ENV, protocol::VERSION)
            // The runtime loop sets the trace id of the invocation at hand in our environment; a
            // worker restarted later would inherit a stale one. Workers get it per invocation.
            .env_remove(proto::env::TRACE_ID);
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // functions may be called. `prctl` and `getppid` are system calls and nothing here
        // allocates (`from_raw_os_error` and `last_os_error` build the error in place).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl, in which case no signal
                // will ever come; the child was reparented and must not run on alone.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the worker's stdio was not piped"));
        };
        Ok(Process {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Sends one frame to the worker's stdin.
    pub fn send(&mut self, verb: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        protocol::write_frame(&mut self.stdin, verb, headers, body)
    }

    /// Reads the worker's next frame from its stdout.
    pub fn receive(&mut self) -> Result<Frame, ReadError> {
        protocol::read_frame(&mut self.stdout)
    }

    /// Ends a worker that hung up or misbehaved and says how it ended, e.g. `exit status: 3`.
    /// A worker that closed its pipes but lives on is killed after a short grace period.
    pub fn end(&mut self) -> String {
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => break,
                Err(e) => return format!("unknown exit status ({e})"),
            }
        }
        self.kill()
    }

    /// Kills the worker at once and reaps it.
    pub fn kill(&mut self) -> String {
        // An error means the worker already exited; `wait` below still reaps it.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown exit status ({e})"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
