//! Asynchronous (`Event`) invokes across the cluster. An accepted event is published to the
//! replicated [`EVENTS_STREAM`] and stored there (a quorum of its replicas acknowledged it)
//! before its `202` ([`StreamQueue`]). Every host takes events from one durable pull consumer
//! ([`work`]): one event at a time per worker, the message kept in progress while it runs, and
//! acknowledged only once it has its outcome: a success, or a failure record published to
//! [`FAILURES_STREAM`] (and written to the host's `--on-failure-dir`). A host that dies holding
//! an event stops extending it, and the stream redelivers it after [`ACK_WAIT`] to another.
//!
//! Lambda's rules hold across redeliveries: the function's failures are counted in the
//! [`ATTEMPTS_BUCKET`] (so a redelivered event goes on from its count), and an event's age is
//! measured from when the stream stored it. Delivery is at least once: an event whose host died
//! after the function ran, and before the acknowledgement, runs again.
//!
//! [`EVENTS_STREAM`]: crate::names::EVENTS_STREAM
//! [`FAILURES_STREAM`]: crate::names::FAILURES_STREAM
//! [`ATTEMPTS_BUCKET`]: crate::names::ATTEMPTS_BUCKET

use crate::catalog::FunctionRecord;
use crate::host::Node;
use crate::names;
use crate::runner::RunError;
use crate::wire;
use async_nats::jetstream::consumer::{self, pull, AckPolicy};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use front_door::async_invoke::{destination_record, EnqueueError, EventQueue};
use futures_util::StreamExt;
use proto::invoke::{Invocation, Outcome};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long the stream waits for word on a delivered event before giving it to another host.
pub const ACK_WAIT: Duration = Duration::from_secs(8);
/// How often a host running an event says it is still at it.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long one pull waits for an event.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// The longest a throttled or unrunnable event waits before it is offered again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The stream as one function's event queue: what the invoke endpoint hands accepted events to.
pub struct StreamQueue {
    pub jetstream: jetstream::Context,
    pub function: String,
}

impl EventQueue for StreamQueue {
    fn enqueue(
        &self,
        invocation: Invocation,
    ) -> Pin<Box<dyn Future<Output = Result<(), EnqueueError>> + Send + '_>> {
        Box::pin(async move {
            let subject = names::events_subject(&self.function);
            let headers = wire::invocation_headers(&invocation);
            let queue_error = |e: &dyn std::fmt::Display| {
                EnqueueError::Queue(format!("the cluster's event stream: {e}").into())
            };
            publish_stored(&self.jetstream, subject, headers, invocation.event)
                .await
                .map_err(|e| queue_error(&e))
        })
    }
}

/// How long a publish to a stream is retried while the stream has no leader (one was lost
/// with its server and the others are electing the next).
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(15);

