//! The AWS event-stream encoding (`application/vnd.amazon.eventstream`), in which
//! `InvokeWithResponseStream` answers: a sequence of binary messages, each
//!
//! ```text
//! total length (u32 BE) | headers length (u32 BE) | CRC-32 of the 8 bytes before
//! headers | payload | CRC-32 of everything before
//! ```
//!
//! where each header is a 1-byte name length, the name, a type byte (7: string), a u16 BE value
//! length and the value. The AWS SDKs (botocore's `EventStream`) decode it with the operation's
//! model: `PayloadChunk` events carry the function's bytes, one `InvokeComplete` event ends the
//! stream with the error code and details, if any, and the log tail.

use bytes::{BufMut, Bytes, BytesMut};

/// The header value type for a UTF-8 string.
const STRING: u8 = 7;
/// Bytes of a message around its headers and payload: the prelude (two lengths and a CRC) and
/// the closing CRC.
const FRAMING: usize = 12 + 4;

/// One event-stream message with string headers.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut encoded_headers = BytesMut::new();
    for (name, value) in headers {
        // Names and values here are our own short constants; a longer one would be a bug.
        let name_len = u8::try_from(name.len()).unwrap_or(u8::MAX);
        let value_len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        encoded_headers.put_u8(name_len);
        encoded_headers.put_slice(&name.as_bytes()[..usize::from(name_len)]);
        encoded_headers.put_u8(STRING);
        encoded_headers.put_u16(value_len);
        encoded_headers.put_slice(&value.as_bytes()[..usize::from(value_len)]);
    }
    let total = FRAMING + encoded_headers.len() + payload.len();
    let mut out = BytesMut::with_capacity(total);
    // A payload chunk is at most the streaming limit, far below 4 GiB.
    out.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
    out.put_u32(u32::try_from(encoded_headers.len()).unwrap_or(u32::MAX));
    out.put_u32(crc32fast::hash(&out));
    out.put_slice(&encoded_headers);
    out.put_slice(payload);
    out.put_u32(crc32fast::hash(&out));
    out.freeze()
}

/// An event of the stream: `:message-type` `event`, with its type and content type.
fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    message(
        &[
            (":event-type", event_type),
            (":content-type", content_type),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// A `PayloadChunk` event: bytes the function wrote.
pub fn payload_chunk(payload: &[u8]) -> Bytes {
    event("PayloadChunk", "application/octet-stream", payload)
}

/// The `InvokeComplete` event that ends the stream: `error` is the error code and details of a
/// failed invocation, `log_result` the base64 log tail when one was asked for.
pub fn invoke_complete(error: Option<(&str, &str)>, log_result: Option<&str>) -> Bytes {
    let mut body = serde_json::Map::new();
    if let Some((code, details)) = error {
        body.insert("ErrorCode".into(), code.into());
        body.insert("ErrorDetails".into(), details.into());
    }
    if let Some(log) = log_result {
        body.insert("LogResult".into(), log.into());
    }
    let json = serde_json::Value::Object(body).to_string();
    event("InvokeComplete", "application/json", json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes one message, checking both CRCs: (headers, payload, bytes taken).
    fn decode(bytes: &[u8]) -> (Vec<(String, String)>, Vec<u8>, usize) {
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let total = u32_at(0) as usize;
        let headers_len = u32_at(4) as usize;
        assert_eq!(u32_at(8), crc32fast::hash(&bytes[..8]), "prelude CRC");
        assert_eq!(
            u32_at(total - 4),
            crc32fast::hash(&bytes[..total - 4]),
            "message CRC"
        );
        let mut headers = Vec::new();
        let mut at = 12;
        while at < 12 + headers_len {
            let name_len = usize::from(bytes[at]);
            let name = String::from_utf8(bytes[at + 1..at + 1 + name_len].to_vec()).unwrap();
            at += 1 + name_len;
            assert_eq!(bytes[at], STRING);
            let value_len = usize::from(u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]));
            let value = String::from_utf8(bytes[at + 3..at + 3 + value_len].to_vec()).unwrap();
            at += 3 + value_len;
            headers.push((name, value));
        }
        (headers, bytes[at..total - 4].to_vec(), total)
    }

    #[test]
    fn messages_carry_their_headers_payload_and_crcs() {
        let chunk = payload_chunk(b"hello");
        let (headers, payload, taken) = decode(&chunk);
        assert_eq!(taken, chunk.len());
        assert_eq!(payload, b"hello");
        assert!(headers.contains(&(":event-type".into(), "PayloadChunk".into())));
        assert!(headers.contains(&(":message-type".into(), "event".into())));

        let complete = invoke_complete(Some(("Runtime.ExitError", "boom")), Some("bG9n"));
        let (headers, payload, _) = decode(&complete);
        assert!(headers.contains(&(":event-type".into(), "InvokeComplete".into())));
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["ErrorCode"], "Runtime.ExitError");
        assert_eq!(json["ErrorDetails"], "boom");
        assert_eq!(json["LogResult"], "bG9n");
        let (_, payload, _) = decode(&invoke_complete(None, None));
        assert_eq!(payload, b"{}");
    }

    #[test]
    fn a_known_message_encodes_as_the_aws_sdks_expect() {
        // The empty message of the AWS event-stream test vectors: 16 bytes, fixed CRCs.
        let empty = message(&[], b"");
        assert_eq!(
            empty.as_ref(),
            [0, 0, 0, 0x10, 0, 0, 0, 0, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98, 0xc8, 0xff]
        );
    }
}
