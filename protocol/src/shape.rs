//! The traffic shape: what the relay (or anyone on the path) may learn from sizes and timing.
//! Without it, a `CHUNK` per piece of text shows each token's length and time, enough to guess a
//! conversation's topic ("Whisper Leak"). With it (the default; a question may opt out with
//! `"shape": false`):
//!
//! - the client pads each `REQUEST` and `SESSION` body to a size bucket (powers of two from
//!   1 KiB) with JSON whitespace after the question;
//! - the enclave sends the answer as chunks of one fixed size on a fixed cadence from the start of
//!   the exchange — each carrying whatever text is ready (`len (u16) ‖ text ‖ zeros`), or none —
//!   until the answer is done and the number of chunks reaches a bucket; then the final chunk,
//!   its trailer padded with whitespace to one fixed size.
//!
//! So two answers in the same bucket are the same sequence of sizes and gaps, whatever their
//! words, lengths up to the bucket, and token timing. Sizes and the cadence are the enclave's;
//! the client reads any size.

use zeroize::Zeroizing;

use crate::error::ProtocolError;

/// The smallest request bucket.
pub const MIN_REQUEST_BUCKET: usize = 1024;

/// Plaintext bytes of every non-final chunk of a shaped answer: a 2-byte length, then up to
/// `DATA_CHUNK - 2` bytes of text, then zeros.
pub const DATA_CHUNK: usize = 256;

/// Plaintext bytes of a shaped answer's final chunk (the trailer and its receipt, then spaces).
pub const FINAL_CHUNK: usize = 1024;

/// The fewest chunks (the final one included) a shaped answer takes.
pub const MIN_CHUNKS: u64 = 8;

/// The size a body of `len` bytes is padded to: the next power of two, at least
/// [`MIN_REQUEST_BUCKET`]; a body larger than `max` is left as it is (it cannot grow past the
/// frame limit).
pub fn request_bucket(len: usize, max: usize) -> usize {
    let b = len.max(MIN_REQUEST_BUCKET).next_power_of_two();
    if b > max {
        len.max(MIN_REQUEST_BUCKET.min(max))
    } else {
        b
    }
}

/// Pads a question's JSON with trailing spaces (which JSON ignores) so that, with `overhead` bytes
/// of encryption and framing around it, the body fills its bucket.
pub fn pad_request(plaintext: &mut Zeroizing<Vec<u8>>, overhead: usize, max_body: usize) {
    let target = request_bucket(plaintext.len() + overhead, max_body);
    let want = target.saturating_sub(overhead);
    if want > plaintext.len() {
        // Grow in place only within the capacity already reserved, else into a fresh zeroizing
        // buffer, so no unzeroized copy of the question is left behind by a reallocation.
        if plaintext.capacity() < want {
            let mut grown = Zeroizing::new(Vec::with_capacity(want));
            grown.extend_from_slice(plaintext);
            *plaintext = grown;
        }
        plaintext.resize(want, b' ');
    }
}

/// The number of chunks a shaped answer of `n` chunks (the final one included) is padded to: the
/// smallest of 8, 12, 16, 24, 32, 48, … (powers of two and one and a half times them) not below `n`.
/// At most half again the answer's own time; a length within a bucket does not show.
pub fn chunk_bucket(n: u64) -> u64 {
    let mut b = MIN_CHUNKS;
    loop {
        if n <= b {
            return b;
        }
        if n <= b + b / 2 {
            return b + b / 2;
        }
        match b.checked_mul(2) {
            Some(next) => b = next,
            None => return n,
        }
    }
}

/// Takes up to `max` bytes of `pending` text, cut at a character boundary (the text is UTF-8;
/// `max` ≥ 4 always takes at least one character).
pub fn take_text(pending: &mut Zeroizing<Vec<u8>>, max: usize) -> Zeroizing<Vec<u8>> {
    let mut n = pending.len().min(max);
    // A UTF-8 continuation byte (10xxxxxx) cannot start the rest.
    while n < pending.len() && n > 0 && (pending[n] & 0xc0) == 0x80 {
        n -= 1;
    }
    let taken = Zeroizing::new(pending[..n].to_vec());
    pending.drain(..n);
    taken
}

