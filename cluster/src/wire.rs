//! A forwarded invoke on the wire: one NATS message to the host (the event as its body, the
//! rest in headers, [`Forward`]), and the messages that host sends back to the caller's inbox
//! ([`Reply`]): `alive` while it runs, then one final answer. The body is the bytes as they
//! are: a 6 MB event or response is not re-encoded.

use crate::names::header;
use async_nats::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use proto::invoke::{Invocation, InvokeError, Outcome};
use proto::invoke_api::throttle_reason;

/// An invoke sent to another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub function: String,
    /// The functions bucket's revision of the record the caller routed by: the host runs that
    /// deploy or a later one.
    pub revision: u64,
    pub invocation: Invocation,
    /// Whether the caller asked for the log tail.
    pub tail: bool,
    /// Whether the host may start a new environment for it (else an idle one only).
    pub may_start: bool,
}

/// Why a message is not a well-formed forward or reply.
#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct Malformed(String);

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

fn required<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Malformed> {
    text(headers, name).ok_or_else(|| Malformed(format!("no {name} header")))
}

impl Forward {
    pub fn encode(&self) -> (HeaderMap, Bytes) {
        let mut headers = invocation_headers(&self.invocation);
        headers.insert(header::FUNCTION, self.function.as_str());
        headers.insert(header::REVISION, self.revision.to_string());
        if self.tail {
            headers.insert(header::TAIL, "1");
        }
        if self.may_start {
            headers.insert(header::MAY_START, "1");
        }
        (headers, self.invocation.event.clone())
    }

    pub fn decode(headers: Option<&HeaderMap>, body: Bytes) -> Result<Forward, Malformed> {
        let headers = headers.ok_or_else(|| Malformed("no headers".into()))?;
        let revision = required(headers, header::REVISION)?
            .parse()
            .map_err(|_| Malformed("bad revision".into()))?;
        Ok(Forward {
            function: required(headers, header::FUNCTION)?.to_owned(),
            revision,
            invocation: invocation_from(headers, body)?,
            tail: text(headers, header::TAIL) == Some("1"),
            may_start: text(headers, header::MAY_START) == Some("1"),
        })
    }
}

/// An invocation from the headers of a forward or a stored event, with its body.
pub fn invocation_from(headers: &HeaderMap, event: Bytes) -> Result<Invocation, Malformed> {
    let owned = |name| text(headers, name).map(str::to_owned);
    Ok(Invocation {
        request_id: required(headers, header::REQUEST_ID)?.to_owned(),
        event,
        trace_id: owned(header::TRACE_ID),
        client_context: owned(header::CLIENT_CONTEXT),
        cognito_identity: owned(header::COGNITO_IDENTITY),
    })
}

/// The headers that carry an invocation (all but its event) in a stored event, with the
/// request id as JetStream's de-duplication id.
pub fn invocation_headers(invocation: &Invocation) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::REQUEST_ID, invocation.request_id.as_str());
    headers.insert(header::MSG_ID, invocation.request_id.as_str());
    let optional = [
        (header::TRACE_ID, &invocation.trace_id),
        (header::CLIENT_CONTEXT, &invocation.client_context),
        (header::COGNITO_IDENTITY, &invocation.cognito_identity),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            headers.insert(name, value.as_str());
        }
    }
    headers
}

/// What a host sends back about a forwarded invoke.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// It is still running (sent every [`crate::forward::ALIVE_EVERY`]).
    Alive,
    /// Its outcome, and the log tail when it was asked for.
    Done {
        outcome: Outcome,
        tail: Option<Vec<u8>>,
    },
    /// Not run: the caller tries another host.
    Refused(String),
    /// Started, or could not start for a reason no other host changes: the caller's answer.
    Failed(InvokeError),
}

const ALIVE: &str = "alive";
const SUCCESS: &str = "success";
const FAILURE: &str = "failure";
const REFUSED: &str = "refused";
const ERROR: &str = "error";

