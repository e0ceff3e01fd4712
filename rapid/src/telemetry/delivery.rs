//! One subscriber's buffering and delivery: events gather into a batch until it holds
//! `maxItems` events or `maxBytes` bytes, or `timeoutMs` has passed since its first event, and
//! the batch then goes to the subscriber (an HTTP POST of a JSON array on a kept-alive
//! connection, or JSON lines on a TCP connection). A subscriber that cannot keep up loses
//! events rather than the environment's memory; it is told how many in a `platform.logsDropped`
//! record.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use proto::telemetry_api::{Buffering, Event, Target};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most bytes of events waiting for one subscriber; beyond it events are dropped.
const MAX_QUEUED: usize = 16 * 1024 * 1024;
/// How long a batch is retried on a destination that refuses connections (an extension
/// between two listeners, or not listening yet) before it is given up.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(5);

enum Item {
    Event(Bytes),
    Flush,
    Close,
}

/// The feeding end of a subscriber's delivery task.
pub struct Queue {
    items: mpsc::UnboundedSender<Item>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<Dropped>,
}

#[derive(Default)]
struct Dropped {
    records: AtomicU64,
    bytes: AtomicU64,
}

impl Queue {
    /// Starts delivering to `target` for subscriber `name`.
    pub fn start(name: String, buffering: Buffering, target: Target) -> Queue {
        let (items, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(Dropped::default());
        let task = Delivery {
            name,
            buffering,
            target,
            queued: Arc::clone(&queued),
            dropped: Arc::clone(&dropped),
            http: None,
            tcp: None,
        };
        tokio::spawn(task.run(receiver));
        Queue {
            items,
            queued,
            dropped,
        }
    }

    pub fn push(&self, event: Event) {
        let json = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let size = json.len();
        if self.queued.load(Ordering::Relaxed) + size > MAX_QUEUED {
            self.dropped.records.fetch_add(1, Ordering::Relaxed);
            self.dropped.bytes.fetch_add(size as u64, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(size, Ordering::Relaxed);
        let _ = self.items.send(Item::Event(json));
    }

    pub fn flush(&self) {
        let _ = self.items.send(Item::Flush);
    }

    /// Sends what is held, then ends the delivery.
    pub fn close(&self) {
        let _ = self.items.send(Item::Close);
    }
}

struct Delivery {
    name: String,
    buffering: Buffering,
    target: Target,
    queued: Arc<AtomicUsize>,
    dropped: Arc<Dropped>,
    http: Option<SendRequest<Full<Bytes>>>,
    tcp: Option<TcpStream>,
}

impl Delivery {
    async fn run(mut self, mut items: mpsc::UnboundedReceiver<Item>) {
        let timeout = Duration::from_millis(u64::from(self.buffering.timeout_ms));
        let max_items = usize::try_from(self.buffering.max_items).unwrap_or(usize::MAX);
        let max_bytes = usize::try_from(self.buffering.max_bytes).unwrap_or(usize::MAX);
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_bytes = 0;
        let mut due: Option<Instant> = None;
        loop {
            let item = match due {
                Some(due) => tokio::select! {
                    item = items.recv() => item,
                    () = tokio::time::sleep_until(due) => Some(Item::Flush),
                },
                None => items.recv().await,
            };
            let (flush, close) = match item {
                None | Some(Item::Close) => (true, true),
                Some(Item::Flush) => (true, false),
                Some(Item::Event(json)) => {
                    self.queued.fetch_sub(json.len(), Ordering::Relaxed);
                    if batch_bytes + json.len() > max_bytes && !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                        batch_bytes = 0;
                    }
                    if batch.is_empty() {
                        due = Some(Instant::now() + timeout);
                        if let Some(dropped) = self.dropped_record() {
                            batch_bytes += dropped.len();
                            batch.push(dropped);
                        }
                    }
                    batch_bytes += json.len();
                    batch.push(json);
                    (batch.len() >= max_items || batch_bytes >= max_bytes, false)
                }
            };
            if flush && !batch.is_empty() {
                self.send(std::mem::take(&mut batch)).await;
                batch_bytes = 0;
                due = None;
            }
            if close {
                return;
            }
        }
    }

    /// A `platform.logsDropped` event for what was dropped since the last one, if anything.
    fn dropped_record(&self) -> Option<Bytes> {
        let records = self.dropped.records.swap(0, Ordering::Relaxed);
        let bytes = self.dropped.bytes.swap(0, Ordering::Relaxed);
        if records == 0 {
            return None;
        }
        let event = Event {
            time: proto::time::rfc3339_now(),
            kind: "platform.logsDropped".into(),
            record: serde_json::json!({
                "reason": "Some logs were dropped because the downstream consumer is slower than the logs production rate",
                "droppedRecords": records,
                "droppedBytes": bytes,
            }),
        };
        Some(Bytes::from(serde_json::to_vec(&event).unwrap_or_default()))
    }

    /// Delivers one batch, reconnecting while the destination refuses, for a while.
    async fn send(&mut self, batch: Vec<Bytes>) {
        let deadline = Instant::now() + DELIVERY_PATIENCE;
        let mut pause = Duration::from_millis(5);
        loop {
            let sent = match &self.target {
                Target::Http { port, path } => {
                    let (port, path) = (*port, path.clone());
                    self.post(port, &path, &batch).await
                }
                Target::Tcp { port } => {
                    let port = *port;
                    self.write_lines(port, &batch).await
                }
            };
            match sent {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!(
                        "rapid: telemetry for {}: {} events dropped: {e}",
                        self.name,
                        batch.len()
                    );
                    let bytes: usize = batch.iter().map(Bytes::len).sum();
                    self.dropped
                        .records
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.dropped
                        .bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    async fn post(&mut self, port: u16, path: &str, batch: &[Bytes]) -> std::io::Result<()> {
        let mut body =
            Vec::with_capacity(batch.iter().map(Bytes::len).sum::<usize>() + batch.len() + 1);
        body.push(b'[');
        for (i, event) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.push(b']');
        let sender = match self.http.as_mut().filter(|s| !s.is_closed()) {
            Some(sender) => sender,
            None => {
                let stream = TcpStream::connect(("127.0.0.1", port)).await?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                self.http.insert(sender)
            }
        };
        sender.ready().await.map_err(std::io::Error::other)?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, "sandbox.localdomain")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(std::io::Error::other)?;
        let result = sender.send_request(request).await;
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                self.http = None;
                return Err(std::io::Error::other(e));
            }
        };
        // Read to the end, so the connection can carry the next batch.
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_server_error() {
            return Err(std::io::Error::other(format!(
                "the destination answered {status}"
            )));
        }
        Ok(())
    }

    async fn write_lines(&mut self, port: u16, batch: &[Bytes]) -> std::io::Result<()> {
        let stream = match self.tcp.as_mut() {
            Some(stream) => stream,
            None => self
                .tcp
                .insert(TcpStream::connect(("127.0.0.1", port)).await?),
        };
        let mut lines = Vec::new();
        for event in batch {
            lines.extend_from_slice(event);
            lines.push(b'\n');
        }
        let written = stream.write_all(&lines).await;
        if written.is_err() {
            self.tcp = None;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A destination that keeps each batch it gets.
    async fn destination() -> (u16, Arc<Mutex<Vec<Vec<serde_json::Value>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&batches);
        let limits = http_server::ConnectionLimits::NONE;
        tokio::spawn(http_server::serve(listener, limits, move |request| {
            let kept = Arc::clone(&kept);
            async move {
                let body = http_server::read_body(request, 4 << 20).await.unwrap();
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                http_server::json(200, Bytes::new())
            }
        }));
        (port, batches)
    }

    fn event(n: usize, size: usize) -> Event {
        Event {
            time: "2024-05-01T12:34:56.789Z".into(),
            kind: "function".into(),
            record: serde_json::Value::String(format!("{n} {}", "x".repeat(size))),
        }
    }

    async fn batches_of(
        buffering: Buffering,
        events: usize,
        size: usize,
    ) -> Vec<Vec<serde_json::Value>> {
        let (port, batches) = destination().await;
        let target = Target::Http {
            port,
            path: "/".into(),
        };
        let queue = Queue::start("test".into(), buffering, target);
        for n in 0..events {
            queue.push(event(n, size));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got: usize = batches.lock().unwrap().iter().map(Vec::len).sum();
            if got == events || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let batches = batches.lock().unwrap().clone();
        batches
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_are_cut_at_max_items_and_nothing_is_lost_or_reordered() {
        let buffering = Buffering {
            max_items: 1000,
            max_bytes: 1_048_576,
            timeout_ms: 25,
        };
        let batches = batches_of(buffering, 2500, 10).await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        // Queued faster than the first batch goes out, the events fill it; later batches may
        // be cut by the timeout as well.
        assert_eq!(sizes.first(), Some(&1000), "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 1000), "{sizes:?}");
        // In order, none lost.
        let first: Vec<String> = batches
            .iter()
            .flatten()
            .map(|e| {
                e["record"]
                    .as_str()
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let expected: Vec<String> = (0..2500).map(|n| n.to_string()).collect();
        assert_eq!(first, expected);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_stay_within_max_bytes() {
        let buffering = Buffering {
            max_items: 10_000,
            max_bytes: 262_144,
            timeout_ms: 25,
        };
        let batches = batches_of(buffering, 1000, 1000).await;
        assert!(batches.len() >= 4, "{} batches", batches.len());
        for batch in &batches {
            let bytes: usize = batch.iter().map(|e| e.to_string().len()).sum();
            assert!(bytes <= 262_144, "a batch of {bytes} bytes");
        }
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 1000);
    }
}
