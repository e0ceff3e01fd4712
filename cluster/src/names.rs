//! Every name this crate uses on the NATS cluster, in one place: the subjects hosts talk on, the
//! key-value buckets, the object store and the streams. Function names (1 to 64 letters, digits,
//! `-` and `_`) and host ids (the same alphabet, see [`crate::registry::host_id`]) are valid
//! subject tokens and keys as they are.

/// Key-value bucket of live hosts: host id → [`crate::registry::HostRecord`] (JSON), rewritten
/// at every heartbeat, deleted when the host stops.
pub const HOSTS_BUCKET: &str = "lambda-hosts";

/// Core subject every host publishes its record on at each heartbeat (the live view).
pub const HEARTBEATS: &str = "lambda.heartbeat";

/// Key-value bucket of deployed functions: function name → [`crate::catalog::FunctionRecord`].
pub const FUNCTIONS_BUCKET: &str = "lambda-functions";

/// Object store of function artifacts (zip packages, ext4 and cpio images), each named by its
/// SHA-256 ([`artifact_object`]).
pub const ARTIFACTS_STORE: &str = "lambda-artifacts";

/// Key-value bucket of published SnapStart snapshots: [`snapshot_key`] →
/// [`crate::snapshots::SnapshotRecord`] (JSON); the snapshot's files are objects of
/// [`ARTIFACTS_STORE`], named by their SHA-256 as artifacts are.
pub const SNAPSHOTS_BUCKET: &str = "lambda-snapshots";

/// The key of `function`'s snapshot `key` (the host's snapshot key: format, kernel, image,
/// configuration, memory) taken on CPU `cpu` ([`crate::snapshots::HostCpu::id`]).
pub fn snapshot_key(function: &str, key: &str, cpu: &str) -> String {
    format!("{function}.{key}.{cpu}")
}

/// Key-value bucket of asynchronous events that failed at least once: request id → how often
/// the function failed and its last error, so that a redelivered event goes on counting.
pub const ATTEMPTS_BUCKET: &str = "lambda-event-attempts";

/// Stream of accepted asynchronous events (subjects [`events_subject`]), a work queue.
pub const EVENTS_STREAM: &str = "LAMBDA_EVENTS";
/// The durable pull consumer on [`EVENTS_STREAM`] every host takes events from.
pub const EVENTS_CONSUMER: &str = "lambda-hosts";

/// Stream of on-failure destination records (subjects [`failures_subject`]).
pub const FAILURES_STREAM: &str = "LAMBDA_FAILURES";

/// Where a forwarded invoke of any function reaches host `host` itself.
pub fn host_invoke_subject(host: &str) -> String {
    format!("lambda.host.{host}.invoke")
}

/// Where host `host` answers a liveness probe.
pub fn host_ping_subject(host: &str) -> String {
    format!("lambda.host.{host}.ping")
}

/// The subject of `function`'s asynchronous events.
pub fn events_subject(function: &str) -> String {
    format!("lambda.events.{function}")
}

/// The function an event's subject names.
pub fn function_of_event(subject: &str) -> Option<&str> {
    subject.strip_prefix("lambda.events.")
}

/// The subject of `function`'s on-failure destination records.
pub fn failures_subject(function: &str) -> String {
    format!("lambda.failures.{function}")
}

/// The object holding the artifact whose SHA-256 is `digest` (lowercase hex).
pub fn artifact_object(digest: &str) -> String {
    format!("sha256-{digest}")
}

/// NATS headers of a forwarded invoke and of its replies (see [`crate::wire`]).
pub mod header {
    pub const FUNCTION: &str = "Lambda-Function";
    pub const REVISION: &str = "Lambda-Function-Revision";
    pub const REQUEST_ID: &str = "Lambda-Request-Id";
    pub const TRACE_ID: &str = "Lambda-Trace-Id";
    pub const CLIENT_CONTEXT: &str = "Lambda-Client-Context";
    pub const COGNITO_IDENTITY: &str = "Lambda-Cognito-Identity";
    /// `1` when the caller asked for the log tail.
    pub const TAIL: &str = "Lambda-Tail";
    /// `1` when the host may start a new environment for it (else only an idle one will do).
    pub const MAY_START: &str = "Lambda-May-Start";
    /// What a reply is: `alive`, `success`, `failure`, `refused` or `error`.
    pub const REPLY: &str = "Lambda-Reply";
    /// Why: a refusal's or an error's kind.
    pub const REASON: &str = "Lambda-Reason";
    /// The log tail, base64.
    pub const LOG_TAIL: &str = "Lambda-Log-Tail";
    /// JetStream's de-duplication id: the request id, so a publish retried after a lost
    /// acknowledgement stores the event once.
    pub const MSG_ID: &str = "Nats-Msg-Id";
}