/// Publishes to a stream and waits until it is stored; retried while the stream has no
/// leader. The message's `Nats-Msg-Id` makes a retry of one that was stored after all a no-op.
async fn publish_stored(
    jetstream: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
) -> Result<(), jetstream::context::PublishError> {
    use jetstream::context::PublishErrorKind;
    let deadline = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
    loop {
        let stored = async {
            jetstream
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await?
                .await
        }
        .await;
        match stored {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The durable consumer every host pulls events from (made by the first).
pub async fn consumer(
    events: &jetstream::stream::Stream,
) -> Result<consumer::PullConsumer, String> {
    let config = pull::Config {
        durable_name: Some(names::EVENTS_CONSUMER.into()),
        description: Some("every lambda host".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        ..Default::default()
    };
    events
        .get_or_create_consumer(names::EVENTS_CONSUMER, config)
        .await
        .map_err(|e| e.to_string())
}

/// What the attempts bucket keeps of an event that failed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Attempts {
    failures: u32,
    /// The last failure's error body.
    last: String,
}

/// One of a host's event workers: pulls an event, runs it to its outcome, acknowledges it.
pub async fn work(node: Arc<Node>, consumer: consumer::PullConsumer) {
    loop {
        if !node.accepting() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let batch = consumer
            .batch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => run_event(&node, message).await,
                Err(_) => break,
            }
        }
    }
}

/// Runs one delivered event to its outcome (or hands it back).
async fn run_event(node: &Node, message: jetstream::Message) {
    let function = names::function_of_event(&message.subject).map(str::to_owned);
    let record = match &function {
        Some(name) => node.catalog.get(name),
        None => None,
    };
    let Some(record) = record else {
        node.log(&format!(
            "an event for {} is dropped: no such function is deployed",
            function.as_deref().unwrap_or("(no function)")
        ));
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let (delivered, published_ms) = match message.info() {
        Ok(info) => (
            info.delivered,
            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        ),
        Err(_) => (1, proto::time::epoch_ms()),
    };
    let invocation = match message
        .headers
        .as_ref()
        .ok_or_else(|| "no headers".to_owned())
        .and_then(|h| wire::invocation_from(h, message.payload.clone()).map_err(|e| e.to_string()))
    {
        Ok(invocation) => invocation,
        Err(e) => {
            node.log(&format!("a malformed event is dropped: {e}"));
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    if !record.runs_on(&node.runner.runs()) {
        // Another host runs it.
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    // While it runs, the stream hears that this host is at it.
    let progress = {
        let reply = message.reply.clone();
        let client = node.cluster.client.clone();
        tokio::spawn(async move {
            let Some(reply) = reply else { return };
            let mut ticks = tokio::time::interval(PROGRESS_EVERY);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let _ = client
                    .publish(reply.clone(), Bytes::from(AckKind::Progress))
                    .await;
            }
        })
    };
    let verdict = run_to_outcome(node, &record, invocation, published_ms).await;
    progress.abort();
    match verdict {
        Verdict::Done { request_id } => {
            if let Err(e) = message.double_ack().await {
                node.log(&format!(
                    "async invoke {request_id}: its acknowledgement was not confirmed ({e}); it may run again"
                ));
            }
            let _ = node.cluster.attempts.delete(&request_id).await;
        }
        Verdict::Later => {
            let backoff = node.settings.retry_delay
                * 2u32.saturating_pow(u32::try_from(delivered.clamp(1, 7)).unwrap_or(7) - 1);
            let delay = backoff.clamp(Duration::from_millis(100), MAX_BACKOFF);
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

enum Verdict {
    /// It has its outcome: acknowledge it.
    Done { request_id: String },
    /// Not run here now (throttled, this host stopping): offer it again later.
    Later,
}

/// Runs the event here until it succeeds, or its failures reach the retry limit, or it grows
/// too old; the last two publish its failure record.
async fn run_to_outcome(
    node: &Node,
    record: &Arc<FunctionRecord>,
    invocation: Invocation,
    published_ms: u64,
) -> Verdict {
    let config = &record.config;
    let id = invocation.request_id.clone();
    let allowed = 1 + config.maximum_retry_attempts;
    let max_age = Duration::from_secs(u64::from(config.maximum_event_age_secs));
    let age = || Duration::from_millis(proto::time::epoch_ms().saturating_sub(published_ms));
    let mut attempts = read_attempts(node, &id).await;
    let condition = loop {
        if attempts.failures >= allowed {
            break "RetriesExhausted";
        }
        if age() >= max_age {
            break "EventAgeExceeded";
        }
        let run = node
            .run_local(Arc::clone(record), invocation.clone(), true)
            .await;
        match run {
            Ok(Outcome::Success(_)) => return Verdict::Done { request_id: id },
            Ok(Outcome::Failure { body, .. }) => {
                attempts.failures += 1;
                attempts.last = String::from_utf8_lossy(&body).into_owned();
                let value = serde_json::to_vec(&attempts).unwrap_or_default();
                if let Err(e) = node.cluster.attempts.put(&id, value.into()).await {
                    node.log(&format!(
                        "async invoke {id}: its failure count could not be kept ({e})"
                    ));
                }
                if attempts.failures >= allowed {
                    break "RetriesExhausted";
                }
                tokio::time::sleep(node.settings.retry_delay).await;
            }
            Err(RunError::Busy | RunError::Unavailable(_) | RunError::Invoke(_)) => {
                return Verdict::Later;
            }
        }
    };
    let mut function = front_door::Function::new(config);
    function.region = node.settings.region.clone();
    let failure = destination_record(
        &invocation,
        &function.arn(),
        &function.version,
        attempts.last.as_bytes(),
        &proto::time::rfc3339_now(),
        (condition, attempts.failures),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(names::header::MSG_ID, id.as_str());
    headers.insert(names::header::REQUEST_ID, id.as_str());
    let published = publish_stored(
        &node.cluster.jetstream,
        names::failures_subject(record.name()),
        headers,
        Bytes::from(failure.clone()),
    )
    .await;
    if let Err(e) = published {
        node.log(&format!(
            "async invoke {id}: its failure record could not be published ({e}); it will be offered again"
        ));
        return Verdict::Later;
    }
    let mut place = format!("stream {}", names::FAILURES_STREAM);
    if let Some(dir) = &node.settings.on_failure_dir {
        match front_door::async_invoke::write_record(dir, &id, &failure) {
            Ok(path) => place = format!("{place} and {}", path.display()),
            Err(e) => node.log(&format!(
                "async invoke {id}: cannot write its record in {}: {e}",
                dir.display()
            )),
        }
    }
    node.log(&format!(
        "async invoke {id}: {condition} after {} attempt(s); destination record in {place}",
        attempts.failures
    ));
    Verdict::Done { request_id: id }
}

async fn read_attempts(node: &Node, id: &str) -> Attempts {
    match node.cluster.attempts.get(id).await {
        Ok(Some(value)) => serde_json::from_slice(&value).unwrap_or_default(),
        _ => Attempts::default(),
    }
}
