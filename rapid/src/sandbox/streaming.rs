//! The environment's side of a streamed response (`Lambda-Runtime-Function-Response-Mode:
//! streaming`): the invoker gets the stream as soon as the runtime starts it, and the
//! invocation ends when the runtime's upload does.

use super::{Answer, ApiReply, Handle, Outcome, ResponseStream, StreamSender};
use crate::report::Status;
use bytes::Bytes;
use proto::runtime_api::{function_error_type, ErrorRequest, STREAM_PAYLOAD_LIMIT};

/// How the runtime's upload of a streamed response ended.
#[derive(Debug)]
pub enum StreamUpload {
    /// The body ended without an error trailer.
    Complete,
    /// The runtime's error trailers: Lambda's error JSON for the invoker.
    Failed(Bytes),
    /// The body broke off (the runtime's connection closed mid-stream).
    Truncated(String),
    /// The runtime wrote more than [`STREAM_PAYLOAD_LIMIT`] bytes.
    TooLarge,
}

impl Handle {
    /// Starts a streamed response for `request_id`: the invoker gets the stream now, and the
    /// runtime's chunks go to the returned sender.
    pub fn start_stream(
        &self,
        request_id: &str,
        content_type: Option<String>,
    ) -> Result<StreamSender, ApiReply> {
        let mut state = self.lock();
        self.check_current(&state, request_id)?;
        let (sender, stream) = ResponseStream::channel(content_type);
        if let Some(current) = state.current.as_mut() {
            if let Some(reply) = current.reply.take() {
                // An invoker that has gone drops the stream: the chunks are then discarded.
                let _ = reply.send(Answer::Stream(stream));
            }
            current.stream = Some(sender.clone());
            current.first_byte = Some(std::time::SystemTime::now());
        }
        Ok(sender)
    }

    /// Ends a streamed response as its upload ended (`produced` bytes). A stream the server
    /// already ended (a timeout, a crash) is left as it is.
    pub fn finish_stream(&self, request_id: &str, upload: StreamUpload, produced: u64) -> ApiReply {
        let mut state = self.lock();
        let current = state
            .current
            .as_mut()
            .filter(|c| c.request_id == request_id && !c.finished && c.stream.is_some());
        let Some(current) = current else {
            return ApiReply::Accepted;
        };
        current.produced_bytes = produced;
        let failure = |error_type: &str, message: String| {
            let body = ErrorRequest::new(error_type, message).to_json();
            (Outcome::failure(body), Status::Error(error_type.into()))
        };
        let (outcome, status, reply) = match upload {
            StreamUpload::Complete => (
                Outcome::Success(Bytes::new()),
                Status::Success,
                ApiReply::Accepted,
            ),
            // A function error, as an error post is: the REPORT line carries no status.
            StreamUpload::Failed(body) => {
                (Outcome::failure(body), Status::Success, ApiReply::Accepted)
            }
            StreamUpload::Truncated(why) => {
                let error_type = function_error_type::TRUNCATED_RESPONSE;
                let message =
                    format!("RequestId: {request_id} Error: the response stream broke off: {why}");
                let (outcome, status) = failure(error_type, message);
                (outcome, status, ApiReply::Accepted)
            }
            StreamUpload::TooLarge => {
                let error_type = function_error_type::RESPONSE_TOO_LARGE;
                let message = format!(
                    "Response payload size exceeded maximum allowed payload size ({STREAM_PAYLOAD_LIMIT} bytes)."
                );
                let (outcome, status) = failure(error_type, message);
                let refusal = ApiReply::Rejected(
                    413,
                    proto::runtime_api::error_type::REQUEST_TOO_LARGE,
                    format!(
                        "Exceeded maximum allowed payload size ({STREAM_PAYLOAD_LIMIT} bytes)."
                    ),
                );
                (outcome, status, refusal)
            }
        };
        self.finish(&mut state, outcome, status);
        self.shared.work.notify_waiters();
        reply
    }
}
