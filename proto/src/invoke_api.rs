//! The invoke endpoint of the AWS Runtime Interface Emulator, with Lambda's `Invoke` semantics.

/// The one path the emulator serves for invokes (the function name is always `function`).
pub const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

pub mod header {
    /// `RequestResponse` (default, synchronous), `Event` (asynchronous) or `DryRun`.
    pub const INVOCATION_TYPE: &str = "X-Amz-Invocation-Type";
    /// Set to `Unhandled` on a synchronous response when the function failed.
    pub const FUNCTION_ERROR: &str = "X-Amz-Function-Error";
    /// Base64 client context, passed to the runtime as `Lambda-Runtime-Client-Context`.
    pub const CLIENT_CONTEXT: &str = "X-Amz-Client-Context";
    /// Lambda's request id for the invoke; returned on every invoke response.
    pub const REQUEST_ID: &str = "X-Amzn-RequestId";
    /// An X-Ray trace header to pass through to the runtime.
    pub const TRACE_ID: &str = "X-Amzn-Trace-Id";
    /// The exception name of an error the service itself returns (the AWS SDKs read the error
    /// code from it).
    pub const ERROR_TYPE: &str = "X-Amzn-ErrorType";
    /// The function version that ran: `$LATEST` here.
    pub const EXECUTED_VERSION: &str = "X-Amz-Executed-Version";
    /// `Tail` asks for the end of the invocation's log in [`LOG_RESULT`].
    pub const LOG_TYPE: &str = "X-Amz-Log-Type";
    /// The last [`super::LOG_RESULT_MAX`] bytes of the invocation's log, base64.
    pub const LOG_RESULT: &str = "X-Amz-Log-Result";
}

pub mod log_type {
    pub const NONE: &str = "None";
    pub const TAIL: &str = "Tail";
}

/// How much of an invocation's log `X-Amz-Log-Type: Tail` returns, as on Lambda.
pub const LOG_RESULT_MAX: usize = 4096;

/// The version every invoke runs here.
pub const LATEST: &str = "$LATEST";

/// The account id in the ARNs the platform hands out (the AWS emulator's).
pub const ACCOUNT_ID: &str = "012345678912";

/// The body of an error the service itself returns (not the function): the Lambda API's shape,
/// with the exception's name in the [`header::ERROR_TYPE`] header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceError {
    /// `User` for the caller's mistakes (4xx), `Service` for the service's own (5xx).
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Message")]
    pub message: String,
    /// Why a `TooManyRequestsException` was raised ([`throttle_reason`]).
    #[serde(rename = "Reason", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ServiceError {
    /// The error for an HTTP `status`: `User` below 500, `Service` from 500.
    pub fn new(status: u16, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind: if status < 500 { "User" } else { "Service" }.into(),
            message: message.into(),
            reason: None,
        }
    }
}

/// The `Reason` of a `TooManyRequestsException`, as Lambda names them.
pub mod throttle_reason {
    /// The function's reserved concurrency is in use.
    pub const RESERVED_FUNCTION: &str = "ReservedFunctionConcurrentInvocationLimitExceeded";
    /// The host-wide (account) concurrency is in use.
    pub const ACCOUNT: &str = "ConcurrentInvocationLimitExceeded";
}

/// A function named in an invoke path: `name`, `name:qualifier`, or a function ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:name[:qualifier]`), as the Lambda API takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef<'a> {
    pub name: &'a str,
    pub qualifier: Option<&'a str>,
}

impl<'a> FunctionRef<'a> {
    /// The function an invoke path (`/2015-03-31/functions/{ref}/invocations`) names.
    pub fn from_invoke_path(path: &'a str) -> Option<FunctionRef<'a>> {
        let reference = path
            .strip_prefix("/2015-03-31/functions/")?
            .strip_suffix("/invocations")?;
        FunctionRef::parse(reference)
    }

    /// The function an `InvokeWithResponseStream` path
    /// (`/2021-11-15/functions/{ref}/response-streaming-invocations`) names.
    pub fn from_stream_path(path: &'a str) -> Option<FunctionRef<'a>> {
        let reference = path
            .strip_prefix("/2021-11-15/functions/")?
            .strip_suffix("/response-streaming-invocations")?;
        FunctionRef::parse(reference)
    }

    /// Parses a function name, `name:qualifier` or function ARN.
    pub fn parse(reference: &'a str) -> Option<FunctionRef<'a>> {
        if reference.is_empty() || reference.contains('/') {
            return None;
        }
        let rest = match reference.strip_prefix("arn:") {
            // arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            Some(arn) => {
                let mut parts = arn.splitn(6, ':');
                let (_partition, service, _region, _account, kind) = (
                    parts.next()?,
                    parts.next()?,
                    parts.next()?,
                    parts.next()?,
                    parts.next()?,
                );
                if service != "lambda" || kind != "function" {
                    return None;
                }
                parts.next()?
            }
            None => reference,
        };
        let (name, qualifier) = match rest.split_once(':') {
            Some((name, qualifier)) => (name, Some(qualifier)),
            None => (rest, None),
        };
        (!name.is_empty() && qualifier != Some("")).then_some(FunctionRef { name, qualifier })
    }

    /// Whether it names the only version served here: no qualifier, or `$LATEST`.
    pub fn is_latest(&self) -> bool {
        matches!(self.qualifier, None | Some(LATEST))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_qualifiers_and_arns_are_understood() {
        let latest = |name| FunctionRef {
            name,
            qualifier: None,
        };
        assert_eq!(
            FunctionRef::from_invoke_path("/2015-03-31/functions/echo/invocations"),
            Some(latest("echo"))
        );
        let arn = "arn:aws:lambda:us-east-1:012345678912:function:echo:$LATEST";
        let parsed = FunctionRef::parse(arn).unwrap();
        assert_eq!((parsed.name, parsed.qualifier), ("echo", Some("$LATEST")));
        assert!(parsed.is_latest());
        let versioned = FunctionRef::parse("echo:3").unwrap();
        assert!(!versioned.is_latest());
        for bad in [
            "",
            "a/b",
            "echo:",
            "arn:aws:s3:::bucket",
            "arn:aws:lambda:r:1:layer:x",
        ] {
            assert_eq!(FunctionRef::parse(bad), None, "{bad}");
        }
        assert_eq!(
            FunctionRef::from_invoke_path("/2015-03-31/functions/x"),
            None
        );
        assert_eq!(
            FunctionRef::from_stream_path(
                "/2021-11-15/functions/echo/response-streaming-invocations"
            ),
            Some(latest("echo"))
        );
        assert_eq!(
            FunctionRef::from_stream_path("/2015-03-31/functions/echo/invocations"),
            None
        );
    }
}

pub mod invocation_type {
    pub const REQUEST_RESPONSE: &str = "RequestResponse";
    pub const EVENT: &str = "Event";
    pub const DRY_RUN: &str = "DryRun";
}

/// Value of [`header::FUNCTION_ERROR`] for a failed invoke.
pub const FUNCTION_ERROR_UNHANDLED: &str = "Unhandled";

/// Error types the invoke endpoint answers with: the exception names of the Lambda API model.
pub mod error_type {
    pub const REQUEST_TOO_LARGE: &str = "RequestTooLargeException";
    pub const INVALID_REQUEST_CONTENT: &str = "InvalidRequestContentException";
    pub const INVALID_PARAMETER: &str = "InvalidParameterValueException";
    pub const RESOURCE_NOT_FOUND: &str = "ResourceNotFoundException";
    pub const SERVICE: &str = "ServiceException";
    pub const TOO_MANY_REQUESTS: &str = "TooManyRequestsException";
}
