//! The host link: one stream connection between the host (the VMM's function service) and the
//! guest's `init`, over vsock inside a microVM or a Unix socket outside one.
//!
//! # Frames
//!
//! Each frame is a 4-byte big-endian length `N` followed by `N` bytes of JSON: one [`Message`] in
//! serde's externally tagged form (`{"invoke":{...}}`, or `"shutdown"` for a variant without
//! fields). Byte strings (events, bodies, entropy) are [`Blob`]s: standard base64 with padding.
//! `N` is checked against [`MAX_FRAME_LEN`] before anything is allocated; `N = 0` is malformed.
//!
//! # Conversation
//!
//! The guest connects (vsock CID [`HOST_CID`], port [`PORT`]; with Firecracker-style hybrid vsock
//! the host listens on the Unix socket `<uds>_<PORT>`). Both sides send [`Message::Hello`] first
//! and check the other's [`VERSION`] ([`handshake`]). Then the host sends `Invoke`, `Restore` and
//! `Shutdown`; the guest sends `Response`/`Error` (one per `Invoke`, matched by request id;
//! an `Error` says whether the failure reset the environment), `Log` and `InitDone`.
//!
//! A SnapStart guest listens on the same port on its own side from before its snapshot on
//! (before it sends `InitDone`). After a restore the host connects to it (through hybrid vsock:
//! `CONNECT <PORT>\n` on `<uds>`) and sends its `Hello` and then `Restore` at once, in the same
//! write as the connection request, so they reach the guest as soon as its vCPU runs; the
//! guest answers with its `Hello`. A newer connection from the host replaces the current one.
//!
//! A response the runtime streams goes as `ResponseStart`, then a `ResponseChunk` for each
//! chunk as the runtime writes it, then the invocation's `Response` (its body empty: the chunks
//! were the body) or `Error` (the stream broke off).
//!
//! A guest started with timing on (init's `INIT_TIMING=1`, which the host sets on the kernel
//! command line when it logs timings) also sends an [`InvokeTiming`] just before each answer.
//! Hosts that never turn it on never see one.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::{self, Read, Write};

/// The protocol version both sides send in their `Hello`. Bump it on any incompatible change.
/// 2: `Error` frames say whether the environment was reset; no `RuntimeCrashed` frame.
/// 3: streamed responses (`ResponseStart`, `ResponseChunk`).
pub const VERSION: u32 = 3;
/// The vsock port the guest connects to.
pub const PORT: u32 = 9999;
/// The vsock CID of the host (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// The largest event or response body a frame carries: Lambda's synchronous payload limit.
pub const MAX_PAYLOAD_LEN: usize = crate::runtime_api::SYNC_PAYLOAD_LIMIT;
/// Room for everything in a frame besides its payload: request and trace ids, client context,
/// JSON syntax.
pub const FRAME_HEADROOM: usize = 256 * 1024;
/// The largest frame (length prefix excluded): a base64-encoded [`MAX_PAYLOAD_LEN`] payload plus
/// [`FRAME_HEADROOM`]. Larger frames are refused by both the writer and the reader.
pub const MAX_FRAME_LEN: usize = base64_len(MAX_PAYLOAD_LEN) + FRAME_HEADROOM;
/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// The least entropy a `Restore` carries.
pub const MIN_RESTORE_ENTROPY: usize = 32;

