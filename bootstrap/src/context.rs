//! The per-invocation context, built from the `Lambda-Runtime-*` headers of `/next`.

use crate::config::Config;
use crate::error::ContextError;
use proto::runtime_api::header;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the platform tells the handler about one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub request_id: String,
    /// When the invocation times out, in milliseconds since the Unix epoch.
    pub deadline_ms: u64,
    pub invoked_function_arn: String,
    /// The X-Ray trace header; also exported as `_X_AMZN_TRACE_ID` while the handler runs.
    pub trace_id: Option<String>,
    /// The caller's client context: JSON, decoded by the Runtime API server from the caller's
    /// base64 `X-Amz-Client-Context`.
    pub client_context: Option<String>,
    /// The caller's Cognito identity, as sent (JSON).
    pub cognito_identity: Option<String>,
    /// The function's static configuration, shared by every invocation.
    pub env_config: Arc<Config>,
}

impl Context {
    /// Builds a context from the headers `get` returns by name.
    ///
    /// Fails when the request id, deadline or function ARN is missing, or when any header is not
    /// UTF-8 or the deadline is not a number; the request id is returned alongside the error when
    /// it was readable, so that the invocation can still be failed.
    pub fn from_headers<'h>(
        get: impl Fn(&str) -> Option<&'h [u8]>,
        env_config: Arc<Config>,
    ) -> Result<Context, (Option<String>, ContextError)> {
        let request_id = required(&get, header::REQUEST_ID).map_err(|e| (None, e))?;
        let rest = || -> Result<Context, ContextError> {
            let deadline = required(&get, header::DEADLINE_MS)?;
            let deadline_ms =
                deadline
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ContextError::NotEpochMillis {
                        name: header::DEADLINE_MS,
                        value: deadline.clone(),
                    })?;
            Ok(Context {
                request_id: request_id.clone(),
                deadline_ms,
                invoked_function_arn: required(&get, header::INVOKED_FUNCTION_ARN)?,
                trace_id: optional(&get, header::TRACE_ID)?,
                client_context: optional(&get, header::CLIENT_CONTEXT)?,
                cognito_identity: optional(&get, header::COGNITO_IDENTITY)?,
                env_config,
            })
        };
        rest().map_err(|e| (Some(request_id.clone()), e))
    }

    /// Time left before the deadline; zero once it has passed.
    pub fn remaining_time(&self) -> Duration {
        // Subtracting durations since the epoch, rather than adding the deadline to the epoch,
        // cannot overflow whatever number the header carried.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Duration::from_millis(self.deadline_ms).saturating_sub(now)
    }
}

fn optional<'h>(
    get: &impl Fn(&str) -> Option<&'h [u8]>,
    name: &'static str,
) -> Result<Option<String>, ContextError> {
    get(name)
        .map(|bytes| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| ContextError::NotUtf8(name))
        })
        .transpose()
}

fn required<'h>(
    get: &impl Fn(&str) -> Option<&'h [u8]>,
    name: &'static str,
) -> Result<String, ContextError> {
    match optional(get, name)? {
        None => Err(ContextError::Missing(name)),
        Some(value) if value.trim().is_empty() => Err(ContextError::Empty(name)),
        Some(value) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:lambda:us-east-1:012345678912:function:fn";

    fn parse(headers: &[(&str, &[u8])]) -> Result<Context, (Option<String>, ContextError)> {
        Context::from_headers(
            |name| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            },
            Arc::new(Config::default()),
        )
    }

    fn complete() -> Vec<(&'static str, &'static [u8])> {
        vec![
            (header::REQUEST_ID, b"req-1"),
            (header::DEADLINE_MS, b"1700000000123"),
            (header::INVOKED_FUNCTION_ARN, ARN.as_bytes()),
            (header::TRACE_ID, b"Root=1-abc;Sampled=1"),
            (header::CLIENT_CONTEXT, br#"{"custom":{}}"#),
            (header::COGNITO_IDENTITY, br#"{"cognitoIdentityId":"id"}"#),
        ]
    }

    #[test]
    fn every_header_reaches_the_context() {
        let ctx = parse(&complete()).unwrap();
        assert_eq!(ctx.request_id, "req-1");
        assert_eq!(ctx.deadline_ms, 1_700_000_000_123);
        assert_eq!(ctx.invoked_function_arn, ARN);
        assert_eq!(ctx.trace_id.as_deref(), Some("Root=1-abc;Sampled=1"));
        assert_eq!(ctx.client_context.as_deref(), Some(r#"{"custom":{}}"#));
        assert_eq!(
            ctx.cognito_identity.as_deref(),
            Some(r#"{"cognitoIdentityId":"id"}"#)
        );
    }

    #[test]
    fn optional_headers_may_be_absent() {
        let headers: Vec<_> = complete().into_iter().take(3).collect();
        let ctx = parse(&headers).unwrap();
        assert_eq!(ctx.trace_id, None);
        assert_eq!(ctx.client_context, None);
        assert_eq!(ctx.cognito_identity, None);
    }

    #[test]
    fn a_missing_or_empty_request_id_leaves_nothing_to_address() {
        let headers: Vec<_> = complete().into_iter().skip(1).collect();
        assert_eq!(
            parse(&headers),
            Err((None, ContextError::Missing(header::REQUEST_ID)))
        );
        let mut headers = complete();
        headers[0].1 = b"  ";
        assert_eq!(
            parse(&headers),
            Err((None, ContextError::Empty(header::REQUEST_ID)))
        );
        headers[0].1 = b"\xff";
        assert_eq!(
            parse(&headers),
            Err((None, ContextError::NotUtf8(header::REQUEST_ID)))
        );
    }

    #[test]
    fn other_bad_headers_keep_the_request_id() {
        let mut headers = complete();
        headers[1].1 = b"soon";
        assert_eq!(
            parse(&headers),
            Err((
                Some("req-1".into()),
                ContextError::NotEpochMillis {
                    name: header::DEADLINE_MS,
                    value: "soon".into()
                }
            ))
        );

        let mut headers = complete();
        headers[3].1 = b"Root=\xc3\x28";
        assert_eq!(
            parse(&headers),
            Err((
                Some("req-1".into()),
                ContextError::NotUtf8(header::TRACE_ID)
            ))
        );

        let headers: Vec<_> = complete()
            .into_iter()
            .filter(|(n, _)| *n != header::INVOKED_FUNCTION_ARN)
            .collect();
        assert_eq!(
            parse(&headers),
            Err((
                Some("req-1".into()),
                ContextError::Missing(header::INVOKED_FUNCTION_ARN)
            ))
        );
    }

    #[test]
    fn negative_or_overflowing_deadlines_are_rejected() {
        for bad in [&b"-1"[..], b"99999999999999999999999", b"1.5"] {
            let mut headers = complete();
            headers[1].1 = bad;
            assert!(matches!(
                parse(&headers),
                Err((Some(_), ContextError::NotEpochMillis { .. }))
            ));
        }
    }

    #[test]
    fn remaining_time_saturates_at_zero() {
        let mut ctx = parse(&complete()).unwrap();
        ctx.deadline_ms = 0;
        assert_eq!(ctx.remaining_time(), Duration::ZERO);
        ctx.deadline_ms = u64::MAX;
        assert!(ctx.remaining_time() > Duration::from_secs(1 << 40));
        let later = SystemTime::now() + Duration::from_secs(60);
        ctx.deadline_ms =
            u64::try_from(later.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        let left = ctx.remaining_time();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
    }
}
