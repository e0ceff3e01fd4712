//! Lambda extensions on this library: a separate executable in `/opt/extensions` (an external
//! extension) registers with the Extensions API, then loops on its next event; it may subscribe
//! to the Telemetry API for the function's logs and the platform's records, which arrive at a
//! listener of its own.
//!
//! ```no_run
//! use bootstrap::extension::{Event, EventType, Extension};
//!
//! fn main() -> std::process::ExitCode {
//!     let extension = match Extension::register(&[EventType::Invoke, EventType::Shutdown]) {
//!         Ok(extension) => extension,
//!         Err(e) => {
//!             eprintln!("cannot register: {e}");
//!             return std::process::ExitCode::FAILURE;
//!         }
//!     };
//!     extension.run(|event| {
//!         if let Event::Invoke { request_id, .. } = event {
//!             println!("saw {request_id}");
//!         }
//!         Ok(())
//!     })
//! }
//! ```

use crate::config;
use crate::error::Error;
use crate::handler::HandlerError;
use proto::extensions_api::{header, RegisterRequest, RegisterResponse, PREFIX};
use proto::runtime_api::{ErrorRequest, ErrorResponse};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use ureq::http::Request;

pub use proto::extensions_api::{Event, EventType, ShutdownReason, Tracing};
pub use proto::telemetry_api::{Buffering, Category, Event as TelemetryEvent};

/// Replies are small JSON documents; anything longer is cut off.
const REPLY_LIMIT: u64 = 64 * 1024;
/// A telemetry batch is at most 1 MiB (Lambda's largest `maxBytes`), with room for the array.
const BATCH_LIMIT: usize = 2 * 1024 * 1024;

/// A registered extension.
#[derive(Debug, Clone)]
pub struct Extension {
    agent: ureq::Agent,
    base: String,
    id: String,
    /// What registration answered: the function's name, version and handler.
    pub function: RegisterResponse,
}

impl Extension {
    /// Registers this executable as an external extension (named after its file, as Lambda
    /// requires) with the Extensions API named by `AWS_LAMBDA_RUNTIME_API`.
    pub fn register(events: &[EventType]) -> Result<Extension, Error> {
        let name = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        Extension::register_named(&config::runtime_api_from_env()?, &name, events)
    }

