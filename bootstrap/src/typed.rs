//! Handlers on `serde` types: the event is deserialized from JSON before the handler sees it and
//! the response serialized after, so a function is written in its own types rather than bytes.

use crate::context::Context;
use crate::error::error_type;
use crate::handler::{Function, HandlerError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::type_name;
use std::marker::PhantomData;

/// Reads an event as JSON into `T`.
///
/// A failure is the invocation's error, of type [`error_type::UNMARSHAL`], and its message names
/// `T` and says where the JSON went wrong, so the caller learns which shape was expected.
pub fn decode_event<T: DeserializeOwned>(event: &[u8]) -> Result<T, HandlerError> {
    serde_json::from_slice(event).map_err(|e| {
        HandlerError::new(
            error_type::UNMARSHAL,
            format!(
                "could not deserialize the event into {}: {e}",
                type_name::<T>()
            ),
        )
    })
}

/// Writes a response as JSON. Serialization fails only for values JSON cannot hold (a map with
/// non-string keys, a failing custom `Serialize`); that is the invocation's error, of type
/// [`error_type::MARSHAL`].
pub fn encode_response<T: Serialize>(response: &T) -> Result<Vec<u8>, HandlerError> {
    serde_json::to_vec(response).map_err(|e| {
        HandlerError::new(
            error_type::MARSHAL,
            format!(
                "could not serialize the response {} as JSON: {e}",
                type_name::<T>()
            ),
        )
    })
}

/// A [`Function`] made of a closure on `serde` types, with no SnapStart hooks; see [`typed_fn`].
pub struct TypedFn<F, Event, Response> {
    handler: F,
    // `fn(Event) -> Response` rather than the types themselves: the adapter owns neither, so it
    // must not inherit their auto traits or drop checks.
    types: PhantomData<fn(Event) -> Response>,
}

/// Makes a [`Function`] of a closure that takes the event as a `serde` type and returns a
/// `serde` type:
///
/// ```no_run
/// use bootstrap::{run, typed_fn, Context, HandlerError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Order { item: String, quantity: u32 }
///
/// #[derive(Serialize)]
/// struct Receipt { line: String, request_id: String }
///
/// fn handle(order: Order, ctx: &Context) -> Result<Receipt, HandlerError> {
///     Ok(Receipt {
///         line: format!("{} x {}", order.quantity, order.item),
///         request_id: ctx.request_id.clone(),
///     })
/// }
///
/// fn main() -> std::process::ExitCode {
///     run(|| Ok(typed_fn(handle)))
/// }
/// ```
///
/// An event that does not deserialize into `Event` fails the invocation with
/// [`error_type::UNMARSHAL`] before the handler runs. The handler's error may be any type that
/// converts into a [`HandlerError`]: any `std::error::Error` does, reporting its own type name.
pub fn typed_fn<F, Event, Response, E>(handler: F) -> TypedFn<F, Event, Response>
where
    F: FnMut(Event, &Context) -> Result<Response, E>,
    Event: DeserializeOwned,
    Response: Serialize,
    E: Into<HandlerError>,
{
    TypedFn {
        handler,
        types: PhantomData,
    }
}

impl<F, Event, Response, E> Function for TypedFn<F, Event, Response>
where
    F: FnMut(Event, &Context) -> Result<Response, E>,
    Event: DeserializeOwned,
    Response: Serialize,
    E: Into<HandlerError>,
{
    fn handle(&mut self, event: &[u8], ctx: &Context) -> Result<Vec<u8>, HandlerError> {
        let event = decode_event(event)?;
        let response = (self.handler)(event, ctx).map_err(Into::into)?;
        encode_response(&response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde::Deserialize;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[derive(Debug, Deserialize)]
    struct Order {
        item: String,
        quantity: u32,
    }

    #[derive(Debug, Serialize)]
    struct Receipt {
        line: String,
        request_id: String,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot order {0} of anything")]
    struct QuantityError(u32);

    fn context() -> Context {
        Context {
            request_id: "req-1".into(),
            deadline_ms: 1_700_000_000_000,
            invoked_function_arn: "arn:aws:lambda:us-east-1:1:function:fn".into(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
            env_config: Arc::new(Config::default()),
        }
    }

    fn order_fn() -> impl Function {
        typed_fn(|order: Order, ctx: &Context| {
            if order.quantity == 0 {
                return Err(QuantityError(order.quantity));
            }
            Ok(Receipt {
                line: format!("{} x {}", order.quantity, order.item),
                request_id: ctx.request_id.clone(),
            })
        })
    }

    #[test]
    fn a_good_event_round_trips_through_the_types() {
        let response = order_fn()
            .handle(br#"{"item":"tea","quantity":2}"#, &context())
            .unwrap();
        let response: serde_json::Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(
            response,
            serde_json::json!({"line": "2 x tea", "request_id": "req-1"})
        );
    }

    #[test]
    fn a_malformed_event_is_an_unmarshal_error_naming_the_type() {
        let mut function = order_fn();
        for (event, detail) in [
            (&br#"{"item":"tea"}"#[..], "missing field `quantity`"),
            (br#"{"item":"tea","quantity":-1}"#, "invalid value"),
            (b"not json", "expected ident"),
            (b"", "EOF while parsing"),
        ] {
            let error = function.handle(event, &context()).unwrap_err();
            assert_eq!(error.error_type, error_type::UNMARSHAL, "{error}");
            assert!(
                error.message.contains(type_name::<Order>()),
                "{}",
                error.message
            );
            assert!(error.message.contains(detail), "{}", error.message);
            assert!(!error.is_fatal());
        }
    }

    #[test]
    fn the_handlers_own_error_keeps_its_type_name() {
        let error = order_fn()
            .handle(br#"{"item":"tea","quantity":0}"#, &context())
            .unwrap_err();
        assert_eq!(error.error_type, "QuantityError");
        assert_eq!(error.message, "cannot order 0 of anything");
    }

    #[test]
    fn a_handler_error_passes_through_unchanged() {
        let mut function = typed_fn(|_: serde_json::Value, _: &Context| {
            Err::<(), _>(HandlerError::new("Custom", "no").fatal())
        });
        let error = function.handle(b"{}", &context()).unwrap_err();
        assert_eq!(error.error_type, "Custom");
        assert!(error.is_fatal());
    }

    #[test]
    fn an_unserializable_response_is_a_marshal_error() {
        // JSON object keys must be strings; serde_json refuses a map keyed by tuples.
        let mut function =
            typed_fn(|_: (), _: &Context| Ok::<_, HandlerError>(HashMap::from([((1, 2), "pair")])));
        let error = function.handle(b"null", &context()).unwrap_err();
        assert_eq!(error.error_type, error_type::MARSHAL);
        assert!(error.message.contains("HashMap"), "{}", error.message);
    }

    #[test]
    fn helpers_work_on_their_own() {
        let order: Order = decode_event(br#"{"item":"a","quantity":1}"#).unwrap();
        assert_eq!((order.item.as_str(), order.quantity), ("a", 1));
        assert_eq!(encode_response(&[1, 2]).unwrap(), b"[1,2]");
    }
}
