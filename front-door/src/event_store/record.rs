//! The bytes of a segment file: a header, then records, each framed so that a reader can check
//! it whole before trusting any of it, and find the next good one after damage.
//!
//! ```text
//! segment: MAGIC (14 bytes) VERSION (u16)  record*
//! record:  MARKER (4) | len (u32) | body_crc (u32) | head_crc (u32) | state (8) | body (len)
//! body:    accepted_ms (u64) | request_id (u16 len + bytes) | trace_id, client_context,
//!          cognito_identity (each u32 len + bytes, NONE_LEN for none) | event (the rest)
//! ```
//!
//! Integers are little-endian. `body_crc` is the CRC-32 of the body, `head_crc` that of `len`
//! and `body_crc`, so a damaged length is caught before it is used. `state` is outside both: it
//! is the one field written again, in place, when the event has its outcome (see [`State`]).

/// Every segment starts with these bytes.
pub const MAGIC: &[u8; 14] = b"lambda-events\n";
/// The format written here; a higher one is refused (written by a newer program).
pub const VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 16;
const HEADER_SIZE: usize = 16;

/// Starts every record: bytes that never occur in UTF-8 text, for finding records after damage.
pub const MARKER: [u8; 4] = [0xFE, 0xFF, 0xEE, 0x01];
/// The fixed part of a record before its body.
pub const FRAME_LEN: u64 = 24;
pub const FRAME_SIZE: usize = 24;
/// Where the state is, from the record's start.
pub const STATE_OFFSET: u64 = 16;
/// No record body is larger: an event (1 MiB at most) and its headers fit with room to spare.
/// A length beyond it is damage, never an allocation.
pub const MAX_BODY: u32 = 8 << 20;

const NONE_LEN: u32 = u32::MAX;

/// An event's state, the record's one mutable field: eight bytes, all [`PENDING`] or all
/// [`DONE`]. Damage to any of them (or a write of it torn by a power cut) leaves it neither,
/// and such an event is taken as pending: it runs again rather than being lost. No damage to
/// one byte can turn one state into the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted, without an outcome yet.
    Pending,
    /// It ran, or its failure was recorded: never to run again.
    Done,
    /// Neither: damaged.
    Unknown,
}

pub const PENDING: [u8; 8] = [0xA5; 8];
pub const DONE: [u8; 8] = [0x3C; 8];

impl State {
    pub fn from_bytes(bytes: &[u8]) -> State {
        if bytes == PENDING {
            State::Pending
        } else if bytes == DONE {
            State::Done
        } else {
            State::Unknown
        }
    }
}

/// The segment header.
pub fn header() -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[..14].copy_from_slice(MAGIC);
    header[14..].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// What is wrong with a segment's header, if anything.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("empty (0 bytes), though a segment is never written empty".into());
    }
    if bytes.len() < HEADER_SIZE || &bytes[..14] != MAGIC {
        return Err("not an event store segment (its header is wrong or cut short)".into());
    }
    let version = u16::from_le_bytes([bytes[14], bytes[15]]);
    if version > VERSION {
        return Err(format!(
            "written in format {version} by a newer program (this one reads {VERSION})"
        ));
    }
    Ok(())
}

/// A record's frame, read before its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub len: u32,
    pub body_crc: u32,
    pub state: State,
}

impl Frame {
    /// The frame in `bytes` (at least [`FRAME_LEN`] of them), if it is one: the marker, a
    /// length within [`MAX_BODY`], and a head CRC that matches.
    pub fn parse(bytes: &[u8]) -> Option<Frame> {
        let bytes = bytes.get(..FRAME_SIZE)?;
        if bytes[..4] != MARKER {
            return None;
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let (len, body_crc, head_crc) = (word(4), word(8), word(12));
        if len > MAX_BODY || head_crc != crc32fast::hash(&bytes[4..12]) {
            return None;
        }
        Some(Frame {
            len,
            body_crc,
            state: State::from_bytes(&bytes[16..24]),
        })
    }

    /// The whole record's length.
    pub fn record_len(&self) -> u64 {
        FRAME_LEN + u64::from(self.len)
    }
}

/// One event, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub accepted_ms: u64,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    pub event: bytes::Bytes,
}

/// Why a record's body is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("its checksum does not match")]
    Checksum,
    #[error("it is cut short or malformed")]
    Malformed,
    #[error("it is too large to keep ({0} bytes)")]
    TooLarge(usize),
}