/// A non-final chunk's plaintext: `len (u16, big-endian) ‖ text ‖ zeros`, [`DATA_CHUNK`] bytes.
pub fn encode_data(text: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; DATA_CHUNK]);
    let n = text.len().min(DATA_CHUNK - 2);
    out[..2].copy_from_slice(&(n as u16).to_be_bytes());
    out[2..2 + n].copy_from_slice(&text[..n]);
    out
}

/// The text of a shaped non-final chunk (empty for a chunk sent when none was ready). The length
/// must fit and the padding be zeros: anything else is not what an enclave sends.
pub fn decode_data(plaintext: &[u8]) -> Result<&[u8], ProtocolError> {
    let bad = |m: &str| ProtocolError::MalformedFrame {
        frame: "CHUNK",
        detail: m.into(),
    };
    if plaintext.len() < 2 {
        return Err(bad("a shaped chunk holds at least its length"));
    }
    let n = usize::from(u16::from_be_bytes([plaintext[0], plaintext[1]]));
    let rest = &plaintext[2..];
    if n > rest.len() {
        return Err(bad("a shaped chunk's length exceeds it"));
    }
    if rest[n..].iter().any(|&b| b != 0) {
        return Err(bad("a shaped chunk's padding is not zeros"));
    }
    Ok(&rest[..n])
}

/// Pads a final chunk's trailer with spaces to [`FINAL_CHUNK`] bytes (to a multiple of it, were a
/// trailer ever longer).
pub fn pad_final(mut trailer: Vec<u8>) -> Vec<u8> {
    let target = trailer.len().div_ceil(FINAL_CHUNK).max(1) * FINAL_CHUNK;
    trailer.resize(target, b' ');
    trailer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(request_bucket(10, 262_144), 1024);
        assert_eq!(request_bucket(1025, 262_144), 2048);
        assert_eq!(request_bucket(200_000, 262_144), 262_144);
        assert_eq!(request_bucket(262_145, 262_144), 262_145);
        let got: Vec<u64> = [1, 8, 9, 12, 13, 16, 17, 24, 25, 100]
            .iter()
            .map(|&n| chunk_bucket(n))
            .collect();
        assert_eq!(got, [8, 8, 12, 12, 16, 16, 24, 24, 32, 128]);
    }

    #[test]
    fn requests_fill_their_bucket() {
        for len in [2usize, 900, 1000, 5000] {
            let mut p = Zeroizing::new(vec![b'x'; len]);
            pad_request(&mut p, 100, 262_144);
            assert!((p.len() + 100).is_power_of_two(), "{len}: {}", p.len());
            assert!(p[len..].iter().all(|&b| b == b' '));
        }
    }

    #[test]
    fn text_is_cut_at_characters_and_chunks_round_trip() {
        let mut pending = Zeroizing::new("aé€😀".as_bytes().to_vec());
        let mut pieces = Vec::new();
        while !pending.is_empty() {
            pieces.push(String::from_utf8(take_text(&mut pending, 4).to_vec()).unwrap());
        }
        // Never a character cut in two: "a" + "é" fit 3 of 4 bytes, "€" 3, "😀" 4.
        assert_eq!(pieces, ["aé", "€", "😀"]);
        let c = encode_data("hello".as_bytes());
        assert_eq!(c.len(), DATA_CHUNK);
        assert_eq!(decode_data(&c).unwrap(), b"hello");
        assert_eq!(decode_data(&encode_data(b"")).unwrap(), b"");
        let mut bad = c.to_vec();
        bad[DATA_CHUNK - 1] = 1;
        assert!(decode_data(&bad).is_err());
        bad = c.to_vec();
        bad[0] = 0xff;
        assert!(decode_data(&bad).is_err());
        assert_eq!(pad_final(b"{}".to_vec()).len(), FINAL_CHUNK);
    }
}
