//! Frames of the worker protocol (`WORKER_PROTOCOL.md`): a verb line, `Name: value` header lines,
//! a blank line, then exactly `Content-Length` body bytes.

use proto::runtime_api::SYNC_PAYLOAD_LIMIT;
use std::io::{self, BufRead, Read, Write};

/// The protocol version this runtime speaks, announced to the worker in its environment and
/// accepted in the `Protocol` header of `READY`.
pub const VERSION: &str = "1";
/// The environment variable that announces [`VERSION`] to the worker.
pub const VERSION_ENV: &str = "BOOTSTRAP_WORKER_PROTOCOL";

/// Longest verb or header line, `\r` included, `\n` excluded.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines in one frame.
pub const MAX_HEADERS: usize = 64;
/// Largest body kept: nothing larger could be passed on to or from the Runtime API anyway.
pub const MAX_BODY: usize = SYNC_PAYLOAD_LIMIT;

/// Verbs, runtime to worker.
pub mod verb {
    pub const INVOKE: &str = "INVOKE";
    pub const BEFORE_SNAPSHOT: &str = "BEFORE_SNAPSHOT";
    pub const AFTER_RESTORE: &str = "AFTER_RESTORE";
    /// Worker to runtime.
    pub const READY: &str = "READY";
    pub const INIT_ERROR: &str = "INIT_ERROR";
    pub const RESPONSE: &str = "RESPONSE";
    pub const ERROR: &str = "ERROR";
    pub const OK: &str = "OK";
}

/// Header names.
pub mod header {
    pub const CONTENT_LENGTH: &str = "Content-Length";
    pub const CONTENT_TYPE: &str = "Content-Type";
    pub const PROTOCOL: &str = "Protocol";
    pub const ERROR_TYPE: &str = "Error-Type";
    pub const REQUEST_ID: &str = "Request-Id";
    pub const DEADLINE_MS: &str = "Deadline-Ms";
    pub const INVOKED_FUNCTION_ARN: &str = "Invoked-Function-Arn";
    pub const TRACE_ID: &str = "Trace-Id";
    pub const CLIENT_CONTEXT: &str = "Client-Context";
    pub const COGNITO_IDENTITY: &str = "Cognito-Identity";
}

/// One frame read from the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub verb: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    /// The value of header `name`, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The worker's stdout reached end of file, at a frame boundary or inside one.
    #[error("the worker closed its stdout")]
    Closed,
    #[error("reading from the worker: {0}")]
    Io(#[source] io::Error),
    #[error("worker protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A well-formed frame whose body is over [`MAX_BODY`]. The body was read and dropped, not
    /// kept, so the channel is still in step and the worker can go on.
    #[error("{verb} body of {length} bytes is over the {MAX_BODY}-byte limit")]
    Oversized { verb: String, length: u64 },
}

/// Ways a worker's output breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("a line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("a line is not valid UTF-8")]
    NotUtf8,
    #[error("{0:?} is not a verb (expected upper-case letters and '_')")]
    BadVerb(String),
    #[error("{0:?} is not a `Name: value` header line")]
    BadHeader(String),
    #[error("Content-Length {0:?} is not a byte count")]
    BadContentLength(String),
    #[error("unexpected {got} (expected {expected})")]
    UnexpectedVerb { got: String, expected: String },
    #[error("unsupported protocol version {0:?} (this runtime speaks {VERSION})")]
    UnsupportedVersion(String),
}

/// Writes one frame. Header values lose any line breaks, which would otherwise end the header.
pub fn write_frame(
    w: &mut impl Write,
    verb: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = String::with_capacity(64 + headers.len() * 48);
    head.push_str(verb);
    head.push('\n');
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.extend(
            value
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
        );
        head.push('\n');
    }
    head.push_str(&format!("{}: {}\n\n", header::CONTENT_LENGTH, body.len()));
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one frame, within the protocol's bounds. Blank lines before the verb are skipped, so a
/// worker may end a body with a newline it did not count.
pub fn read_frame(r: &mut impl BufRead) -> Result<Frame, ReadError> {
    let mut line = Vec::with_capacity(128);
    let verb = loop {
        let text = read_line(r, &mut line)?;
        if !text.is_empty() {
            break text.to_owned();
        }
    };
    if !verb.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(ProtocolError::BadVerb(verb).into());
    }

    let mut headers = Vec::new();
    loop {
        let text = read_line(r, &mut line)?;
        if text.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(ProtocolError::TooManyHeaders.into());
        }
        let bad = || ProtocolError::BadHeader(text.to_owned());
        let (name, value) = text.split_once(':').ok_or_else(bad)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad().into());
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }

    let mut frame = Frame {
        verb,
        headers,
        body: Vec::new(),
    };
    let length = content_length(&frame)?;
    let Some(kept) = usize::try_from(length).ok().filter(|l| *l <= MAX_BODY) else {
        let dropped = io::copy(&mut r.take(length), &mut io::sink()).map_err(ReadError::Io)?;
        if dropped < length {
            return Err(ReadError::Closed);
        }
        return Err(ReadError::Oversized {
            verb: frame.verb,
            length,
        });
    };
    frame.body = vec![0; kept];
    r.read_exact(&mut frame.body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Closed,
        _ => ReadError::Io(e),
    })?;
    Ok(frame)
}

fn content_length(frame: &Frame) -> Result<u64, ProtocolError> {
    let mut values = frame
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(header::CONTENT_LENGTH))
        .map(|(_, v)| v);
    let Some(value) = values.next() else {
        return Ok(0);
    };
    let bad = || ProtocolError::BadContentLength(value.clone());
    // Two lengths could disagree, and a sign or a space would be accepted by `parse`; neither is
    // what a well-behaved worker sends.
    if values.next().is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// Reads one line into `buf` and returns it without its `\n` or `\r\n`.
