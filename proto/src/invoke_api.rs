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

/// A function as the Lambda API names it in a path: `name`, `name:qualifier`, a function ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:name[:qualifier]`) or a partial one
/// (`ACCOUNT:function:name[:qualifier]`, `REGION:ACCOUNT:function:name[:qualifier]`), already
/// percent-decoded. The region and account of an ARN are not checked: this platform has one of
/// each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: String,
    pub qualifier: Option<String>,
}

impl FunctionRef {
    /// Parses a decoded function name, `name:qualifier` or (partial) function ARN; `None` when
    /// it is none of them.
    pub fn parse(reference: &str) -> Option<FunctionRef> {
        let parts: Vec<&str> = reference.split(':').collect();
        let is_account = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
        let rest: &[&str] = match parts.as_slice() {
            // arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            ["arn", partition, "lambda", _region, account, "function", rest @ ..]
                if partition.starts_with("aws") && is_account(account) =>
            {
                rest
            }
            [region, account, "function", rest @ ..]
                if is_account(account) && is_region(region) =>
            {
                rest
            }
            [account, "function", rest @ ..] if is_account(account) => rest,
            ["arn", ..] => return None,
            rest => rest,
        };
        let (name, qualifier) = match rest {
            [name] => (*name, None),
            [name, qualifier] => (*name, Some(*qualifier)),
            _ => return None,
        };
        let word = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !word(name) || qualifier.is_some_and(|q| q != LATEST && !word(q)) {
            return None;
        }
        Some(FunctionRef {
            name: name.to_owned(),
            qualifier: qualifier.map(str::to_owned),
        })
    }

