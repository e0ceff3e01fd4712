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
}

pub mod invocation_type {
    pub const REQUEST_RESPONSE: &str = "RequestResponse";
    pub const EVENT: &str = "Event";
    pub const DRY_RUN: &str = "DryRun";
}

/// Value of [`header::FUNCTION_ERROR`] for a failed invoke.
pub const FUNCTION_ERROR_UNHANDLED: &str = "Unhandled";

/// Error types the invoke endpoint answers with, as the Lambda service names them.
pub mod error_type {
    pub const REQUEST_TOO_LARGE: &str = "RequestEntityTooLargeException";
    pub const INVALID_REQUEST_CONTENT: &str = "InvalidRequestContentException";
    pub const INVALID_PARAMETER: &str = "InvalidParameterValueException";
    pub const RESOURCE_NOT_FOUND: &str = "ResourceNotFoundException";
    pub const SERVICE: &str = "ServiceException";
    pub const TOO_MANY_REQUESTS: &str = "TooManyRequestsException";
}