    /// Registers under `name` with the Extensions API at `address` (`host:port`): an external
    /// extension's name is its file name; any other name registers an internal extension (from
    /// the runtime's process, during init, for `INVOKE` only).
    pub fn register_named(
        address: &str,
        name: &str,
        events: &[EventType],
    ) -> Result<Extension, Error> {
        let address = address.trim().trim_start_matches("http://");
        if address.is_empty() || address.contains(['/', ' ']) || !address.contains(':') {
            return Err(Error::InvalidAddress(address.to_owned()));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // `event/next` waits for as long as the environment lives.
            .timeout_global(None)
            .max_redirects(0)
            .build()
            .new_agent();
        let mut extension = Extension {
            agent,
            base: format!("http://{address}"),
            id: String::new(),
            function: RegisterResponse {
                function_name: String::new(),
                function_version: String::new(),
                handler: String::new(),
                account_id: None,
            },
        };
        let body = serde_json::to_vec(&RegisterRequest {
            events: events.to_vec(),
        })
        .unwrap_or_default();
        let (headers, reply) = extension.call(
            "POST",
            "/register",
            &[(header::NAME, name), (header::ACCEPT_FEATURE, "accountId")],
            &body,
        )?;
        extension.id = headers.unwrap_or_default();
        extension.function = serde_json::from_slice(&reply).map_err(|e| Error::Status {
            method: "POST",
            endpoint: format!("{PREFIX}/register"),
            status: 200,
            error_type: String::new(),
            message: format!("an answer that is not a registration: {e}"),
        })?;
        Ok(extension)
    }

    /// The `Lambda-Extension-Identifier` the registration handed out.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the next event: the extension is done with the last one.
    pub fn next_event(&self) -> Result<Event, Error> {
        let (_, body) = self.call("GET", "/event/next", &[], b"")?;
        serde_json::from_slice(&body).map_err(|e| Error::Status {
            method: "GET",
            endpoint: format!("{PREFIX}/event/next"),
            status: 200,
            error_type: String::new(),
            message: format!("an answer that is not an event: {e}"),
        })
    }

    /// Reports that the extension failed to initialize (the environment's init fails with
    /// `error`'s type); it should exit next.
    pub fn init_error(&self, error: &ErrorRequest) -> Result<(), Error> {
        self.post_error("/init/error", error)
    }

    /// Reports that the extension is about to exit because of `error`.
    pub fn exit_error(&self, error: &ErrorRequest) -> Result<(), Error> {
        self.post_error("/exit/error", error)
    }

    /// Subscribes to the Telemetry API (during init) for `types`, buffered as `buffering` says:
    /// the batches go to a listener of this process on the sandbox's loopback, which
    /// [`TelemetryListener::serve`] then reads.
    pub fn subscribe_telemetry(
        &self,
        types: &[Category],
        buffering: Buffering,
    ) -> Result<TelemetryListener, Error> {
        let endpoint = proto::telemetry_api::TELEMETRY_PATH.to_owned();
        let io_error = |source: io::Error| Error::Stream {
            endpoint: endpoint.clone(),
            source,
        };
        let listener = TcpListener::bind(("0.0.0.0", 0)).map_err(io_error)?;
        let port = listener.local_addr().map_err(io_error)?.port();
        let subscription = serde_json::json!({
            "schemaVersion": "2022-12-13",
            "types": types,
            "buffering": buffering,
            "destination": {"protocol": "HTTP", "URI": format!("http://sandbox.localdomain:{port}")},
        });
        let url = format!("{}{endpoint}", self.base);
        self.request("PUT", &url, &[], subscription.to_string().as_bytes())?;
        Ok(TelemetryListener { listener, port })
    }

    /// The loop of an extension: each event to `on_event`, until `SHUTDOWN` (which it gets
    /// too). A failing handler reports an exit error. Returns the process's exit code.
    pub fn run(self, mut on_event: impl FnMut(&Event) -> Result<(), HandlerError>) -> ExitCode {
        loop {
            let event = match self.next_event() {
                Ok(event) => event,
                Err(e) => {
                    eprintln!("extension: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(error) = on_event(&event) {
                if let Err(e) = self.exit_error(&error.to_request()) {
                    eprintln!("extension: reporting the exit error failed: {e}");
                }
                return ExitCode::FAILURE;
            }
            if let Event::Shutdown { .. } = event {
                return ExitCode::SUCCESS;
            }
        }
    }

    fn post_error(&self, path: &str, error: &ErrorRequest) -> Result<(), Error> {
        let error_type = crate::client::header_safe(&error.error_type);
        self.call(
            "POST",
            path,
            &[(header::FUNCTION_ERROR_TYPE, &error_type)],
            &error.to_json(),
        )
        .map(|_| ())
    }

    /// One call under the Extensions API's prefix: the answer's identifier header and body.
    fn call(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Option<String>, Vec<u8>), Error> {
        let url = format!("{}{PREFIX}{path}", self.base);
        self.request(method, &url, headers, body)
    }

    fn request(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Option<String>, Vec<u8>), Error> {
        let endpoint = url.trim_start_matches(&self.base).to_owned();
        let transport = |source: ureq::Error| Error::Transport {
            method,
            endpoint: endpoint.clone(),
            source: Box::new(source),
        };
        let mut request = Request::builder().method(method).uri(url);
        if !self.id.is_empty() {
            request = request.header(header::IDENTIFIER, &self.id);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(|e| transport(e.into()))?;
        let mut reply = self.agent.run(request).map_err(transport)?;
        let id = reply
            .headers()
            .get(header::IDENTIFIER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = reply.status().as_u16();
        let body = reply
            .body_mut()
            .with_config()
            .limit(REPLY_LIMIT)
            .read_to_vec()
            .map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok((id, body));
        }
        let (error_type, message) = match serde_json::from_slice::<ErrorResponse>(&body) {
            Ok(reply) => (reply.error_type, reply.error_message),
            Err(_) => (String::new(), String::from_utf8_lossy(&body).into_owned()),
        };
        Err(Error::Status {
            method,
            endpoint,
            status,
            error_type,
            message,
        })
    }
}

/// Where the Telemetry API delivers an extension's batches.
#[derive(Debug)]
pub struct TelemetryListener {
    listener: TcpListener,
    port: u16,
}

impl TelemetryListener {
    /// The port it listens on (the subscription's destination).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Hands each batch to `on_batch`, for as long as the process lives (run it on a thread of
    /// its own). Every delivery is answered `200 OK`; one that is not a batch of telemetry
    /// events is answered `400` and dropped.
    pub fn serve(self, mut on_batch: impl FnMut(Vec<TelemetryEvent>)) -> io::Result<()> {
        loop {
            let (stream, _) = self.listener.accept()?;
            // One connection at a time: the platform keeps one open per subscriber.
            if let Err(e) = serve_connection(stream, &mut on_batch) {
                eprintln!("extension: a telemetry delivery broke off: {e}");
            }
        }
    }
}

/// Reads deliveries (`POST` with a `Content-Length` body) until the connection closes.
fn serve_connection(
    stream: TcpStream,
    on_batch: &mut impl FnMut(Vec<TelemetryEvent>),
) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = None;
        let mut first = true;
        loop {
            let mut line = String::new();
            if reader.by_ref().take(64 * 1024).read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let Some(length) = length.filter(|&n| n <= BATCH_LIMIT) else {
            reader.get_mut().write_all(
                b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        };
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let answer: &[u8] = match serde_json::from_slice::<Vec<TelemetryEvent>>(&body) {
            Ok(batch) => {
                on_batch(batch);
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            }
            Err(_) => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        };
        reader.get_mut().write_all(answer)?;
    }
}
