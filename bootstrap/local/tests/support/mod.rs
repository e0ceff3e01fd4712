//! A real `lambda-local` process for the tests, and a minimal HTTP/1.1 client that can also
//! misbehave (hang up, send garbage) on purpose.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";
pub const RUNTIME: &str = "/2018-06-01/runtime";

/// The shell runtime every ordinary test runs.
pub fn echo_runtime() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/runtimes/echo.sh")
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(2000)]).into_owned()
    }

    /// The error JSON of a failed invoke: 200 with `X-Amz-Function-Error: Unhandled`.
    pub fn function_error(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(
            self.header("X-Amz-Function-Error"),
            Some("Unhandled"),
            "{}",
            self.text()
        );
        self.json()
    }

    pub fn request_id(&self) -> String {
        self.header("X-Amzn-RequestId")
            .expect("X-Amzn-RequestId on every invoke answer")
            .to_owned()
    }
}

/// Sends one request on a fresh connection and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    // The server may answer and close before reading a refused body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw).unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A running `lambda-local`. Dropping it kills it (its runtime dies with it).
pub struct Server {
    child: Child,
    pub invoke_addr: String,
    pub api_addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `lambda-local` running the shell echo runtime, with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let runtime = echo_runtime();
        let root = runtime
            .parent()
            .expect("runtimes dir")
            .display()
            .to_string();
        let script = runtime.display().to_string();
        let mut args = vec![
            "--runtime",
            "/bin/sh",
            "--arg",
            &script,
            "--task-root",
            &root,
        ];
        args.extend_from_slice(extra);
        Server::start_raw(&args)
    }

    /// `lambda-local` whose runtime is a placeholder that never polls, started at once
    /// (`init_type` is eager): the test itself plays the runtime over HTTP.
    pub fn start_for_manual_runtime(init_type: &str, extra: &[&str]) -> Server {
        let mut args = vec![
            "--runtime",
            "/bin/sleep",
            "--arg",
            "600",
            "--init-type",
            init_type,
        ];
        args.extend_from_slice(extra);
        Server::start_raw(&args)
    }

    pub fn start_raw(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lambda-local"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lambda-local");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stdout);
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[lambda-local] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[lambda-local stderr] {line}");
                if let Some(rest) = line.strip_prefix("lambda-local: listening ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let listening = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the listening line");
        let field = |name: &str| {
            listening
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {listening:?}"))
                .to_owned()
        };
        Server {
            invoke_addr: field("invoke="),
            api_addr: field("runtime-api="),
            child,
            stdout,
        }
    }

    pub fn invoke(&self, body: &str) -> Response {
        self.invoke_with(&[], body.as_bytes())
    }

    pub fn invoke_with(&self, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(&self.invoke_addr, "POST", INVOKE_PATH, headers, body)
    }

    /// An invoke that must echo its event.
    pub fn assert_echo(&self, body: &str) -> Response {
        let reply = self.invoke(body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.header("X-Amz-Function-Error"),
            None,
            "{}",
            reply.text()
        );
        assert_eq!(reply.body, body.as_bytes());
        reply
    }

    /// A Runtime API call, as the runtime would make it.
    pub fn api(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(
            &self.api_addr,
            method,
            &format!("{RUNTIME}{path}"),
            headers,
            body,
        )
    }

    /// `GET /invocation/next` on a thread, since it long-polls.
    pub fn poll_next(&self) -> std::thread::JoinHandle<Response> {
        let addr = self.api_addr.clone();
        std::thread::spawn(move || {
            request(
                &addr,
                "GET",
                &format!("{RUNTIME}/invocation/next"),
                &[],
                b"",
            )
        })
    }

    /// A synchronous invoke on a thread.
    pub fn invoke_in_background(&self, body: &'static str) -> std::thread::JoinHandle<Response> {
        let addr = self.invoke_addr.clone();
        std::thread::spawn(move || request(&addr, "POST", INVOKE_PATH, &[], body.as_bytes()))
    }

    pub fn logs(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn count_logs(&self, prefix: &str) -> usize {
        self.logs().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Waits for a log line matching `pred`, and returns it.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what}; logs: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The REPORT line of one request.
    pub fn report_for(&self, request_id: &str) -> String {
        let prefix = format!("REPORT RequestId: {request_id}\t");
        self.wait_for_log(&prefix, |l| l.starts_with(&prefix))
    }

    /// Panics unless the server still runs and serves.
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "lambda-local exited"
        );
        let reply = request(&self.invoke_addr, "GET", "/nope", &[], b"");
        assert_eq!(reply.status, 404);
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid fits in pid_t")
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "lambda-local ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet).
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rapid-test-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
