//! A running `lambda-local` (local mode) with one runtime, driven over real HTTP: invokes, and
//! Runtime API calls as a runtime would make them (or a misbehaving one); raw TCP for what is not
//! HTTP at all.

use crate::peers::Launch;
use crate::{host_binary, require, wait_for};
use proto::readiness::Listening;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the Runtime API's routes are, on its address.
pub const RUNTIME_API_PATH: &str = "/2018-06-01/runtime";

/// What a request returned.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// `X-Amz-Function-Error`, set on a failed invoke.
    pub function_error: Option<String>,
    /// `X-Amzn-RequestId`, set on every invoke answer.
    pub request_id: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request id, which every invoke answer must carry.
    pub fn id(&self) -> String {
        self.request_id
            .clone()
            .unwrap_or_else(|| panic!("no X-Amzn-RequestId on {}: {}", self.status, self.text()))
    }

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
    stderr: Arc<Mutex<Vec<String>>>,
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
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{tag} stderr] {line}");
                }
                if let Some(listening) = Listening::parse(&tag, &line) {
                    let _ = addr_tx.send(listening);
                }
                err_sink.lock().unwrap().push(line);
            }
        });
        let listening = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} printed its listening line"));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .new_agent();
        LocalServer {
            invoke_addr: listening.invoke.to_string(),
            runtime_api_addr: listening
                .runtime_api
                .map(|a| a.to_string())
                .unwrap_or_default(),
            child,
            stdout,
            stderr,
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
        send(&self.agent, "POST", &self.invoke_url(), headers, body)
    }

    /// An invoke on a thread of its own, for while the test plays the runtime.
    pub fn invoke_in_background(&self, body: &[u8], headers: &[(&str, &str)]) -> JoinHandle<Reply> {
        let (agent, url, body) = (self.agent.clone(), self.invoke_url(), body.to_vec());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        std::thread::spawn(move || {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            send(&agent, "POST", &url, &headers, &body)
        })
    }

    /// The Lambda API's invoke URL of the function `name` (a name, `name:qualifier` or ARN).
    pub fn function_url(&self, name: &str) -> String {
        format!(
            "http://{}/2015-03-31/functions/{name}/invocations",
            self.invoke_addr
        )
    }

    /// Any request to `url`, on a thread of its own.
    pub fn request_in_background(&self, method: &str, url: &str, body: &[u8]) -> JoinHandle<Reply> {
        let (agent, method, url, body) = (
            self.agent.clone(),
            method.to_owned(),
            url.to_owned(),
            body.to_vec(),
        );
        std::thread::spawn(move || send(&agent, &method, &url, &[], &body))
    }

    /// Any request to `url`.
    pub fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        send(&self.agent, method, url, headers, body)
    }

    /// A Runtime API call (`path` under [`RUNTIME_API_PATH`]), as the runtime would make it.
    pub fn runtime_api(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let url = format!("http://{}{RUNTIME_API_PATH}{path}", self.runtime_api_addr);
        send(&self.agent, method, &url, headers, body)
    }

    /// `GET /invocation/next` on a thread of its own, since it waits for an invoke.
    pub fn poll_next(&self) -> JoinHandle<Reply> {
        let agent = self.agent.clone();
        let url = format!(
            "http://{}{RUNTIME_API_PATH}/invocation/next",
            self.runtime_api_addr
        );
        std::thread::spawn(move || send(&agent, "GET", &url, &[], b""))
    }

    /// A synchronous invoke of a JSON event.
    pub fn invoke(&self, event: &serde_json::Value) -> Reply {
        self.invoke_raw(event.to_string().as_bytes(), &[])
    }

    /// Invokes with `body` and checks that the function echoed it back byte for byte.
    pub fn assert_echo_bytes(&self, body: &[u8]) -> Reply {
        let reply = self.invoke_raw(body, &[]);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.function_error, None, "{}", reply.text());
        assert_eq!(reply.body, body, "{}", reply.text());
        reply
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

    /// The stderr lines so far (the service's own lines: listening, ready, stopping).
    pub fn errors(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stderr line satisfies `predicate`, and returns it.
    pub fn wait_for_error_line(
        &self,
        timeout: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> String {
        wait_for(timeout, || self.errors().into_iter().find(|l| predicate(l))).unwrap_or_else(
            || {
                panic!(
                    "no matching stderr line within {timeout:?}; stderr: {:#?}",
                    self.errors()
                )
            },
        )
    }

    /// How many stdout lines so far start with `prefix`.
    pub fn count_logs(&self, prefix: &str) -> usize {
        self.logs().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Waits until a stdout line satisfies `predicate`, and returns it.
    pub fn wait_for_log(&self, timeout: Duration, predicate: impl Fn(&str) -> bool) -> String {
        wait_for(timeout, || self.logs().into_iter().find(|l| predicate(l))).unwrap_or_else(|| {
            panic!(
                "no matching log line within {timeout:?}; logs: {:#?}",
                self.logs()
            )
        })
    }

    /// Waits until at least `count` stdout lines satisfy `predicate`, and returns them all: for
    /// lines that follow the answer they belong to (the platform's `INIT_REPORT`, `REPORT`).
    pub fn wait_for_logs(
        &self,
        timeout: Duration,
        count: usize,
        predicate: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let matching =
            || -> Vec<String> { self.logs().into_iter().filter(|l| predicate(l)).collect() };
        wait_for(timeout, || Some(matching()).filter(|m| m.len() >= count)).unwrap_or_else(|| {
            panic!(
                "not {count} matching log lines within {timeout:?}; logs: {:#?}",
                self.logs()
            )
        })
    }

    /// The `REPORT` line of one request.
    pub fn report_for(&self, request_id: &str) -> String {
        self.report_for_within(request_id, Duration::from_secs(10))
    }

    /// The `REPORT` line of one request, waiting up to `timeout` for it.
    pub fn report_for_within(&self, request_id: &str, timeout: Duration) -> String {
        let prefix = format!("REPORT RequestId: {request_id}");
        self.wait_for_log(timeout, |l| l.starts_with(&prefix))
    }

    /// Panics unless the server process is still running.
    pub fn assert_alive(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            other => panic!("lambda-local is not running: {other:?}"),
        }
    }

    /// Panics unless the server still runs and still answers HTTP (404 for an unknown path).
    pub fn assert_serving(&mut self) {
        self.assert_alive();
        let reply = self.request(
            "GET",
            &format!("http://{}/nope", self.invoke_addr),
            &[],
            b"",
        );
        assert_eq!(reply.status, 404, "{}", reply.text());
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
        let status = wait_for(timeout, || self.child.try_wait().ok().flatten());
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl LocalServer {
    /// Kills the server with SIGKILL, as a crash would, and reaps it: it cleans up nothing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` and leaves the server running (to be waited for with
    /// [`LocalServer::terminate`]).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// One request on `agent`. Any status is a reply; a request that gets no answer fails the test.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let mut response = agent
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let function_error = header(proto::invoke_api::header::FUNCTION_ERROR);
    let request_id = header(proto::invoke_api::header::REQUEST_ID);
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the reply: {e}"));
    Reply {
        status,
        function_error,
        request_id,
        headers,
        body,
    }
}

/// Opens a connection to `addr` and writes `bytes` as they are, for requests no HTTP client
/// would send (cut short, or not HTTP at all). Dropping the stream hangs up.
pub fn send_raw(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    stream
}
