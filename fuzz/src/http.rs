//! One HTTP connection in memory: the input's bytes are the client's side, served by rapid's
//! own connection code and handler, on a runtime whose clock is paused, so that a long poll or
//! a deadline ends as soon as nothing else can run instead of stalling the fuzzer.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::Request;
use http_server::{ConnectionLimits, Reply};
use lambda_local::LocalSandbox;
use rapid::{EnvironmentConfig, Handle, LogSink};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longer than any deadline in the server (virtual time: it costs nothing).
const CONNECTION_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// A runtime with a paused clock, for one input.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Where the environment's log lines go: nowhere (the fuzzer's output stays readable).
pub struct Discard;

impl LogSink for Discard {
    fn line(&self, _line: &str) {}
}

/// A function environment whose runtime is `runtime` with `args`; the Runtime API address it
/// is given is never dialled by the targets' runtimes.
pub fn environment(runtime: &str, args: &[&str], log: Arc<dyn LogSink>) -> Handle {
    let mut config = EnvironmentConfig::new(runtime.into());
    config.runtime_args = args.iter().map(|a| a.to_string()).collect();
    let addr = "127.0.0.1:9".parse().expect("address");
    Handle::new(config, addr, log, None)
}

/// [`environment`] behind the invoke API, as `lambda-local` serves it.
pub fn local_sandbox(runtime: &str, args: &[&str], log: Arc<dyn LogSink>) -> LocalSandbox {
    let handle = environment(runtime, args, log);
    let function = front_door::Function::new(&proto::FunctionConfig::with_handler("handler"));
    LocalSandbox { handle, function }
}

/// Sends `request` on one connection served by `handler` and returns the server's bytes. The
/// client half-closes after sending, as `nc -N` does.
pub async fn exchange<H, F>(request: Bytes, limits: ConnectionLimits, handler: H) -> Vec<u8>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(http_server::serve_connection(server, None, limits, handler));
    let (mut reader, mut writer) = tokio::io::split(client);
    let send = async move {
        let _ = writer.write_all(&request).await;
        let _ = writer.shutdown().await;
        writer
    };
    let mut response = Vec::new();
    let receive = reader.read_to_end(&mut response);
    let both = async { tokio::join!(send, receive) };
    let _ = tokio::time::timeout(CONNECTION_LIMIT, both).await;
    served.abort();
    response
}

/// What every answer must look like: nothing, or HTTP/1.x responses (hyper answers an HTTP/1.0
/// request in kind).
pub fn assert_http(response: &[u8]) {
    assert!(
        response.is_empty()
            || response.starts_with(b"HTTP/1.1 ")
            || response.starts_with(b"HTTP/1.0 "),
        "{}",
        String::from_utf8_lossy(&response[..response.len().min(200)])
    );
}
