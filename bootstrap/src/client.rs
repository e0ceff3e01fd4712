//! A blocking client of the Lambda Runtime API.

use crate::config::{self, Config};
use crate::context::Context;
use crate::error::Error;
use proto::runtime_api::{header, ErrorRequest, ErrorResponse, Route, SYNC_PAYLOAD_LIMIT};
use std::sync::Arc;
use ureq::http::{Request, Response};
use ureq::{AsSendBody, Body};

/// Room above the payload limit, so that the server (not this client) is the one that decides
/// what is too large: an event exactly at the limit must still be read.
const EVENT_LIMIT_MARGIN: u64 = 64 * 1024;
/// Replies other than events are small JSON documents; anything longer is cut off.
const REPLY_LIMIT: u64 = 64 * 1024;

/// One invocation handed out by `/next`.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub context: Context,
    pub event: Vec<u8>,
}

/// A connection to the Runtime API at one `host:port`.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    config: Arc<Config>,
}

impl Client {
    /// A client of the Runtime API at `address` (`host:port`, as in `AWS_LAMBDA_RUNTIME_API`),
    /// handing out contexts that carry `config`.
    pub fn new(address: &str, config: Config) -> Result<Client, Error> {
        let address = address.trim();
        let host_port = address.strip_prefix("http://").unwrap_or(address);
        if host_port.is_empty() || host_port.contains(['/', ' ']) || !host_port.contains(':') {
            return Err(Error::InvalidAddress(address.to_owned()));
        }
        let agent = ureq::Agent::config_builder()
            // Error replies carry a JSON body worth reading, so a status is not a transport error.
            .http_status_as_error(false)
            // `/next` blocks until an invocation arrives, which may be hours: no global timeout.
            .timeout_global(None)
            .max_redirects(0)
            .user_agent(concat!("bootstrap/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Client {
            agent,
            base: format!("http://{host_port}"),
            config: Arc::new(config),
        })
    }

    /// A client of the Runtime API named by `AWS_LAMBDA_RUNTIME_API`, with the function
    /// configuration of the other reserved variables.
    pub fn from_env() -> Result<Client, Error> {
        let address = config::runtime_api_from_env()?;
        Client::new(&address, Config::from_env()?)
    }

    /// The Runtime API's `host:port`.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// The function configuration every context carries.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Waits for the next invocation (`GET /invocation/next`), however long that takes.
    pub fn next(&self) -> Result<Invocation, Error> {
        let route = Route::Next;
        let mut reply = self.send(&route, &[], ())?;
        let headers = reply.headers();
        let context = Context::from_headers(
            |name| headers.get(name).map(|v| v.as_bytes()),
            Arc::clone(&self.config),
        )
        .map_err(|(request_id, source)| Error::MalformedInvocation { request_id, source })?;
        let event = reply
            .body_mut()
            .with_config()
            .limit(SYNC_PAYLOAD_LIMIT as u64 + EVENT_LIMIT_MARGIN)
            .read_to_vec()
            .map_err(|source| Error::EventBody {
                request_id: context.request_id.clone(),
                source: Box::new(source),
            })?;
        Ok(Invocation { context, event })
    }

    /// Posts the handler's result for `request_id`.
    pub fn respond(&self, request_id: &str, response: &[u8]) -> Result<(), Error> {
        let route = Route::Response(request_id.to_owned());
        self.send(&route, &[], response).map(drain)
    }

    /// Posts the handler's failure for `request_id`.
    pub fn invocation_error(&self, request_id: &str, error: &ErrorRequest) -> Result<(), Error> {
        self.post_error(&Route::Error(request_id.to_owned()), error)
    }

    /// Reports that init failed; the runtime is expected to exit afterwards.
    pub fn init_error(&self, error: &ErrorRequest) -> Result<(), Error> {
        self.post_error(&Route::InitError, error)
    }

    /// Waits for the environment to be restored from a SnapStart snapshot
    /// (`GET /restore/next`); the snapshot is taken while this call is blocked.
    pub fn restore_next(&self) -> Result<(), Error> {
        self.send(&Route::RestoreNext, &[], ()).map(drain)
    }

    /// Reports that the after-restore hook failed; the runtime is expected to exit afterwards.
    pub fn restore_error(&self, error: &ErrorRequest) -> Result<(), Error> {
        self.post_error(&Route::RestoreError, error)
    }

    fn post_error(&self, route: &Route, error: &ErrorRequest) -> Result<(), Error> {
        let error_type = header_safe(&error.error_type);
        let headers = [
            ("Content-Type", "application/json"),
            (header::FUNCTION_ERROR_TYPE, error_type.as_ref()),
        ];
        self.send(route, &headers, &error.to_json()[..]).map(drain)
    }

    /// Sends one request to `route` and turns anything but a 2xx answer into an [`Error`].
    fn send(
        &self,
        route: &Route,
        headers: &[(&str, &str)],
        body: impl AsSendBody,
    ) -> Result<Response<Body>, Error> {
        let path = route.path();
        let method = route.method();
        let transport = |source: ureq::Error| Error::Transport {
            method,
            endpoint: path.clone(),
            source: Box::new(source),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(|e| transport(e.into()))?;
        let reply = self.agent.run(request).map_err(transport)?;
        if reply.status().is_success() {
            return Ok(reply);
        }
        Err(status_error(method, path, reply))
    }
}

/// Reads the rest of a reply so its connection can be reused; its content is of no interest.
fn drain(mut reply: Response<Body>) {
    let _ = reply
        .body_mut()
        .with_config()
        .limit(REPLY_LIMIT)
        .read_to_vec();
}

fn status_error(method: &'static str, endpoint: String, mut reply: Response<Body>) -> Error {
    let status = reply.status().as_u16();
    let body = reply
        .body_mut()
        .with_config()
        .limit(REPLY_LIMIT)
        .read_to_vec()
        .unwrap_or_default();
    let (error_type, message) = match serde_json::from_slice::<ErrorResponse>(&body) {
        Ok(reply) => (reply.error_type, reply.error_message),
        Err(_) => (String::new(), String::from_utf8_lossy(&body).into_owned()),
    };
    Error::Status {
        method,
        endpoint,
        status,
        error_type,
        message,
    }
}

/// A header value can only hold visible ASCII and spaces; anything else in a function's error
/// type would make the request unsendable, so it is replaced rather than allowed to fail the post.
pub(crate) fn header_safe(value: &str) -> std::borrow::Cow<'_, str> {
    if value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return value.into();
    }
    value
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert!(Client::new("127.0.0.1:9001", Config::default()).is_ok());
        assert!(Client::new("http://localhost:9001", Config::default()).is_ok());
        for bad in ["", "localhost", "127.0.0.1:9001/x", "a b:1"] {
            assert!(matches!(
                Client::new(bad, Config::default()),
                Err(Error::InvalidAddress(_))
            ));
        }
    }

    #[test]
    fn error_types_are_made_header_safe() {
        assert_eq!(header_safe("Runtime.ExitError"), "Runtime.ExitError");
        assert_eq!(header_safe("bad\r\nX-Injected: 1"), "bad__X-Injected: 1");
        assert_eq!(header_safe("Fehlerü"), "Fehler_");
    }
}
