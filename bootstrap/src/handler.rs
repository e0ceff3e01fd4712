//! What a function looks like to the runtime loop: a handler, optional SnapStart hooks, and the
//! error they fail with.

use crate::context::Context;
use crate::error::error_type;
use proto::runtime_api::ErrorRequest;
use std::any::Any;
use std::fmt;

/// A function: a handler called once per invocation, with optional SnapStart hooks.
pub trait Function {
    /// Handles one event and returns the response body.
    fn handle(&mut self, event: &[u8], ctx: &Context) -> Result<Vec<u8>, HandlerError>;

    /// Runs once before the SnapStart snapshot is taken, after init.
    fn before_snapshot(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Runs once after the environment is restored from a SnapStart snapshot.
    fn after_restore(&mut self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A [`Function`] made of a closure, with no SnapStart hooks.
pub struct ServiceFn<F>(F);

/// Makes a [`Function`] of a closure.
pub fn service_fn<F>(f: F) -> ServiceFn<F>
where
    F: FnMut(&[u8], &Context) -> Result<Vec<u8>, HandlerError>,
{
    ServiceFn(f)
}

impl<F> Function for ServiceFn<F>
where
    F: FnMut(&[u8], &Context) -> Result<Vec<u8>, HandlerError>,
{
    fn handle(&mut self, event: &[u8], ctx: &Context) -> Result<Vec<u8>, HandlerError> {
        (self.0)(event, ctx)
    }
}

/// A failed init, invocation or hook, as reported to the Runtime API.
///
/// Any `std::error::Error` converts into one (so `?` works in handlers), taking its type name as
/// the error type and its chain of sources as the stack trace. For that blanket conversion to be
/// coherent this type deliberately does not implement `std::error::Error` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub error_type: String,
    pub message: String,
    pub stack_trace: Vec<String>,
    fatal: bool,
}

impl HandlerError {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            error_type: error_type.into(),
            message: message.into(),
            stack_trace: Vec::new(),
            fatal: false,
        }
    }

    pub fn with_stack_trace(mut self, lines: Vec<String>) -> Self {
        self.stack_trace = lines;
        self
    }

    /// Marks the environment as unusable: after this error is posted for the invocation, the
    /// runtime exits non-zero instead of polling for the next one, so the platform starts afresh.
    pub fn fatal(mut self) -> Self {
        self.fatal = true;
        self
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    /// The error for a caught panic payload.
    pub fn from_panic(payload: &(dyn Any + Send)) -> Self {
        HandlerError::new(error_type::HANDLER_PANIC, logging::panic_message(payload))
    }

    /// The body posted to the Runtime API's error endpoints.
    pub fn to_request(&self) -> ErrorRequest {
        ErrorRequest {
            error_message: self.message.clone(),
            error_type: self.error_type.clone(),
            stack_trace: self.stack_trace.clone(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(format!("caused by: {cause}"));
            source = cause.source();
        }
        HandlerError::new(
            short_type_name(std::any::type_name::<E>()),
            error.to_string(),
        )
        .with_stack_trace(causes)
    }
}

/// `core::num::error::ParseIntError` becomes `ParseIntError`, and every path inside generics is
/// shortened the same way (`Box<dyn core::error::Error>` becomes `Box<dyn Error>`).
fn short_type_name(full: &str) -> String {
    let mut short = String::with_capacity(full.len());
    let mut segment_start = 0;
    for (i, c) in full.char_indices() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            continue;
        }
        short.push_str(last_segment(&full[segment_start..i]));
        short.push(c);
        segment_start = i + c.len_utf8();
    }
    short.push_str(last_segment(&full[segment_start..]));
    short
}

fn last_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not load")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn std_errors_convert_with_a_short_type_name() {
        let e: HandlerError = "x".parse::<u32>().unwrap_err().into();
        assert_eq!(e.error_type, "ParseIntError");
        assert_eq!(e.message, "invalid digit found in string");
        assert!(e.stack_trace.is_empty());
        assert!(!e.is_fatal());
    }

    #[test]
    fn the_source_chain_becomes_the_stack_trace() {
        let e: HandlerError = Outer(std::io::Error::other("disk on fire")).into();
        assert_eq!(e.error_type, "Outer");
        assert_eq!(e.stack_trace, vec!["caused by: disk on fire"]);
        let request = e.to_request();
        assert_eq!(request.error_type, "Outer");
        assert_eq!(request.error_message, "could not load");
        assert_eq!(request.stack_trace, e.stack_trace);
    }

    #[test]
    fn generic_type_names_shorten_every_path() {
        assert_eq!(
            short_type_name("core::num::error::ParseIntError"),
            "ParseIntError"
        );
        assert_eq!(
            short_type_name("alloc::boxed::Box<dyn core::error::Error + core::marker::Send>"),
            "Box<dyn Error + Send>"
        );
        assert_eq!(short_type_name("Plain"), "Plain");
    }

    #[test]
    fn panic_payloads_become_messages() {
        let e = HandlerError::from_panic(&"static str");
        assert_eq!(e.error_type, error_type::HANDLER_PANIC);
        assert_eq!(e.message, "static str");
        let e = HandlerError::from_panic(&String::from("owned"));
        assert_eq!(e.message, "owned");
        let e = HandlerError::from_panic(&42_u8);
        assert_eq!(e.message, "panic with a non-string payload");
    }
}
