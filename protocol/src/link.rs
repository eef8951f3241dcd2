//! The link between the relay and the enclave: many client streams multiplexed over a few upstream
//! connections, so that no client can use up the enclave's connections and the relay holds a bounded
//! pool. The relay reads only this framing, never what the streams carry (end-to-end frames, which
//! stay encrypted).
//!
//! ```text
//! connection preamble (relay → enclave): "CFDLINK1"
//! link frame: stream id (u32) ‖ kind (u8) ‖ length (u16) ‖ payload      (big-endian)
//! kind: 0 OPEN  (empty)            the relay opens a stream with a new id
//!       1 DATA  (1..=16384 bytes)  bytes of the stream
//!       2 FIN   (empty)            the sender sends nothing more on the stream
//!       3 RESET (empty)            the stream is abandoned (either side)
//! ```
//! A connection that does not begin with the preamble carries one plain stream (what `health` uses).
//! A plain stream's first byte is a frame type, never `C`, so the two cannot be confused.

/// What a link connection begins with.
pub const PREAMBLE: &[u8; 8] = b"CFDLINK1";
/// Largest `DATA` payload.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Bytes before a payload.
pub const HEADER_LEN: usize = 7;

/// What a link frame says about its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Data,
    Fin,
    Reset,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Open => 0,
            Kind::Data => 1,
            Kind::Fin => 2,
            Kind::Reset => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Open,
            1 => Kind::Data,
            2 => Kind::Fin,
            3 => Kind::Reset,
            _ => return None,
        })
    }
}

/// One link frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFrame {
    pub stream: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Why a link's bytes are not link frames (the link is then closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("link frame kind {0} is unknown")]
    UnknownKind(u8),
    #[error("link {0:?} frame with a payload of {1} bytes")]
    BadLength(Kind, usize),
}

/// Appends the frames carrying `data` on `stream` (split into `DATA` frames of at most
/// [`MAX_PAYLOAD`]; nothing for empty data).
pub fn encode_data(stream: u32, data: &[u8], out: &mut Vec<u8>) {
    for piece in data.chunks(MAX_PAYLOAD) {
        encode_header(stream, Kind::Data, piece.len(), out);
        out.extend_from_slice(piece);
    }
}

/// Appends an `OPEN`, `FIN` or `RESET` frame.
pub fn encode_control(stream: u32, kind: Kind, out: &mut Vec<u8>) {
    debug_assert!(kind != Kind::Data);
    encode_header(stream, kind, 0, out);
}

fn encode_header(stream: u32, kind: Kind, len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(kind.byte());
    // `len` is at most MAX_PAYLOAD, well within u16.
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

/// Incremental decoder of link frames.
#[derive(Debug, Default)]
pub struct LinkDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl LinkDecoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` if more bytes are needed. Errors are final.
    pub fn next_frame(&mut self) -> Result<Option<LinkFrame>, LinkError> {
        let b = &self.buf[self.start..];
        if b.len() < HEADER_LEN {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let kind = Kind::from_byte(b[4]).ok_or(LinkError::UnknownKind(b[4]))?;
        let len = usize::from(u16::from_be_bytes([b[5], b[6]]));
        let ok = match kind {
            Kind::Data => (1..=MAX_PAYLOAD).contains(&len),
            _ => len == 0,
        };
        if !ok {
            return Err(LinkError::BadLength(kind, len));
        }
        if b.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = b[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(LinkFrame {
            stream,
            kind,
            payload,
        }))
    }
}

/// Whether `prefix` (the first bytes of a connection) may still be the link preamble.
pub fn may_be_preamble(prefix: &[u8]) -> bool {
    let n = prefix.len().min(PREAMBLE.len());
    prefix[..n] == PREAMBLE[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte_and_data_is_split() {
        let mut wire = Vec::new();
        encode_control(7, Kind::Open, &mut wire);
        let big = vec![9u8; MAX_PAYLOAD + 10];
        encode_data(7, &big, &mut wire);
        encode_data(7, &[], &mut wire);
        encode_control(7, Kind::Fin, &mut wire);
        encode_control(8, Kind::Reset, &mut wire);
        let mut dec = LinkDecoder::default();
        let mut got = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        let kinds: Vec<(u32, Kind, usize)> = got
            .iter()
            .map(|f| (f.stream, f.kind, f.payload.len()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (7, Kind::Open, 0),
                (7, Kind::Data, MAX_PAYLOAD),
                (7, Kind::Data, 10),
                (7, Kind::Fin, 0),
                (8, Kind::Reset, 0),
            ]
        );
    }

    #[test]
    fn malformed_links_are_errors() {
        let mut dec = LinkDecoder::default();
        dec.push(&[0, 0, 0, 1, 9, 0, 0]);
        assert_eq!(dec.next_frame(), Err(LinkError::UnknownKind(9)));
        let mut dec = LinkDecoder::default();
        dec.push(&[0, 0, 0, 1, 0, 0, 3, 1, 2, 3]);
        assert_eq!(dec.next_frame(), Err(LinkError::BadLength(Kind::Open, 3)));
        let mut dec = LinkDecoder::default();
        dec.push(&[0, 0, 0, 1, 1, 0, 0]);
        assert_eq!(dec.next_frame(), Err(LinkError::BadLength(Kind::Data, 0)));
        let mut dec = LinkDecoder::default();
        dec.push(&[0, 0, 0, 1, 1, 0xff, 0xff]);
        assert!(dec.next_frame().is_err(), "oversize");
    }

    #[test]
    fn the_preamble_cannot_be_a_plain_frame() {
        assert!(may_be_preamble(b"CFD"));
        assert!(may_be_preamble(PREAMBLE));
        for t in crate::frame::FrameType::ALL {
            assert!(!may_be_preamble(&[t as u8]));
        }
    }
}
