//! Request/reply for forwarded invokes, with a liveness watch: a host running a forwarded
//! invoke says `alive` every [`ALIVE_EVERY`]; a caller that hears nothing for [`PROBE_AFTER`]
//! asks the host's ping subject about that invoke ([`Probe`]). Running there: it waits on. The
//! host never got it (the server holding the message was lost): another host may run it. The
//! host finished it, or no one answers there (the host's connection is gone: `kill -9`): the
//! invoke is lost, at once. Silence for [`LOST_AFTER`] (the host hangs or lost its network):
//! lost too. A caller never waits longer than that on a dead host.
//!
//! Replies reach one inbox subscription per host ([`Replies`]), each invoke a subject under it.

use crate::names;
use crate::wire::{Forward, Reply};
use async_nats::{Client, Message, StatusCode};
use futures_util::StreamExt;
use proto::invoke::{InvokeError, Outcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a host running a forwarded invoke says so.
pub const ALIVE_EVERY: Duration = Duration::from_millis(500);
/// Silence after which the caller probes the host.
pub const PROBE_AFTER: Duration = Duration::from_millis(1500);
/// Silence after which the caller gives the invoke up as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(4);

/// Every reply to this host's forwarded invokes, handed to the invoke waiting for it.
pub struct Replies {
    prefix: String,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    next: AtomicU64,
}

/// One invoke's replies; dropping it stops their delivery.
pub struct Inbox {
    pub subject: String,
    receiver: mpsc::UnboundedReceiver<Message>,
    replies: Arc<Replies>,
    token: u64,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.token);
    }
}

impl Replies {
    /// Subscribes to this host's inbox subjects and delivers what arrives.
    pub async fn start(client: &Client) -> Result<Arc<Replies>, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut subscription = client.subscribe(format!("{prefix}.*")).await?;
        let replies = Arc::new(Replies {
            prefix,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&replies);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(replies) = weak.upgrade() else {
                    return;
                };
                let token = message
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(sender) = token.and_then(|t| replies.lock().get(&t).cloned()) {
                    let _ = sender.send(message);
                }
            }
        });
        Ok(replies)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Message>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(self: &Arc<Self>) -> Inbox {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().insert(token, sender);
        Inbox {
            subject: format!("{}.{token}", self.prefix),
            receiver,
            replies: Arc::clone(self),
            token,
        }
    }
}

/// Why an invoke did not run on a host that is there and may take it if asked again: its
/// message was lost with a server.
pub const NEVER_REACHED: &str = "the invoke never reached the host";

/// How a forwarded invoke ended, as the caller sees it.
#[derive(Debug)]
pub enum Sent {
    Done {
        outcome: Outcome,
        tail: Option<Vec<u8>>,
    },
    /// Not run there (busy, cannot run it, no one listening): another host may.
    NotRun(String),
    /// The caller's answer: it started and was lost, or failed in a way no other host changes.
    Failed(InvokeError),
}

/// Sends `forward` to `subject` and waits for its outcome; `host` (when the subject is one
/// host's) is probed when it falls silent.
pub async fn send(
    client: &Client,
    replies: &Arc<Replies>,
    subject: String,
    host: Option<&str>,
    forward: &Forward,
) -> Sent {
    let mut inbox = replies.open();
    let (headers, body) = forward.encode();
    if let Err(e) = client
        .publish_with_reply_and_headers(subject.clone(), inbox.subject.clone(), headers, body)
        .await
    {
        return Sent::NotRun(format!("cannot send to {subject}: {e}"));
    }
    let name = host.unwrap_or(&subject).to_owned();
    let mut heard = Instant::now();
    let mut probed = false;
    loop {
        let wait = if probed { LOST_AFTER } else { PROBE_AFTER };
        tokio::select! {
            message = inbox.receiver.recv() => {
                let Some(message) = message else {
                    return Sent::Failed(InvokeError::Lost("this host's inbox closed".into()));
                };
                if message.status == Some(StatusCode::NO_RESPONDERS) {
                    return Sent::NotRun(format!("no one listens on {subject}"));
                }
                match Reply::decode(message.headers.as_ref(), message.payload) {
                    Ok(Reply::Alive) => {
                        heard = Instant::now();
                        probed = false;
                    }
                    Ok(Reply::Done { outcome, tail }) => return Sent::Done { outcome, tail },
                    Ok(Reply::Refused(reason)) => return Sent::NotRun(reason),
                    Ok(Reply::Failed(error)) => return Sent::Failed(error),
                    Err(e) => return Sent::Failed(InvokeError::Lost(e.to_string())),
                }
            }
            () = tokio::time::sleep_until(heard + wait) => {
                if probed {
                    return Sent::Failed(InvokeError::Lost(format!(
                        "host {name} stopped answering ({} s without word)",
                        LOST_AFTER.as_secs()
                    )));
                }
                probed = true;
                let Some(host) = host else { continue };
                match probe(client, host, &forward.invocation.request_id).await {
                    Some(Probe::Running) => {
                        heard = Instant::now();
                        probed = false;
                    }
                    Some(Probe::Unknown) => {
                        return Sent::NotRun(NEVER_REACHED.into());
                    }
                    Some(Probe::Finished) => {
                        return Sent::Failed(InvokeError::Lost(format!(
                            "host {host} ran it, and its answer was lost"
                        )));
                    }
                    Some(Probe::Gone) => {
                        return Sent::Failed(InvokeError::Lost(format!(
                            "host {host} is gone (its connection to the cluster closed)"
                        )));
                    }
                    None => {}
                }
            }
        }
    }
}

/// What a host says of one forwarded invoke when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Running,
    Finished,
    /// It never arrived.
    Unknown,
    /// No one answers for the host: its connection is gone.
    Gone,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Running => "running",
            Probe::Finished => "finished",
            Probe::Unknown | Probe::Gone => "unknown",
        }
    }
}

/// Asks `host` about request `request_id`; `None` when no answer came in time.
async fn probe(client: &Client, host: &str, request_id: &str) -> Option<Probe> {
    let request = client.request(
        names::host_ping_subject(host),
        bytes::Bytes::from(request_id.to_owned()),
    );
    match tokio::time::timeout(Duration::from_secs(1), request).await {
        Ok(Ok(answer)) => Some(match answer.payload.as_ref() {
            b"running" => Probe::Running,
            b"finished" => Probe::Finished,
            _ => Probe::Unknown,
        }),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Some(Probe::Gone),
        _ => None,
    }
}
