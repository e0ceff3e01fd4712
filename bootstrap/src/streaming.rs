//! Streamed responses (`Lambda-Runtime-Function-Response-Mode: streaming`): the handler writes
//! its response to a [`ResponseWriter`], and each write reaches the invoker as a chunk while the
//! handler goes on (`InvokeWithResponseStream`), up to Lambda's 20 MiB.
//!
//! The upload is a chunked `POST /invocation/{id}/response`; a handler that fails after it has
//! written something ends the upload with Lambda's error trailers
//! (`Lambda-Runtime-Function-Error-Type`, and `Lambda-Runtime-Function-Error-Body`: the error
//! JSON in base64). It is written on a plain TCP connection, because the HTTP client under the
//! rest of this library cannot send trailers.

use crate::context::Context;
use crate::error::Error;
use crate::handler::HandlerError;
use base64::Engine;
use proto::runtime_api::{header, ErrorRequest, Route, RESPONSE_MODE_STREAMING};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// A function whose response is streamed.
pub trait StreamingFunction {
    /// Handles one event, writing the response to `out` as it goes.
    fn handle(
        &mut self,
        event: &[u8],
        ctx: &Context,
        out: &mut ResponseWriter,
    ) -> Result<(), HandlerError>;

    /// Runs once before the SnapStart snapshot is taken, after init.
    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Runs once after the environment is restored from a SnapStart snapshot.
    fn after_restore(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A [`StreamingFunction`] made of a closure, with no SnapStart hooks.
pub struct StreamFn<F>(F);

/// Makes a [`StreamingFunction`] of a closure.
pub fn stream_fn<F>(f: F) -> StreamFn<F>
where
    F: FnMut(&[u8], &Context, &mut ResponseWriter) -> Result<(), HandlerError>,
{
    StreamFn(f)
}

impl<F> StreamingFunction for StreamFn<F>
where
    F: FnMut(&[u8], &Context, &mut ResponseWriter) -> Result<(), HandlerError>,
{
    fn handle(
        &mut self,
        event: &[u8],
        ctx: &Context,
        out: &mut ResponseWriter,
    ) -> Result<(), HandlerError> {
        (self.0)(event, ctx, out)
    }
}

/// Where a streaming handler writes its response. Every `write` goes out at once as one chunk
/// (wrap it in a `BufWriter` to send fewer, larger ones). The upload begins at the first write,
/// so a handler that fails before writing anything posts an ordinary error instead.
pub struct ResponseWriter {
    address: String,
    request_id: String,
    content_type: String,
    stream: Option<TcpStream>,
    written: u64,
}

impl ResponseWriter {
    pub(crate) fn new(address: &str, request_id: &str) -> ResponseWriter {
        ResponseWriter {
            address: address.to_owned(),
            request_id: request_id.to_owned(),
            content_type: "application/octet-stream".to_owned(),
            stream: None,
            written: 0,
        }
    }

    /// The stream's `Content-Type` (`application/octet-stream` unless set before the first
    /// write; later it changes nothing).
    pub fn set_content_type(&mut self, content_type: &str) {
        if self.stream.is_none() && !content_type.contains(['\r', '\n']) {
            self.content_type = content_type.to_owned();
        }
    }

    /// How many bytes have been written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether the upload has begun (something was written, or the stream was opened).
    pub fn started(&self) -> bool {
        self.stream.is_some()
    }

    fn open(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let mut stream = TcpStream::connect(&self.address)?;
            stream.set_nodelay(true)?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\n{}: {RESPONSE_MODE_STREAMING}\r\n\
                 Transfer-Encoding: chunked\r\nTrailer: {}, {}\r\nContent-Type: {}\r\n\
                 Connection: close\r\n\r\n",
                Route::Response(self.request_id.clone()).path(),
                self.address,
                header::RESPONSE_MODE,
                header::FUNCTION_ERROR_TYPE,
                header::FUNCTION_ERROR_BODY,
                self.content_type,
            );
            stream.write_all(head.as_bytes())?;
            self.stream = Some(stream);
        }
        // Set just above when it was not.
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("the response stream is not open"))
    }

    /// Ends the upload, with error trailers when `error` is given, and reads the Runtime API's
    /// answer.
    pub(crate) fn finish(mut self, error: Option<&ErrorRequest>) -> Result<(), Error> {
        let endpoint = Route::Response(self.request_id.clone()).path();
        let transport = |source: io::Error| Error::Stream {
            endpoint: endpoint.clone(),
            source,
        };
        let stream = self.open().map_err(transport)?;
        let mut end = b"0\r\n".to_vec();
        if let Some(error) = error {
            let body = base64::engine::general_purpose::STANDARD.encode(error.to_json());
            let error_type = crate::client::header_safe(&error.error_type);
            end.extend_from_slice(
                format!(
                    "{}: {error_type}\r\n{}: {body}\r\n",
                    header::FUNCTION_ERROR_TYPE,
                    header::FUNCTION_ERROR_BODY
                )
                .as_bytes(),
            );
        }
        end.extend_from_slice(b"\r\n");
        stream.write_all(&end).map_err(transport)?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).map_err(transport)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (200..300).contains(&status) {
            return Ok(());
        }
        let mut rest = Vec::new();
        let _ = reader.take(64 * 1024).read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let (error_type, message) =
            match serde_json::from_str::<proto::runtime_api::ErrorResponse>(body) {
                Ok(reply) => (reply.error_type, reply.error_message),
                Err(_) => (String::new(), status_line.trim().to_owned()),
            };
        Err(Error::Status {
            method: "POST",
            endpoint,
            status,
            error_type,
            message,
        })
    }
}

impl Write for ResponseWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let stream = self.open()?;
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk)?;
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.stream.as_mut() {
            Some(stream) => stream.flush(),
            None => Ok(()),
        }
    }
}