    /// Whether it names the only version served here: no qualifier, or `$LATEST`.
    pub fn is_latest(&self) -> bool {
        matches!(self.qualifier.as_deref(), None | Some(LATEST))
    }
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`: letters and dashes ending in a digit.
fn is_region(s: &str) -> bool {
    s.len() >= 4
        && s.ends_with(|c: char| c.is_ascii_digit())
        && s.contains('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The operations of the Lambda API this platform serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Invoke,
    /// `InvokeWithResponseStream`: the answer is an event stream of the response's chunks.
    InvokeWithResponseStream,
    GetFunction,
    GetFunctionConfiguration,
    ListFunctions,
    GetFunctionConcurrency,
    PutFunctionConcurrency,
    DeleteFunctionConcurrency,
}

/// One request of the Lambda API: the operation and, for all but `ListFunctions`, the
/// function it names, its qualifier taken from the name or the `Qualifier` query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub operation: Operation,
    pub function: Option<FunctionRef>,
}

/// Why a request names no operation or no function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No operation has this method and path.
    #[error("No such API: {method} {path}")]
    NoSuchApi { method: String, path: String },
    /// The path's function name is not a name, `name:qualifier` or a function ARN.
    #[error("Function not found: {0}")]
    BadName(String),
    /// The invoke path with another method than POST.
    #[error("invoke with POST")]
    InvokeNotPost,
    /// The name's qualifier and the `Qualifier` parameter differ.
    #[error(
        "The derived qualifier from the function name does not match the specified qualifier."
    )]
    QualifierMismatch,
}

impl RouteError {
    /// The HTTP status and Lambda exception of the error.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RouteError::NoSuchApi { .. } | RouteError::BadName(_) => {
                (404, error_type::RESOURCE_NOT_FOUND)
            }
            RouteError::QualifierMismatch => (400, error_type::INVALID_PARAMETER),
            RouteError::InvokeNotPost => (405, error_type::INVALID_PARAMETER),
        }
    }
}

/// The API versions (path prefixes) the SDKs call the concurrency operations under:
/// `GetFunctionConcurrency` at 2019-09-30, `Put`/`DeleteFunctionConcurrency` at 2017-10-31
/// (botocore's model); 2015-03-31 is accepted too.
const CONCURRENCY_VERSIONS: [&str; 3] = ["2019-09-30", "2017-10-31", "2015-03-31"];

impl ApiRequest {
    /// The operation `method` on `path` (still percent-encoded, as on the wire) with `query`
    /// asks for.
    pub fn route(method: &str, path: &str, query: Option<&str>) -> Result<ApiRequest, RouteError> {
        let no_such_api = || RouteError::NoSuchApi {
            method: method.to_owned(),
            path: path.to_owned(),
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (operation, name) = match (method, segments.as_slice()) {
            ("GET", ["2015-03-31", "functions"] | ["2015-03-31", "functions", ""]) => {
                return Ok(ApiRequest {
                    operation: Operation::ListFunctions,
                    function: None,
                });
            }
            ("POST", ["2015-03-31", "functions", name, "invocations"]) => (Operation::Invoke, name),
            ("POST", ["2021-11-15", "functions", name, "response-streaming-invocations"]) => {
                (Operation::InvokeWithResponseStream, name)
            }
            (_, ["2015-03-31", "functions", _, "invocations"])
            | (_, ["2021-11-15", "functions", _, "response-streaming-invocations"]) => {
                return Err(RouteError::InvokeNotPost)
            }
            ("GET", ["2015-03-31", "functions", name]) => (Operation::GetFunction, name),
            ("GET", ["2015-03-31", "functions", name, "configuration"]) => {
                (Operation::GetFunctionConfiguration, name)
            }
            (method, [version, "functions", name, "concurrency"])
                if CONCURRENCY_VERSIONS.contains(version) =>
            {
                let operation = match method {
                    "GET" => Operation::GetFunctionConcurrency,
                    "PUT" => Operation::PutFunctionConcurrency,
                    "DELETE" => Operation::DeleteFunctionConcurrency,
                    _ => return Err(no_such_api()),
                };
                (operation, name)
            }
            _ => return Err(no_such_api()),
        };
        let decoded =
            percent_decode(name).ok_or_else(|| RouteError::BadName((*name).to_owned()))?;
        let mut function =
            FunctionRef::parse(&decoded).ok_or_else(|| RouteError::BadName(decoded.clone()))?;
        if let Some(param) = query_param(query.unwrap_or(""), "Qualifier") {
            match &function.qualifier {
                Some(own) if *own != param => return Err(RouteError::QualifierMismatch),
                _ => function.qualifier = Some(param),
            }
        }
        Ok(ApiRequest {
            operation,
            function: Some(function),
        })
    }
}

/// `%XX` decoded; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The value of `name` in a URL query (`a=1&b=2`), percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode(&s.replace('+', " "));
        (decode(key)? == name).then(|| decode(value)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str, qualifier: Option<&str>) -> Option<FunctionRef> {
        Some(FunctionRef {
            name: name.into(),
            qualifier: qualifier.map(Into::into),
        })
    }

    #[test]
    fn names_qualifiers_and_full_and_partial_arns_are_understood() {
        let cases = [
            ("echo", reference("echo", None)),
            ("echo:$LATEST", reference("echo", Some("$LATEST"))),
            ("echo:3", reference("echo", Some("3"))),
            ("function:$LATEST", reference("function", Some("$LATEST"))),
            (
                "arn:aws:lambda:us-east-1:012345678912:function:echo",
                reference("echo", None),
            ),
            (
                "arn:aws:lambda:eu-west-3:123456789012:function:echo:live",
                reference("echo", Some("live")),
            ),
            ("123456789012:function:echo", reference("echo", None)),
            ("123456789012:function:echo:7", reference("echo", Some("7"))),
            (
                "us-west-2:123456789012:function:echo",
                reference("echo", None),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(FunctionRef::parse(text), expected, "{text}");
        }
        for bad in [
            "",
            "a/b",
            "echo:",
            "echo:1:2",
            "arn:aws:s3:::bucket",
            "arn:aws:lambda:r:1:layer:x",
            "arn:aws:lambda:us-east-1:012345678912:function:",
            "sp ace",
        ] {
            assert_eq!(FunctionRef::parse(bad), None, "{bad}");
        }
        assert!(FunctionRef::parse("echo:$LATEST").unwrap().is_latest());
        assert!(!FunctionRef::parse("echo:1").unwrap().is_latest());
    }

    #[test]
    fn invoke_with_response_stream_has_its_own_path() {
        let streamed = ApiRequest::route(
            "POST",
            "/2021-11-15/functions/echo/response-streaming-invocations",
            None,
        )
        .unwrap();
        assert_eq!(streamed.operation, Operation::InvokeWithResponseStream);
        assert_eq!(streamed.function, reference("echo", None));
        let get = ApiRequest::route(
            "GET",
            "/2021-11-15/functions/echo/response-streaming-invocations",
            None,
        );
        assert_eq!(get, Err(RouteError::InvokeNotPost));
    }

    #[test]
    fn routes_decode_the_name_as_the_sdks_encode_it_and_take_the_qualifier_parameter() {
        let invoke = |path, query| ApiRequest::route("POST", path, query);
        let arn = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A012345678912%3Afunction%3Agreeter%3A%24LATEST/invocations";
        assert_eq!(
            invoke(arn, None).unwrap().function,
            reference("greeter", Some("$LATEST"))
        );
        let with_param = invoke(
            "/2015-03-31/functions/greeter/invocations",
            Some("Qualifier=1"),
        );
        assert_eq!(
            with_param.unwrap().function,
            reference("greeter", Some("1"))
        );
        let same = invoke(
            "/2015-03-31/functions/greeter%3A1/invocations",
            Some("Qualifier=1"),
        );
        assert_eq!(same.unwrap().function, reference("greeter", Some("1")));
        assert_eq!(
            invoke(
                "/2015-03-31/functions/greeter%3A1/invocations",
                Some("Qualifier=%24LATEST")
            ),
            Err(RouteError::QualifierMismatch)
        );
        assert!(matches!(
            invoke("/2015-03-31/functions/a%2Fb/invocations", None),
            Err(RouteError::BadName(name)) if name == "a/b"
        ));
    }

    #[test]
    fn every_operation_is_found_at_the_sdks_path() {
        let op = |method, path| ApiRequest::route(method, path, None).map(|r| r.operation);
        assert_eq!(
            op("GET", "/2015-03-31/functions/"),
            Ok(Operation::ListFunctions)
        );
        assert_eq!(
            op("GET", "/2015-03-31/functions"),
            Ok(Operation::ListFunctions)
        );
        assert_eq!(
            op("GET", "/2015-03-31/functions/f"),
            Ok(Operation::GetFunction)
        );
        assert_eq!(
            op("GET", "/2015-03-31/functions/f/configuration"),
            Ok(Operation::GetFunctionConfiguration)
        );
        assert_eq!(
            op("GET", "/2019-09-30/functions/f/concurrency"),
            Ok(Operation::GetFunctionConcurrency)
        );
        assert_eq!(
            op("PUT", "/2017-10-31/functions/f/concurrency"),
            Ok(Operation::PutFunctionConcurrency)
        );
        assert_eq!(
            op("DELETE", "/2017-10-31/functions/f/concurrency"),
            Ok(Operation::DeleteFunctionConcurrency)
        );
        assert_eq!(
            op("POST", "/2015-03-31/functions/f/invocations"),
            Ok(Operation::Invoke)
        );
        assert_eq!(
            op("GET", "/2015-03-31/functions/f/invocations"),
            Err(RouteError::InvokeNotPost)
        );
        assert_eq!(RouteError::InvokeNotPost.status().0, 405);
        for (method, path) in [
            ("POST", "/2015-03-31/functions/f"),
            ("PATCH", "/2019-09-30/functions/f/concurrency"),
            ("GET", "/2020-01-01/functions/f/concurrency"),
            ("GET", "/status"),
        ] {
            assert!(
                matches!(op(method, path), Err(RouteError::NoSuchApi { .. })),
                "{method} {path}"
            );
        }
        assert_eq!(
            query_param("a=1&Qualifier=%24LATEST", "Qualifier").as_deref(),
            Some("$LATEST")
        );
        assert_eq!(query_param("a=1", "Qualifier"), None);
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
    /// A request whose body came too slowly (not in Lambda's model, whose front end never
    /// hands a service half a body; the name follows the AWS SDKs' retryable timeout).
    pub const REQUEST_TIMEOUT: &str = "RequestTimeoutException";
}
