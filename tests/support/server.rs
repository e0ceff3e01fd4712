//! A running `lambda-local` (local mode) with one runtime, driven over real HTTP.

use crate::peers::Launch;
use crate::{host_binary, require};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an invoke returned.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub function_error: Option<String>,
    pub request_id: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks that this is a failed invoke (200 with `X-Amz-Function-Error: Unhandled`) and
    /// returns its error JSON.
    pub fn unhandled_error(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(
            self.function_error.as_deref(),
            Some("Unhandled"),
            "{}",
            self.text()
        );
        self.json()
    }
}

/// A `lambda-local` child process. Dropping it stops the server and its runtime.
pub struct LocalServer {
    child: Child,
    pub invoke_addr: String,
    pub runtime_api_addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
}

impl LocalServer {
    /// Starts `lambda-local` for `launch` with extra flags, or `None` when the server is not built.
    /// The server's output is echoed to the test's output.
    pub fn start(launch: &Launch, extra_args: &[&str]) -> Option<LocalServer> {
        Self::spawn(launch, extra_args, true)
    }

    /// Like [`LocalServer::start`], but the server's output is only kept, not echoed.
    pub fn start_quiet(launch: &Launch, extra_args: &[&str]) -> Option<LocalServer> {
        Self::spawn(launch, extra_args, false)
    }

    fn spawn(launch: &Launch, extra_args: &[&str], echo: bool) -> Option<LocalServer> {
        let binary = require(host_binary("lambda-local"), "lambda-local")?;
        let mut command = Command::new(binary);
        command
            .arg("--runtime")
            .arg(&launch.runtime)
            .arg("--handler")
            .arg(&launch.handler)
            .arg("--task-root")
            .arg(&launch.task_root)
            .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"])
            .args(extra_args);
        for (key, value) in &launch.env {
            command.arg("--env").arg(format!("{key}={value}"));
        }
        Some(Self::from_command(command, "lambda-local", echo))
    }

    /// Starts a server binary that prints `<name>: listening invoke=ADDR [runtime-api=ADDR]` on
    /// stderr (`lambda-local`, `lambda-vm`) and serves the emulator's invoke endpoint.
    pub fn from_command(mut command: Command, name: &str, echo: bool) -> LocalServer {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));

        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stdout);
        let tag = name.to_owned();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if echo {
                    println!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });

        let err = child.stderr.take().expect("piped stderr");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{tag} stderr] {line}");
                }
                if let Some(rest) = line.strip_prefix(&format!("{tag}: listening ")) {
                    let _ = addr_tx.send(rest.to_owned());
                }
            }
        });
        let listening = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} printed its listening line"));
        let field = |name: &str| {
            listening
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .new_agent();
        LocalServer {
            invoke_addr: field("invoke="),
            runtime_api_addr: field("runtime-api="),
            child,
            stdout,
            agent,
        }
    }

    pub fn invoke_url(&self) -> String {
        format!(
            "http://{}{}",
            self.invoke_addr,
            proto::invoke_api::INVOKE_PATH
        )
    }

    /// A synchronous invoke with a raw body.
    pub fn invoke_raw(&self, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut request = self.agent.post(self.invoke_url());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send(body).expect("invoke request");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let function_error = header(proto::invoke_api::header::FUNCTION_ERROR);
        let request_id = header(proto::invoke_api::header::REQUEST_ID);
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .expect("read invoke reply");
        Reply {
            status,
            function_error,
            request_id,
            body,
        }
    }

    /// A synchronous invoke of a JSON event.
    pub fn invoke(&self, event: &serde_json::Value) -> Reply {
        self.invoke_raw(event.to_string().as_bytes(), &[])
    }

    /// Invokes `event` and checks that the function echoed it back without error.
    pub fn assert_echo(&self, event: &serde_json::Value) -> Reply {
        let reply = self.invoke(event);
        assert_eq!(reply.function_error, None, "{}", reply.text());
        assert_eq!(&reply.json(), event);
        reply
    }

    /// Every line the server has written to stdout so far (function logs and platform lines).
    pub fn logs(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until a stdout line satisfies `predicate`, and returns it.
    pub fn wait_for_log(&self, timeout: Duration, predicate: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| predicate(l)) {
                return line;
            }
            if start.elapsed() > timeout {
                panic!(
                    "no matching log line within {timeout:?}; logs: {:#?}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `REPORT` line of one request.
    pub fn report_for(&self, request_id: &str) -> String {
        let prefix = format!("REPORT RequestId: {request_id}");
        self.wait_for_log(Duration::from_secs(10), |l| l.starts_with(&prefix))
    }

    /// Panics unless the server process is still running.
    pub fn assert_alive(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            other => panic!("lambda-local is not running: {other:?}"),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl LocalServer {
    /// Sends SIGTERM and waits up to `timeout` for the server to exit; `None` if it did not
    /// (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SIGTERM lets the server stop its runtime (or power off its microVM) before it exits.
        let _ = crate::sigterm(self.child.id());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}