/// The whole record for `event`, pending.
pub fn encode(event: &Event) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::with_capacity(event.event.len() + 64);
    body.extend_from_slice(&event.accepted_ms.to_le_bytes());
    let id = event.request_id.as_bytes();
    let id_len = u16::try_from(id.len()).map_err(|_| BodyError::TooLarge(id.len()))?;
    body.extend_from_slice(&id_len.to_le_bytes());
    body.extend_from_slice(id);
    for field in [
        &event.trace_id,
        &event.client_context,
        &event.cognito_identity,
    ] {
        match field {
            None => body.extend_from_slice(&NONE_LEN.to_le_bytes()),
            Some(value) => {
                let len = u32::try_from(value.len())
                    .ok()
                    .filter(|&n| n != NONE_LEN)
                    .ok_or(BodyError::TooLarge(value.len()))?;
                body.extend_from_slice(&len.to_le_bytes());
                body.extend_from_slice(value.as_bytes());
            }
        }
    }
    body.extend_from_slice(&event.event);
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_BODY)
        .ok_or(BodyError::TooLarge(body.len()))?;
    let body_crc = crc32fast::hash(&body);
    let mut record = Vec::with_capacity(body.len() + FRAME_SIZE);
    record.extend_from_slice(&MARKER);
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc32fast::hash(&record[4..12]);
    record.extend_from_slice(&head_crc.to_le_bytes());
    record.extend_from_slice(&PENDING);
    record.extend_from_slice(&body);
    Ok(record)
}

/// What the index needs of a body: its time and id, from the body's first bytes.
pub fn decode_key(body: &[u8]) -> Result<(u64, String), BodyError> {
    let mut reader = Reader(body);
    let accepted_ms = reader.u64()?;
    let id_len = usize::from(reader.u16()?);
    let id = String::from_utf8(reader.take(id_len)?.to_vec()).map_err(|_| BodyError::Malformed)?;
    Ok((accepted_ms, id))
}

/// The event in a whole body whose CRC is `crc`.
pub fn decode(body: bytes::Bytes, crc: u32) -> Result<Event, BodyError> {
    if crc32fast::hash(&body) != crc {
        return Err(BodyError::Checksum);
    }
    let mut reader = Reader(&body);
    let accepted_ms = reader.u64()?;
    let id_len = usize::from(reader.u16()?);
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| BodyError::Malformed);
    let request_id = text(reader.take(id_len)?)?;
    let mut optional = || -> Result<Option<String>, BodyError> {
        match reader.u32()? {
            NONE_LEN => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| BodyError::Malformed)?;
                text(reader.take(len)?).map(Some)
            }
        }
    };
    let (trace_id, client_context, cognito_identity) = (optional()?, optional()?, optional()?);
    let start = body.len() - reader.0.len();
    Ok(Event {
        accepted_ms,
        request_id,
        trace_id,
        client_context,
        cognito_identity,
        event: body.slice(start..),
    })
}

/// Reads a body's fields front to back, never past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        if n > self.0.len() {
            return Err(BodyError::Malformed);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u16(&mut self) -> Result<u16, BodyError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, BodyError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, BodyError> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &'static [u8]) -> Event {
        Event {
            accepted_ms: 1_700_000_000_123,
            request_id: "8f0c0c6e-1b1a-4f51-9d7c-1a2b3c4d5e6f".into(),
            trace_id: Some("Root=1-abc".into()),
            client_context: None,
            cognito_identity: Some(String::new()),
            event: bytes::Bytes::from_static(body),
        }
    }

    #[test]
    fn records_round_trip_byte_for_byte() {
        // Not UTF-8, a marker inside, and the two state values.
        let original = event(b"\"\xff\xfe\xc3\x28\" \xFE\xFF\xEE\x01 \xA5\x3C");
        let record = encode(&original).unwrap();
        let frame = Frame::parse(&record).unwrap();
        assert_eq!(frame.state, State::Pending);
        assert_eq!(frame.record_len(), record.len() as u64);
        let body = bytes::Bytes::copy_from_slice(&record[FRAME_SIZE..]);
        assert_eq!(
            decode_key(&body).unwrap(),
            (original.accepted_ms, original.request_id.clone())
        );
        assert_eq!(decode(body, frame.body_crc).unwrap(), original);
    }

    #[test]
    fn damage_anywhere_is_caught_and_never_panics() {
        let record = encode(&event(b"{\"k\":[1,2,3]}")).unwrap();
        for at in 0..record.len() {
            if (STATE_OFFSET..FRAME_LEN).contains(&(at as u64)) {
                continue;
            }
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut damaged = record.clone();
                damaged[at] ^= flip;
                let Some(frame) = Frame::parse(&damaged) else {
                    continue;
                };
                let body = bytes::Bytes::copy_from_slice(&damaged[FRAME_SIZE..]);
                assert!(
                    decode(body, frame.body_crc).is_err(),
                    "byte {at} ^ {flip:#x}"
                );
            }
        }
        // Cut short anywhere.
        for len in 0..record.len() {
            let cut = &record[..len];
            if let Some(frame) = Frame::parse(cut) {
                let body = bytes::Bytes::copy_from_slice(&cut[FRAME_SIZE..]);
                assert!(len < FRAME_SIZE + frame.len as usize);
                assert!(decode(body, frame.body_crc).is_err());
            }
        }
    }

    #[test]
    fn headers_are_told_apart() {
        assert!(check_header(&header()).is_ok());
        assert!(check_header(b"").unwrap_err().contains("empty"));
        assert!(check_header(b"redb\x1a\x0a\xa9\x0d\x0a....").is_err());
        let mut newer = header();
        newer[14] = 9;
        assert!(check_header(&newer).unwrap_err().contains("newer"));
    }
}
