//! The body of every reply: whole (sent with a `Content-Length`), or streamed as its parts are
//! produced (chunked on the wire, each part written as soon as it is handed over, optionally
//! ending with trailers). Streaming is what `InvokeWithResponseStream` needs: the function's
//! chunks reach the client as the function writes them.

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::HeaderMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A reply body.
pub struct Body {
    kind: Kind,
}

enum Kind {
    /// The whole body; `None` once it was taken.
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Frame<Bytes>>),
}

impl Body {
    /// A body whose bytes are all known now.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// A streamed body and the sender that produces it. Up to `parts` parts wait unsent; beyond
    /// that the sender waits for the client to read, so a slow client slows the producer rather
    /// than filling memory. The body ends when the sender is dropped or sends trailers.
    pub fn channel(parts: usize) -> (BodySender, Body) {
        let (sender, receiver) = mpsc::channel(parts.max(1));
        let body = Body {
            kind: Kind::Stream(receiver),
        };
        (BodySender { sender }, body)
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::full(Bytes::new())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(bytes) => write!(f, "Body::Full({:?})", bytes.as_ref().map(Bytes::len)),
            Kind::Stream(_) => f.write_str("Body::Stream"),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Stream(receiver) => receiver.poll_recv(cx).map(|frame| frame.map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// The producing end of a streamed [`Body`].
#[derive(Clone)]
pub struct BodySender {
    sender: mpsc::Sender<Frame<Bytes>>,
}

/// The client has gone: nothing sent from now on reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client stopped reading the body")]
pub struct BodyClosed;

impl BodySender {
    /// Hands one part to the connection, waiting while too many are unsent.
    pub async fn send(&self, data: Bytes) -> Result<(), BodyClosed> {
        if data.is_empty() {
            return Ok(());
        }
        self.sender
            .send(Frame::data(data))
            .await
            .map_err(|_| BodyClosed)
    }

    /// Ends the body with trailers (the client must have been told their names in `Trailer`).
    pub async fn trailers(self, trailers: HeaderMap) -> Result<(), BodyClosed> {
        self.sender
            .send(Frame::trailers(trailers))
            .await
            .map_err(|_| BodyClosed)
    }

    /// Whether the client has gone.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(flavor = "current_thread")]
    async fn a_streamed_body_yields_its_parts_in_order_then_ends() {
        let (sender, mut body) = Body::channel(2);
        let producer = tokio::spawn(async move {
            sender.send(Bytes::from_static(b"one")).await.unwrap();
            sender.send(Bytes::new()).await.unwrap();
            sender.send(Bytes::from_static(b"two")).await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            got.push(frame.unwrap().into_data().unwrap());
        }
        producer.await.unwrap();
        assert_eq!(
            got,
            [Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_dropped_unread_tells_the_sender() {
        let (sender, body) = Body::channel(1);
        drop(body);
        assert!(sender.is_closed());
        assert_eq!(sender.send(Bytes::from_static(b"x")).await, Err(BodyClosed));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_body_has_an_exact_size() {
        let body = Body::full(Bytes::from_static(b"abc"));
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(hyper::body::Body::is_end_stream(&Body::default()));
    }
}
