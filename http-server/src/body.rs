//! Request bodies: read whole, within a size limit, and, on a listener with a [`BodyPace`], at
//! a minimum rate, so that a client that sends its body slowly or not at all holds its own
//! connection only, and only for a bounded time.

use crate::serve::{InFlight, Phase};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use std::time::Duration;
use tokio::time::Instant;

/// How fast a request body must arrive: after `grace`, at least `min_rate` bytes a second on
/// average since the body began. A body that sends nothing is refused after `grace`, and one
/// that trickles as soon as it falls behind the rate; a body of `n` bytes may take up to
/// `grace + n / min_rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BodyPace {
    pub grace: Duration,
    /// Bytes a second; at least 1.
    pub min_rate: u32,
}

impl BodyPace {
    /// When a body that began at `start` and has sent `received` bytes falls behind.
    fn deadline(&self, start: Instant, received: usize) -> Instant {
        #[allow(clippy::cast_precision_loss)] // bodies are far below 2^52 bytes
        let behind = received as f64 / f64::from(self.min_rate.max(1));
        start + self.grace + Duration::try_from_secs_f64(behind).unwrap_or(Duration::MAX / 4)
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        limit: usize,
        /// The size the request declared (`Content-Length`), when it did.
        declared: Option<u64>,
    },
    #[error(
        "the body came too slowly: {received} bytes in {:.1} s (after {:.1} s, at least {} bytes a second)",
        elapsed.as_secs_f64(), pace.grace.as_secs_f64(), pace.min_rate
    )]
    TooSlow {
        received: usize,
        elapsed: Duration,
        pace: BodyPace,
    },
    #[error("the body could not be read: {0}")]
    Read(String),
}

impl BodyError {
    /// The HTTP status that refuses such a body: 413, 408, or 400.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::TooSlow { .. } => 408,
            BodyError::Read(_) => 400,
        }
    }
}

/// How much of an oversized body is read and thrown away before the refusal is sent, so that a
/// client still sending sees the 413 instead of a broken pipe.
const DISCARD_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a whole body, refusing it as soon as it exceeds `limit` bytes (before buffering more),
/// or falls behind its listener's [`BodyPace`].
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    let in_flight = request.extensions().get::<InFlight>().cloned();
    let pace = in_flight.as_ref().and_then(InFlight::body_pace);
    // While the body is read the connection may be closed for a newer one at the cap; once
    // read, the request is being served and is not.
    let _reading = in_flight.map(|c| c.enter(Phase::Body));
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = Paced::new(request.into_body(), pace);
    if declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit)) {
        body.discard().await;
        return Err(BodyError::TooLarge { limit, declared });
    }
    let mut collected = BytesMut::new();
    while let Some(data) = body.next().await? {
        if data.len() > limit - collected.len() {
            body.discard().await;
            return Err(BodyError::TooLarge { limit, declared });
        }
        if collected.is_empty() && body.done() {
            // The whole body in one piece: no copy.
            return Ok(data);
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

/// A body read frame by frame against its pace.
struct Paced {
    body: Incoming,
    pace: Option<BodyPace>,
    start: Instant,
    received: usize,
}

impl Paced {
    fn new(body: Incoming, pace: Option<BodyPace>) -> Paced {
        Paced {
            body,
            pace,
            start: Instant::now(),
            received: 0,
        }
    }

    /// The next piece of data; `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            let frame = match self.pace {
                None => self.body.frame().await,
                Some(pace) => {
                    let deadline = pace.deadline(self.start, self.received);
                    match tokio::time::timeout_at(deadline, self.body.frame()).await {
                        Ok(frame) => frame,
                        Err(_) => {
                            return Err(BodyError::TooSlow {
                                received: self.received,
                                elapsed: self.start.elapsed(),
                                pace,
                            })
                        }
                    }
                }
            };
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(BodyError::Read(e.to_string())),
                Some(Ok(frame)) => {
                    // Trailers carry no data.
                    if let Ok(data) = frame.into_data() {
                        self.received = self.received.saturating_add(data.len());
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    fn done(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    /// Reads and drops up to [`DISCARD_LIMIT`] more bytes (as paced), keeping none of them.
    async fn discard(&mut self) {
        let until = self.received.saturating_add(DISCARD_LIMIT);
        while self.received < until {
            match self.next().await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{serve, ConnectionLimits};
    use std::io::{Read, Write};

    /// A server whose handler reads each body (up to 64 bytes) and answers its length, or the
    /// refusal's status with the error.
    async fn server(limits: ConnectionLimits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, limits, |request| async move {
            match read_body(request, 64).await {
                Ok(body) => crate::json(200, body.len().to_string()),
                Err(e) => crate::close(crate::error(e.status(), "Refused", &e.to_string())),
            }
        }));
        addr
    }

    fn paced(max_connections: Option<usize>) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_read_timeout: Some(Duration::from_secs(30)),
            body_pace: Some(BodyPace {
                grace: Duration::from_millis(300),
                min_rate: 100,
            }),
        }
    }

    /// Sends `head` (and `body`), then waits for the whole answer, on a blocking thread.
    async fn exchange(addr: std::net::SocketAddr, head: String, body: &'static [u8]) -> String {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            for byte in body {
                // A refusal closes the connection while bytes are still coming.
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        })
        .await
        .unwrap()
    }

    fn post(length: usize) -> String {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_body_is_refused_after_the_grace() {
        let addr = server(paced(None)).await;
        let answer = exchange(addr, post(10), b"").await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("too slowly: 0 bytes"), "{answer}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_trickling_body_is_refused_once_it_falls_behind() {
        let addr = server(paced(None)).await;
        // One byte every 100 ms is 10 bytes a second, a tenth of the rate.
        let answer = exchange(addr, post(20), b"12345678901234567890").await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_at_pace_and_an_unpaced_slow_one_are_read_whole() {
        let addr = server(paced(None)).await;
        let answer = exchange(addr, format!("{}{}", post(5), "hello"), b"").await;
        assert!(
            answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n5"),
            "{answer}"
        );
        let addr = server(ConnectionLimits::NONE).await;
        let answer = exchange(addr, post(4), b"slow").await;
        assert!(
            answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n4"),
            "{answer}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_oversized_body_is_refused() {
        let addr = server(paced(None)).await;
        let answer = exchange(addr, post(65), b"").await;
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    }

    /// At the cap, clients that hold connections without sending whole requests give their
    /// places to new ones: a real request is answered while they would still be waited for.
    #[tokio::test(flavor = "current_thread")]
    async fn at_the_cap_silent_clients_give_way_to_a_real_one() {
        let mut limits = paced(Some(4));
        limits.body_pace = Some(BodyPace {
            grace: Duration::from_secs(600),
            min_rate: 1,
        });
        limits.header_read_timeout = Some(Duration::from_secs(600));
        let addr = server(limits).await;
        let silent: Vec<_> = (0..8)
            .map(|i| {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                // Half of them a partial header, half a partial body.
                let partial = if i % 2 == 0 {
                    "POST / HTTP/1.1\r\n".to_owned()
                } else {
                    post(10)
                };
                stream.write_all(partial.as_bytes()).unwrap();
                stream
            })
            .collect();
        let answer = exchange(addr, format!("{}{}", post(2), "ok"), b"").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        drop(silent);
    }
}
