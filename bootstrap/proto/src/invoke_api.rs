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

/// The body of an error the service itself returns (not the function): the Lambda API's shape,
/// with the exception's name in the [`header::ERROR_TYPE`] header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceError {
    /// `User` for the caller's mistakes (4xx), `Service` for the service's own (5xx).
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Message")]
    pub message: String,
}

impl ServiceError {
    /// The error for an HTTP `status`: `User` below 500, `Service` from 500.
    pub fn new(status: u16, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind: if status < 500 { "User" } else { "Service" }.into(),
            message: message.into(),
        }
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
