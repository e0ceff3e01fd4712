//! The networking tests' function: fetches pages over plain TCP (an HTTP/1.0 GET, no DNS: the
//! URLs hold addresses) and says how each fetch went and how long it took.
//!
//! With `NET_INIT_CONNECT=ADDRESS:PORT` it opens a connection during init and keeps it, so a
//! SnapStart test can see what becomes of a connection that a restored copy inherited from the
//! snapshot: `{"kept": true}` writes a line on it and reads the answer.
//!
//! Events: `{"fetch": ["http://ADDRESS:PORT/PATH", ...], "kept": true, "sleep_ms": N,
//! "timeout_ms": N}`, every key optional but one of `fetch` and `kept`; the reply has
//! `results` (one per URL) and `kept`.

use bootstrap::{Context, Function, HandlerError};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

struct Fetcher {
    /// The connection opened during init, or why there is none.
    kept: Result<TcpStream, String>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// `http://ADDRESS:PORT/PATH` as the address and the path.
fn parse_url(url: &str) -> Result<(SocketAddr, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let address = authority
        .parse()
        .map_err(|e| format!("{authority:?} is not ADDRESS:PORT: {e}"))?;
    Ok((address, if path.is_empty() { "/" } else { path }))
}

/// One GET on a new connection: the status line and body size, with the connect and total
/// times; or the error's kind and message.
fn fetch(url: &str, timeout: Duration) -> Value {
    let started = Instant::now();
    let (address, path) = match parse_url(url) {
        Ok(parsed) => parsed,
        Err(e) => return json!({"url": url, "ok": false, "error": "BadUrl", "message": e}),
    };
    let failed = |e: std::io::Error, stage: &str| {
        json!({"url": url, "ok": false, "stage": stage, "error": format!("{:?}", e.kind()),
               "message": e.to_string(), "total_ms": ms(started)})
    };
    let mut stream = match TcpStream::connect_timeout(&address, timeout) {
        Ok(stream) => stream,
        Err(e) => return failed(e, "connect"),
    };
    let connect_ms = ms(started);
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut response = Vec::new();
    let exchanged = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .and_then(|()| stream.read_to_end(&mut response));
    if let Err(e) = exchanged {
        return failed(e, "exchange");
    }
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body_bytes = text.find("\r\n\r\n").map_or(0, |i| response.len() - i - 4);
    json!({"url": url, "ok": status.contains(" 200 "), "status": status,
           "body_bytes": body_bytes, "connect_ms": connect_ms, "total_ms": ms(started)})
}

impl Fetcher {
    /// Writes a line on the kept connection and waits for the answer: `data` (the peer still
    /// knows the connection), `reset`, `closed`, or `timeout` (nobody answers: what must not
    /// happen to a connection that cannot survive a restore).
    fn use_kept(&mut self, timeout: Duration) -> Value {
        let stream = match &mut self.kept {
            Ok(stream) => stream,
            Err(why) => return json!({"outcome": "none", "message": why}),
        };
        let started = Instant::now();
        let mut buffer = [0u8; 64];
        let outcome = stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.write_all(b"ping\n"))
            .and_then(|()| stream.read(&mut buffer));
        let (kept, message) = match outcome {
            Ok(0) => ("closed", String::new()),
            Ok(n) => ("data", String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                ("timeout", e.to_string())
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => ("reset", e.to_string()),
            Err(e) => ("error", e.to_string()),
        };
        json!({"outcome": kept, "message": message, "ms": ms(started)})
    }
}

impl Function for Fetcher {
    fn handle(&mut self, event: &[u8], _: &Context) -> Result<Vec<u8>, HandlerError> {
        let payload: Value = serde_json::from_slice(event)?;
        let timeout = payload
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let mut reply = serde_json::Map::new();
        // A wait first lets a test hold several environments busy at once.
        if let Some(sleep) = payload.get("sleep_ms").and_then(Value::as_u64) {
            std::thread::sleep(Duration::from_millis(sleep));
        }
        if payload.get("kept").is_some() {
            reply.insert("kept".into(), self.use_kept(timeout));
        }
        if let Some(urls) = payload.get("fetch").and_then(Value::as_array) {
            let results = urls
                .iter()
                .map(|url| fetch(url.as_str().unwrap_or_default(), timeout))
                .collect();
            reply.insert("results".into(), Value::Array(results));
        }
        if reply.is_empty() {
            return Err(HandlerError::new(
                "NetFetchError",
                "expected \"fetch\": [URL...] and/or \"kept\": true",
            ));
        }
        Ok(serde_json::to_vec(&reply)?)
    }
}

fn main() -> ExitCode {
    bootstrap::run(|| {
        let kept = match std::env::var("NET_INIT_CONNECT") {
            Ok(target) => target
                .parse::<SocketAddr>()
                .map_err(|e| format!("NET_INIT_CONNECT={target:?}: {e}"))
                .and_then(|address| {
                    TcpStream::connect_timeout(&address, DEFAULT_TIMEOUT)
                        .map_err(|e| format!("connecting to {address} during init: {e}"))
                }),
            Err(_) => Err("NET_INIT_CONNECT is not set".to_owned()),
        };
        if let Err(why) = &kept {
            eprintln!("net-fetch: no kept connection: {why}");
        }
        Ok(Fetcher { kept })
    })
}
