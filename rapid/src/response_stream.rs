//! `POST /invocation/{id}/response` with `Lambda-Runtime-Function-Response-Mode: streaming`: the
//! runtime uploads its response as a chunked body, each chunk passed to the invoker as it
//! arrives, up to [`STREAM_PAYLOAD_LIMIT`] bytes. A stream that fails midway says so in its
//! trailers: `Lambda-Runtime-Function-Error-Type` and `Lambda-Runtime-Function-Error-Body`
//! (Lambda's error JSON, base64).

use crate::sandbox::{ApiReply, Handle, StreamUpload};
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request};
use proto::runtime_api::{function_error_type, header, ErrorRequest, STREAM_PAYLOAD_LIMIT};

/// Serves one streamed response; the answer to the runtime comes once its upload has ended.
pub async fn respond(sandbox: &Handle, request_id: &str, request: Request<Incoming>) -> ApiReply {
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sender = match sandbox.start_stream(request_id, content_type) {
        Ok(sender) => sender,
        Err(refusal) => return refusal,
    };
    let mut body = request.into_body();
    let mut produced = 0usize;
    // Once the invoker has gone, the rest of the upload is read and dropped: the runtime
    // still gets its answer.
    let mut passing = true;
    let upload = loop {
        let frame = match body.frame().await {
            None => break StreamUpload::Complete,
            Some(Err(e)) => break StreamUpload::Truncated(e.to_string()),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                produced += data.len();
                if produced > STREAM_PAYLOAD_LIMIT {
                    break StreamUpload::TooLarge;
                }
                if passing {
                    passing = sender.chunk(data).await;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            break match error_trailers(&trailers) {
                Some(error) => StreamUpload::Failed(error),
                None => StreamUpload::Complete,
            };
        }
    };
    sandbox.finish_stream(request_id, upload, produced as u64)
}

/// The error JSON the trailers of a failed stream carry, if they say it failed. The body is
/// Lambda's error JSON in base64; a body that is not (or no body) becomes one, with the
/// trailer's type.
fn error_trailers(trailers: &HeaderMap) -> Option<Bytes> {
    let text = |name: &str| {
        trailers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let error_type = text(header::FUNCTION_ERROR_TYPE);
    let body = text(header::FUNCTION_ERROR_BODY);
    if error_type.is_none() && body.is_none() {
        return None;
    }
    let error_type = error_type.unwrap_or(function_error_type::STREAM_ERROR);
    let decoded = body
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    match serde_json::from_slice::<ErrorRequest>(&decoded) {
        Ok(mut parsed) => {
            if parsed.error_type.is_empty() {
                parsed.error_type = error_type.to_owned();
            }
            Some(parsed.to_json().into())
        }
        Err(_) => {
            let message = String::from_utf8_lossy(&decoded).into_owned();
            Some(ErrorRequest::new(error_type, message).to_json().into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn parsed(body: Bytes) -> ErrorRequest {
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn error_trailers_become_lambdas_error_json() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(error_trailers(&HeaderMap::new()), None);
        let json = b64(r#"{"errorMessage":"boom","errorType":"ValueError"}"#);
        let error = parsed(
            error_trailers(&trailers(&[
                (header::FUNCTION_ERROR_TYPE, "Runtime.Whatever"),
                (header::FUNCTION_ERROR_BODY, &json),
            ]))
            .unwrap(),
        );
        assert_eq!(
            (error.error_type.as_str(), error.error_message.as_str()),
            ("ValueError", "boom")
        );
        let error = parsed(
            error_trailers(&trailers(&[(
                header::FUNCTION_ERROR_BODY,
                &b64("plain words"),
            )]))
            .unwrap(),
        );
        assert_eq!(error.error_type, "Runtime.StreamError");
        assert_eq!(error.error_message, "plain words");
        let error = parsed(
            error_trailers(&trailers(&[(
                header::FUNCTION_ERROR_TYPE,
                "Custom.Failure",
            )]))
            .unwrap(),
        );
        assert_eq!(error.error_type, "Custom.Failure");
    }
}