fn read_line<'b>(r: &mut impl BufRead, buf: &'b mut Vec<u8>) -> Result<&'b str, ReadError> {
    buf.clear();
    // One byte over the limit is enough to tell a long line from one that fits exactly.
    let read = r
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(ReadError::Io)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if read > MAX_LINE {
        return Err(ProtocolError::LineTooLong.into());
    } else {
        return Err(ReadError::Closed);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    std::str::from_utf8(buf).map_err(|_| ProtocolError::NotUtf8.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Frame, ReadError> {
        read_frame(&mut io::Cursor::new(bytes))
    }

    fn protocol_error(bytes: &[u8]) -> ProtocolError {
        match read(bytes) {
            Err(ReadError::Protocol(e)) => e,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            verb::INVOKE,
            &[(header::REQUEST_ID, "id-1"), (header::TRACE_ID, "a\r\nb")],
            b"{\"x\":1}\n",
        )
        .unwrap();
        assert_eq!(
            wire,
            b"INVOKE\nRequest-Id: id-1\nTrace-Id: a  b\nContent-Length: 8\n\n{\"x\":1}\n"
        );
        let frame = read(&wire).unwrap();
        assert_eq!(frame.verb, "INVOKE");
        assert_eq!(frame.header("request-id"), Some("id-1"));
        assert_eq!(frame.header("TRACE-ID"), Some("a  b"));
        assert_eq!(frame.body, b"{\"x\":1}\n");
    }

    #[test]
    fn crlf_leading_blank_lines_and_no_body_are_accepted() {
        let frame = read(b"\n\r\nREADY\r\nProtocol: 1\r\n\r\n").unwrap();
        assert_eq!(frame.verb, "READY");
        assert_eq!(frame.header(header::PROTOCOL), Some("1"));
        assert!(frame.body.is_empty());
    }

    #[test]
    fn consecutive_frames_are_read_one_at_a_time() {
        let mut wire = io::Cursor::new(&b"RESPONSE\nContent-Length: 2\n\nhiOK\n\n"[..]);
        assert_eq!(read_frame(&mut wire).unwrap().body, b"hi");
        assert_eq!(read_frame(&mut wire).unwrap().verb, "OK");
        assert!(matches!(read_frame(&mut wire), Err(ReadError::Closed)));
    }

    #[test]
    fn end_of_file_anywhere_is_closed() {
        for cut in [
            &b""[..],
            b"RESP",
            b"RESPONSE\n",
            b"RESPONSE\nContent-Length: 5\n\nab",
        ] {
            assert!(matches!(read(cut), Err(ReadError::Closed)), "{cut:?}");
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut long = vec![b'A'; MAX_LINE];
        long.extend_from_slice(b"\n\n");
        assert_eq!(read(&long).unwrap().verb.len(), MAX_LINE);
        let mut longer = vec![b'A'; MAX_LINE + 1];
        longer.push(b'\n');
        assert_eq!(protocol_error(&longer), ProtocolError::LineTooLong);
        let mut endless = b"OK\nX: ".to_vec();
        endless.extend(std::iter::repeat_n(b'v', 1 << 20));
        assert_eq!(protocol_error(&endless), ProtocolError::LineTooLong);
    }

    #[test]
    fn header_count_is_bounded() {
        let mut wire = b"OK\n".to_vec();
        for i in 0..=MAX_HEADERS {
            wire.extend_from_slice(format!("X-{i}: v\n").as_bytes());
        }
        wire.push(b'\n');
        assert_eq!(protocol_error(&wire), ProtocolError::TooManyHeaders);
    }

    #[test]
    fn oversized_bodies_are_dropped_and_the_channel_stays_in_step() {
        let mut wire = format!("RESPONSE\nContent-Length: {}\n\n", MAX_BODY + 1).into_bytes();
        wire.resize(wire.len() + MAX_BODY + 1, b'a');
        wire.extend_from_slice(b"OK\n\n");
        let mut wire = io::Cursor::new(wire);
        assert!(matches!(
            read_frame(&mut wire),
            Err(ReadError::Oversized { verb, length }) if verb == "RESPONSE" && length == MAX_BODY as u64 + 1
        ));
        assert_eq!(read_frame(&mut wire).unwrap().verb, "OK");
        let cut = format!("RESPONSE\nContent-Length: {}\n\nabc", MAX_BODY + 1);
        assert!(matches!(read(cut.as_bytes()), Err(ReadError::Closed)));
        assert_eq!(
            protocol_error(b"RESPONSE\nContent-Length: 99999999999999999999999\n\n"),
            ProtocolError::BadContentLength("99999999999999999999999".into())
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert_eq!(
            protocol_error(b"hello world\n\n"),
            ProtocolError::BadVerb("hello world".into())
        );
        assert_eq!(
            protocol_error(b"OK\nno colon\n\n"),
            ProtocolError::BadHeader("no colon".into())
        );
        assert_eq!(
            protocol_error(b"OK\nBad Name: v\n\n"),
            ProtocolError::BadHeader("Bad Name: v".into())
        );
        assert_eq!(protocol_error(b"OK\n\xff\n\n"), ProtocolError::NotUtf8);
        for bad in ["-1", "+1", "1 2", "", "x"] {
            let wire = format!("OK\nContent-Length: {bad}\n\n");
            assert_eq!(
                protocol_error(wire.as_bytes()),
                ProtocolError::BadContentLength(bad.into())
            );
        }
        assert_eq!(
            protocol_error(b"OK\nContent-Length: 1\ncontent-length: 1\n\nx"),
            ProtocolError::BadContentLength("1".into())
        );
    }
}
