//! HTTP/1.x request framing with `httparse`: where a request ends in a connection's bytes, and
//! its method, path and body. Every limit is checked before anything is allocated for it, so a
//! client's bytes cost at most [`MAX_HEADER_BYTES`] + [`MAX_BODY_BYTES`] of memory.

/// The request line and headers; a client with more is refused.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// A body (Firecracker's default payload limit, 50 KiB).
pub const MAX_BODY_BYTES: usize = 51_200;
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// What the bytes so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Not a whole request yet. `continue_wanted`: the headers are in and ask for
    /// `100 Continue` before the body (curl does for bodies over 1 KiB).
    Incomplete { continue_wanted: bool },
    /// A request, and how many bytes of the input it took.
    Complete { request: HttpRequest, used: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("the request line and headers are over {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("the body is {0} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    BodyTooLarge(u64),
    #[error("Transfer-Encoding is not supported: send the body with Content-Length")]
    TransferEncoding,
    #[error("invalid Content-Length")]
    ContentLength,
}

impl HttpError {
    /// The status the response to it has.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BodyTooLarge(_) => 413,
            HttpError::HeadersTooLarge => 431,
            _ => 400,
        }
    }
}

/// Frames the first request in `input`.
pub fn parse_request(input: &[u8]) -> Result<Framing, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEADER_BYTES => {
            return Err(HttpError::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => {
            return Ok(Framing::Incomplete {
                continue_wanted: false,
            })
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEADER_BYTES {
        return Err(HttpError::HeadersTooLarge);
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    let mut content_length: Option<u64> = None;
    let mut connection = None;
    let mut continue_wanted = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(HttpError::ContentLength)?;
            // Two different lengths would make the body's end ambiguous.
            if content_length.is_some_and(|seen| seen != value) {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            connection = Some(String::from_utf8_lossy(header.value).to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("expect") {
            continue_wanted = header.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES as u64 {
        return Err(HttpError::BodyTooLarge(body_len));
    }
    // At most MAX_BODY_BYTES, checked just above.
    let body_len = usize::try_from(body_len).map_err(|_| HttpError::BodyTooLarge(body_len))?;
    let Some(body) = input.get(head_len..head_len + body_len) else {
        return Ok(Framing::Incomplete { continue_wanted });
    };
    let keep_alive = match (version, connection.as_deref()) {
        (_, Some(c)) if c.contains("close") => false,
        (0, Some(c)) => c.contains("keep-alive"),
        (0, None) => false,
        _ => true,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    Ok(Framing::Complete {
        request: HttpRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            body: body.to_vec(),
            keep_alive,
        },
        used: head_len + body_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> (HttpRequest, usize) {
        match parse_request(input) {
            Ok(Framing::Complete { request, used }) => (request, used),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_with_a_body_is_framed_by_its_content_length() {
        let input = b"PUT /drives/root?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET";
        let (request, used) = complete(input);
        assert_eq!(request.method, "PUT");
        assert_eq!(request.path, "/drives/root");
        assert_eq!(request.body, b"{}");
        assert!(request.keep_alive);
        assert_eq!(&input[used..], b"GET");
    }

    #[test]
    fn partial_requests_wait_and_expect_continue_is_seen() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost"),
            Ok(Framing::Incomplete {
                continue_wanted: false
            })
        );
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n{"),
            Ok(Framing::Incomplete {
                continue_wanted: true
            })
        );
    }

    #[test]
    fn limits_and_bad_framing_are_refused() {
        let big = format!(
            "PUT /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(
            parse_request(big.as_bytes()),
            Err(HttpError::BodyTooLarge(MAX_BODY_BYTES as u64 + 1))
        );
        let endless = [b'a'; MAX_HEADER_BYTES + 1];
        assert!(parse_request(&endless).is_err());
        let long_header = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            parse_request(long_header.as_bytes()),
            Err(HttpError::HeadersTooLarge)
        );
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::TransferEncoding)
        );
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::ContentLength)
        );
        assert!(matches!(
            parse_request(b"\x00\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn http_1_0_closes_unless_asked_and_1_1_closes_when_asked() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
    }
}