/// Length of the padded base64 encoding of `n` bytes.
pub const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// One message on the host link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// Both ways, first on every connection.
    Hello(Hello),
    /// Host to guest: run one invocation.
    Invoke(Invoke),
    /// Guest to host: the invocation succeeded; `body` is the runtime's response.
    Response { request_id: String, body: Blob },
    /// Guest to host: the invocation failed; `body` is Lambda's error JSON
    /// (`{"errorMessage","errorType","stackTrace"}`). `reset` says whether the failure also
    /// reset the execution environment (its runtime was killed or exited), which the host
    /// may answer with a fresh environment.
    Error {
        request_id: String,
        body: Blob,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset: Option<Reset>,
    },
    /// Guest to host: the runtime streams its response (`content_type` is its `Content-Type`);
    /// `ResponseChunk`s follow, then the invocation's `Response` or `Error`.
    ResponseStart {
        request_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
    },
    /// Guest to host: the next chunk of a streamed response, at most [`MAX_PAYLOAD_LEN`] bytes.
    ResponseChunk { request_id: String, body: Blob },
    /// Guest to host: one line of the function's log (the runtime's stdout/stderr and the
    /// platform's START/END/REPORT lines).
    Log { line: String },
    /// Guest to host: a SnapStart init finished and the runtime waits in `restore/next`; the
    /// moment to snapshot. The host answers with `Restore` (at once, or in the restored guest).
    InitDone { init_duration_ms: u64 },
    /// Host to guest: the guest was restored (or is resumed) and must diverge from its siblings:
    /// reseed the kernel RNG with `entropy` and set the wall clock, before anything else runs.
    /// `wall_clock_ms` is the host's time when the VM resumed (milliseconds since the epoch); a
    /// guest whose clock stood still while it was stored adds how long it has run since.
    Restore { entropy: Blob, wall_clock_ms: u64 },
    /// Host to guest: stop the runtime and power off.
    Shutdown,
    /// Guest to host, only from a guest started with timing on: where the guest's part of one
    /// invocation went, sent just before its `Response` or `Error`.
    InvokeTiming(InvokeTiming),
}

/// The guest's side of one invocation, on the guest's monotonic clock: microseconds from the
/// moment the `Invoke` frame was read to each later step. The guest and host clocks differ, so
/// only intervals cross the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeTiming {
    /// The invocation whose answer follows.
    pub request_id: String,
    /// Until the runtime's `GET /next` was answered with the event (0 when unknown).
    pub next_us: u64,
    /// Until the invocation's outcome was ready (the runtime's response or error posted, END
    /// and REPORT queued).
    pub outcome_us: u64,
    /// Until the answer frame was handed to the socket.
    pub sent_us: u64,
}

/// How an invocation's failure reset the execution environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reset {
    /// The invocation ran past its deadline; the runtime was killed.
    Timeout,
    /// The runtime exited during the invocation; `reason` says how.
    RuntimeExit { reason: String },
}

impl Message {
    /// The variant's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Invoke(_) => "invoke",
            Message::Response { .. } => "response",
            Message::Error { .. } => "error",
            Message::ResponseStart { .. } => "response_start",
            Message::ResponseChunk { .. } => "response_chunk",
            Message::Log { .. } => "log",
            Message::InitDone { .. } => "init_done",
            Message::Restore { .. } => "restore",
            Message::Shutdown => "shutdown",
            Message::InvokeTiming(_) => "invoke_timing",
        }
    }
}

/// The first message on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// Who is speaking, for logs: `"init 0.1.0"`, `"vmm 0.1.0"`.
    pub agent: String,
}

impl Hello {
    /// A `Hello` at this crate's [`VERSION`].
    pub fn new(agent: impl Into<String>) -> Hello {
        Hello {
            version: VERSION,
            agent: agent.into(),
        }
    }
}