impl Reply {
    pub fn encode(&self) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        let body = match self {
            Reply::Alive => {
                headers.insert(header::REPLY, ALIVE);
                Bytes::new()
            }
            Reply::Done { outcome, tail } => {
                let (kind, body) = match outcome {
                    Outcome::Success(body) => (SUCCESS, body.clone()),
                    Outcome::Failure { body, .. } => (FAILURE, body.clone()),
                };
                headers.insert(header::REPLY, kind);
                if let Some(tail) = tail {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(tail);
                    headers.insert(header::LOG_TAIL, encoded);
                }
                body
            }
            Reply::Refused(reason) => {
                headers.insert(header::REPLY, REFUSED);
                headers.insert(header::REASON, one_line(reason));
                Bytes::new()
            }
            Reply::Failed(error) => {
                headers.insert(header::REPLY, ERROR);
                let reason = match error {
                    InvokeError::QueueFull => "queue-full".to_owned(),
                    InvokeError::Throttled { reason } => format!("throttled:{reason}"),
                    InvokeError::ShutDown => "shut-down".to_owned(),
                    InvokeError::Lost(why) => format!("lost:{}", one_line(why)),
                };
                headers.insert(header::REASON, reason);
                Bytes::new()
            }
        };
        (headers, body)
    }

    pub fn decode(headers: Option<&HeaderMap>, body: Bytes) -> Result<Reply, Malformed> {
        let headers = headers.ok_or_else(|| Malformed("a reply without headers".into()))?;
        let reason = || text(headers, header::REASON).unwrap_or("").to_owned();
        let tail = match text(headers, header::LOG_TAIL) {
            None => None,
            Some(encoded) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| Malformed("bad log tail".into()))?,
            ),
        };
        Ok(match required(headers, header::REPLY)? {
            ALIVE => Reply::Alive,
            SUCCESS => Reply::Done {
                outcome: Outcome::Success(body),
                tail,
            },
            FAILURE => Reply::Done {
                outcome: Outcome::failure(body),
                tail,
            },
            REFUSED => Reply::Refused(reason()),
            ERROR => {
                let reason = reason();
                Reply::Failed(match reason.split_once(':') {
                    Some(("throttled", which)) => InvokeError::Throttled {
                        reason: if which == throttle_reason::RESERVED_FUNCTION {
                            throttle_reason::RESERVED_FUNCTION
                        } else {
                            throttle_reason::ACCOUNT
                        },
                    },
                    Some(("lost", why)) => InvokeError::Lost(why.to_owned()),
                    _ if reason == "queue-full" => InvokeError::QueueFull,
                    _ if reason == "shut-down" => InvokeError::ShutDown,
                    _ => return Err(Malformed(format!("unknown error {reason:?}"))),
                })
            }
            other => return Err(Malformed(format!("unknown reply {other:?}"))),
        })
    }
}

/// A header value cannot hold a line break.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_round_trips() {
        let mut invocation = Invocation::new(Bytes::from_static(br#"{"k":1}"#));
        invocation.trace_id = Some("Root=1-abc;Sampled=1".into());
        invocation.client_context = Some(r#"{"custom":{"a":"b"}}"#.into());
        let forward = Forward {
            function: "echo".into(),
            revision: 7,
            invocation,
            tail: true,
            may_start: false,
        };
        let (headers, body) = forward.encode();
        assert_eq!(Forward::decode(Some(&headers), body).unwrap(), forward);
        assert!(Forward::decode(None, Bytes::new()).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Alive,
            Reply::Done {
                outcome: Outcome::Success(Bytes::from_static(b"\"ok\"")),
                tail: Some(b"START RequestId: r\nline\n".to_vec()),
            },
            Reply::Done {
                outcome: Outcome::failure(Bytes::from_static(br#"{"errorType":"E"}"#)),
                tail: None,
            },
            Reply::Refused("no environment free".into()),
            Reply::Failed(InvokeError::QueueFull),
            Reply::Failed(InvokeError::ShutDown),
            Reply::Failed(InvokeError::Throttled {
                reason: throttle_reason::RESERVED_FUNCTION,
            }),
            Reply::Failed(InvokeError::Lost("host h stopped answering".into())),
        ];
        for reply in replies {
            let (headers, body) = reply.encode();
            assert_eq!(Reply::decode(Some(&headers), body).unwrap(), reply);
        }
    }
}