/// One invocation, as the host hands it to the guest. The deadline is the guest's: it counts the
/// function's configured timeout from the moment the runtime receives the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    pub request_id: String,
    pub event: Blob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The decoded client context JSON (`Lambda-Runtime-Client-Context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cognito_identity: Option<String>,
}

/// Bytes carried in a frame, encoded as a base64 string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Blob {
        Blob(bytes)
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Blob {
        Blob(bytes.to_vec())
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(
            f,
            "Blob({} bytes: {:?}{})",
            self.0.len(),
            String::from_utf8_lossy(shown),
            if self.0.len() > SHOWN { "..." } else { "" }
        )
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        struct Base64Visitor;
        impl Visitor<'_> for Base64Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Blob, E> {
                STANDARD.decode(s).map(Blob).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection at a frame boundary.
    #[error("the host link was closed")]
    Closed,
    /// The connection ended inside a frame.
    #[error("the host link was closed inside a frame: {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    /// A frame longer than [`MAX_FRAME_LEN`].
    #[error("a frame of {len} bytes exceeds the maximum of {MAX_FRAME_LEN} bytes")]
    TooLarge { len: usize },
    /// Not a JSON-encoded [`Message`] (or, when writing, one that does not serialize).
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    /// A zero length prefix.
    #[error("empty frame")]
    Empty,
    #[error("host link I/O failed")]
    Io(#[source] io::Error),
}

/// Why the opening `Hello` exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The first message was not a `Hello`.
    #[error("expected hello first, got {got}")]
    Unexpected { got: &'static str },
    /// The peer speaks another protocol version.
    #[error("the peer ({agent}) speaks host-link version {theirs}, we speak {VERSION}")]
    Version { theirs: u32, agent: String },
}

/// Encodes a message as a whole frame, length prefix included.
pub fn encode(message: &Message) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::new();
    encode_into(&mut frame, message)?;
    Ok(frame)
}

/// Appends a message as a whole frame to `out`, so that several frames can go out in one write.
/// On error `out` is left as it was.
pub fn encode_into(out: &mut Vec<u8>, message: &Message) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; LEN_PREFIX]);
    let written = serde_json::to_writer(&mut *out, message)
        .map_err(FrameError::Malformed)
        .and_then(|()| checked_len(out.len() - start - LEN_PREFIX));
    match written {
        Ok(len) => {
            out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Splits the first whole frame off the front of `bytes` (as read from the stream, length
/// prefixes included): `Ok(None)` while more bytes are needed, else its body and the total
/// length it took. A bad length prefix is an error as soon as its four bytes are there.
pub fn split_frame(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = body_len(*prefix)?;
    Ok(rest.get(..len).map(|body| (body, LEN_PREFIX + len)))
}

/// How many bytes the frame at the front of `bytes` takes in all, once its prefix is there.
pub fn frame_len(bytes: &[u8]) -> Result<Option<usize>, FrameError> {
    match bytes.first_chunk::<LEN_PREFIX>() {
        Some(prefix) => Ok(Some(LEN_PREFIX + body_len(*prefix)?)),
        None => Ok(None),
    }
}

fn checked_len(len: usize) -> Result<u32, FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    u32::try_from(len).map_err(|_| FrameError::TooLarge { len })
}

/// Reads a length prefix and checks it: the number of body bytes to read next.
pub fn body_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    checked_len(len)?;
    Ok(len)
}

/// Decodes a frame body (the bytes after the length prefix).
pub fn decode(body: &[u8]) -> Result<Message, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    serde_json::from_slice(body).map_err(FrameError::Malformed)
}

/// Writes one frame and flushes.
pub fn write_frame<W: Write>(writer: &mut W, message: &Message) -> Result<(), FrameError> {
    let frame = encode(message)?;
    writer.write_all(&frame).map_err(FrameError::Io)?;
    writer.flush().map_err(FrameError::Io)
}

/// Reads one frame. A clean end of stream before the first byte is [`FrameError::Closed`].
pub fn read_frame<R: Read>(reader: &mut R) -> Result<Message, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match fill(reader, &mut prefix)? {
        0 => return Err(FrameError::Closed),
        n if n < LEN_PREFIX => {
            return Err(FrameError::Truncated {
                expected: LEN_PREFIX,
                got: n,
            })
        }
        _ => {}
    }
    let len = body_len(prefix)?;
    let mut body = vec![0u8; len];
    let got = fill(reader, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    decode(&body)
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

/// Checks the peer's opening message: a `Hello` at our [`VERSION`].
pub fn check_hello(message: Message) -> Result<Hello, HandshakeError> {
    match message {
        Message::Hello(hello) if hello.version == VERSION => Ok(hello),
        Message::Hello(hello) => Err(HandshakeError::Version {
            theirs: hello.version,
            agent: hello.agent,
        }),
        other => Err(HandshakeError::Unexpected { got: other.kind() }),
    }
}

/// Sends our `Hello`, reads and checks the peer's. Returns the peer's.
pub fn handshake<S: Read + Write>(stream: &mut S, ours: &Hello) -> Result<Hello, HandshakeError> {
    write_frame(stream, &Message::Hello(ours.clone()))?;
    check_hello(read_frame(stream)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(event: &[u8]) -> Message {
        Message::Invoke(Invoke {
            request_id: "req-1".into(),
            event: event.into(),
            trace_id: Some("Root=1-abc".into()),
            client_context: None,
            cognito_identity: None,
        })
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello(Hello::new("test")),
            invoke(b"{\"a\":1}"),
            Message::Response {
                request_id: "r".into(),
                body: vec![0, 1, 2, 255].into(),
            },
            Message::Error {
                request_id: "r".into(),
                body: b"{}".as_slice().into(),
                reset: None,
            },
            Message::Error {
                request_id: "t".into(),
                body: b"{}".as_slice().into(),
                reset: Some(Reset::Timeout),
            },
            Message::Error {
                request_id: "x".into(),
                body: b"{}".as_slice().into(),
                reset: Some(Reset::RuntimeExit {
                    reason: "exit status 3".into(),
                }),
            },
            Message::ResponseStart {
                request_id: "s".into(),
                content_type: Some("text/plain".into()),
            },
            Message::ResponseChunk {
                request_id: "s".into(),
                body: b"chunk".as_slice().into(),
            },
            Message::Log {
                line: "ünïcödé \u{0} line".into(),
            },
            Message::InitDone {
                init_duration_ms: 12,
            },
            Message::Restore {
                entropy: vec![7u8; MIN_RESTORE_ENTROPY].into(),
                wall_clock_ms: 1_700_000_000_000,
            },
            Message::Shutdown,
            Message::InvokeTiming(InvokeTiming {
                request_id: "r".into(),
                next_us: 120,
                outcome_us: 3400,
                sent_us: 3460,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut wire = Vec::new();
        for message in all_messages() {
            write_frame(&mut wire, &message).unwrap();
        }
        let mut reader = wire.as_slice();
        for message in all_messages() {
            assert_eq!(read_frame(&mut reader).unwrap(), message);
        }
        assert!(matches!(read_frame(&mut reader), Err(FrameError::Closed)));
    }

    #[test]
    fn the_wire_form_is_documented_json() {
        let frame = encode(&Message::Shutdown).unwrap();
        assert_eq!(&frame[..4], &[0, 0, 0, 10]);
        assert_eq!(&frame[4..], b"\"shutdown\"");
        let frame = encode(&invoke(b"hi")).unwrap();
        assert_eq!(
            std::str::from_utf8(&frame[4..]).unwrap(),
            r#"{"invoke":{"request_id":"req-1","event":"aGk=","trace_id":"Root=1-abc"}}"#
        );
    }

    #[test]
    fn frames_are_encoded_back_to_back_and_split_off_the_front() {
        let mut wire = Vec::new();
        for message in all_messages() {
            encode_into(&mut wire, &message).unwrap();
        }
        let before = wire.len();
        let too_big = Message::Log {
            line: "a".repeat(MAX_FRAME_LEN),
        };
        assert!(encode_into(&mut wire, &too_big).is_err());
        assert_eq!(
            wire.len(),
            before,
            "a failed encode leaves the buffer as it was"
        );
        let mut rest = wire.as_slice();
        for message in all_messages() {
            let total = frame_len(rest).unwrap().unwrap();
            // Every cut short of the whole frame asks for more bytes.
            for cut in [0, 1, LEN_PREFIX, total - 1] {
                assert!(split_frame(&rest[..cut]).unwrap().is_none(), "{cut}");
            }
            let (body, taken) = split_frame(rest).unwrap().unwrap();
            assert_eq!(taken, total);
            assert_eq!(decode(body).unwrap(), message);
            rest = &rest[taken..];
        }
        assert!(rest.is_empty());
        assert_eq!(frame_len(&[0, 0]).unwrap(), None);
        assert!(matches!(split_frame(&[0, 0, 0, 0]), Err(FrameError::Empty)));
        assert!(matches!(
            split_frame(&u32::MAX.to_be_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn blobs_are_padded_standard_base64_and_bad_base64_is_refused() {
        let blob = |text: &str| serde_json::from_str::<Blob>(&format!("\"{text}\""));
        assert_eq!(
            serde_json::to_string(&Blob(b"fo".to_vec())).unwrap(),
            "\"Zm8=\""
        );
        assert_eq!(blob("Zm9vYg==").unwrap(), Blob(b"foob".to_vec()));
        let all: Vec<u8> = (0..=255).collect();
        let text = serde_json::to_string(&Blob(all.clone())).unwrap();
        assert_eq!(serde_json::from_str::<Blob>(&text).unwrap(), Blob(all));
        for bad in ["Zg=", "Z===", "Zg==Zm8=", "Zm9*", "Zg\\n="] {
            assert!(blob(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_max_size_payload_fits_in_a_frame() {
        let frame = encode(&Message::Response {
            request_id: "x".repeat(36),
            body: vec![0xffu8; MAX_PAYLOAD_LEN].into(),
        })
        .unwrap();
        assert!(frame.len() - LEN_PREFIX <= MAX_FRAME_LEN);
        assert!(matches!(
            read_frame(&mut frame.as_slice()).unwrap(),
            Message::Response { body, .. } if body.0.len() == MAX_PAYLOAD_LEN
        ));
    }

    #[test]
    fn oversized_frames_are_refused_by_both_ends() {
        let too_big = Message::Log {
            line: "a".repeat(MAX_FRAME_LEN),
        };
        assert!(matches!(encode(&too_big), Err(FrameError::TooLarge { .. })));
        // A huge declared length is refused before its body is read (or allocated).
        let mut wire = u32::MAX.to_be_bytes().to_vec();
        wire.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame(&mut wire.as_slice()),
            Err(FrameError::TooLarge { len }) if len == u32::MAX as usize
        ));
        let max = u32::try_from(MAX_FRAME_LEN).unwrap();
        let just_over = (max + 1).to_be_bytes();
        assert!(matches!(
            body_len(just_over),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(body_len(max.to_be_bytes()).unwrap(), MAX_FRAME_LEN);
    }

    #[test]
    fn truncated_frames_are_told_apart_from_a_clean_close() {
        let frame = encode(&invoke(b"{}")).unwrap();
        assert!(matches!(
            read_frame(&mut &frame[..0]),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut &frame[..2]),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let cut = frame.len() - 3;
        assert!(matches!(
            read_frame(&mut &frame[..cut]),
            Err(FrameError::Truncated { expected, got }) if expected == frame.len() - 4 && got == cut - 4
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        for body in [
            &b"not json"[..],
            b"{\"nope\":{}}",
            b"\"hello\"",
            b"{\"invoke\":{\"request_id\":\"r\",\"event\":\"***\"}}",
            b"{\"invoke\":{\"request_id\":\"r\",\"event\":\"aGk=\"}} trailing",
            b"{\"log\":{\"line\":7}}",
            &[0xff, 0xfe, 0x00],
        ] {
            let mut wire = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
            wire.extend_from_slice(body);
            assert!(
                matches!(
                    read_frame(&mut wire.as_slice()),
                    Err(FrameError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            read_frame(&mut [0u8, 0, 0, 0].as_slice()),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn handshake_checks_the_version_and_the_first_message() {
        struct Duplex {
            input: std::io::Cursor<Vec<u8>>,
            output: Vec<u8>,
        }
        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.input.read(buf)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.output.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let peer = |message: Message| Duplex {
            input: std::io::Cursor::new(encode(&message).unwrap()),
            output: Vec::new(),
        };
        let ours = Hello::new("us");

        let mut ok = peer(Message::Hello(Hello::new("them")));
        assert_eq!(handshake(&mut ok, &ours).unwrap().agent, "them");
        assert_eq!(
            read_frame(&mut ok.output.as_slice()).unwrap(),
            Message::Hello(ours.clone())
        );

        let mut old = peer(Message::Hello(Hello {
            version: VERSION + 1,
            agent: "future".into(),
        }));
        assert!(matches!(
            handshake(&mut old, &ours),
            Err(HandshakeError::Version { theirs, .. }) if theirs == VERSION + 1
        ));

        let mut rude = peer(Message::Shutdown);
        assert!(matches!(
            handshake(&mut rude, &ours),
            Err(HandshakeError::Unexpected { got: "shutdown" })
        ));
    }
}
