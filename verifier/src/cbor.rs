//! A strict, zero-copy CBOR item reader for the small grammars Confidant reads (the attestation
//! document, and the `user_data` map the protocol crate decodes).
//!
//! `ciborium-ll` decodes each item's header; this module keeps the position itself so that byte and text
//! strings are borrowed from the input (the signature must be checked over the bytes received, never a
//! re-encoding). It accepts definite-length strings only, rejects floats, undefined and other simple
//! values, and never allocates from a length it has not checked against the remaining input.

use ciborium_ll::{Decoder, Header};

/// One CBOR data item's head, with string contents borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    Uint(u64),
    /// A negative integer, encoded as in CBOR: the value is `-1 - n`.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    /// An array of `Some(n)` items, or indefinite-length (`None`, ended by [`Item::Break`]).
    Array(Option<usize>),
    /// A map of `Some(n)` pairs, or indefinite-length (`None`, ended by [`Item::Break`]).
    Map(Option<usize>),
    Tag(u64),
    Bool(bool),
    Null,
    Break,
}

impl Item<'_> {
    /// A short name for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Uint(_) => "unsigned integer",
            Item::Nint(_) => "negative integer",
            Item::Bytes(_) => "byte string",
            Item::Text(_) => "text string",
            Item::Array(_) => "array",
            Item::Map(_) => "map",
            Item::Tag(_) => "tag",
            Item::Bool(_) => "boolean",
            Item::Null => "null",
            Item::Break => "break",
        }
    }
}

/// A reader over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    /// The next item. Errors are short descriptions for `malformed`.
    pub fn read(&mut self) -> Result<Item<'a>, String> {
        let rest = &self.input[self.pos..];
        if rest.is_empty() {
            return Err(format!("truncated: input ends at byte {}", self.pos));
        }
        let mut decoder = Decoder::from(rest);
        let header = decoder.pull().map_err(|e| match e {
            ciborium_ll::Error::Io(_) => {
                format!("truncated: item header at byte {} is cut short", self.pos)
            }
            ciborium_ll::Error::Syntax(_) => {
                format!("invalid CBOR item header at byte {}", self.pos)
            }
        })?;
        let header_len = decoder.offset();
        let start = self.pos + header_len;
        let item = match header {
            Header::Positive(n) => Item::Uint(n),
            Header::Negative(n) => Item::Nint(n),
            Header::Bytes(Some(len)) => Item::Bytes(self.take(start, len)?),
            Header::Text(Some(len)) => {
                let bytes = self.take(start, len)?;
                Item::Text(
                    std::str::from_utf8(bytes)
                        .map_err(|_| format!("text string at byte {} is not UTF-8", self.pos))?,
                )
            }
            Header::Bytes(None) | Header::Text(None) => {
                return Err(format!(
                    "indefinite-length string at byte {} is not allowed",
                    self.pos
                ))
            }
            Header::Array(len) => Item::Array(len),
            Header::Map(len) => Item::Map(len),
            Header::Tag(t) => Item::Tag(t),
            Header::Break => Item::Break,
            Header::Simple(20) => Item::Bool(false),
            Header::Simple(21) => Item::Bool(true),
            Header::Simple(22) => Item::Null,
            Header::Simple(s) => {
                return Err(format!("unsupported simple value {s} at byte {}", self.pos))
            }
            Header::Float(_) => {
                return Err(format!(
                    "unsupported floating-point item at byte {}",
                    self.pos
                ))
            }
        };
        self.pos = match item {
            Item::Bytes(b) => start + b.len(),
            Item::Text(t) => start + t.len(),
            _ => start,
        };
        Ok(item)
    }

    fn take(&self, start: usize, len: usize) -> Result<&'a [u8], String> {
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.input.len())
            .ok_or_else(|| {
                format!(
                    "truncated: string at byte {} claims {len} bytes, {} remain",
                    self.pos,
                    self.input.len().saturating_sub(start)
                )
            })?;
        Ok(&self.input[start..end])
    }

    /// Consumes a break if the next item is one.
    pub fn peek_break(&mut self) -> Result<bool, String> {
        match self.input.get(self.pos) {
            Some(0xff) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(format!("truncated: input ends at byte {}", self.pos)),
        }
    }
}

/// Appends a CBOR head (major type and argument) in shortest form.
pub fn write_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Appends a byte string.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a text string.
pub fn write_text(out: &mut Vec<u8>, text: &str) {
    write_head(out, 3, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_items_and_borrows_strings() {
        // [h'0102', "hi", -35, null, true]
        let input = [0x85, 0x42, 1, 2, 0x62, b'h', b'i', 0x38, 0x22, 0xf6, 0xf5];
        let mut r = Reader::new(&input);
        assert_eq!(r.read(), Ok(Item::Array(Some(5))));
        assert_eq!(r.read(), Ok(Item::Bytes(&[1, 2])));
        assert_eq!(r.read(), Ok(Item::Text("hi")));
        assert_eq!(r.read(), Ok(Item::Nint(34)));
        assert_eq!(r.read(), Ok(Item::Null));
        assert_eq!(r.read(), Ok(Item::Bool(true)));
        assert_eq!(r.remaining(), 0);
        assert!(r.read().unwrap_err().starts_with("truncated"));
    }

    #[test]
    fn written_items_read_back() {
        let mut out = Vec::new();
        for n in [0u64, 23, 24, 255, 256, 65_535, 65_536, 1 << 32] {
            write_head(&mut out, 0, n);
        }
        write_bytes(&mut out, &[7; 300]);
        write_text(&mut out, "kc");
        let mut r = Reader::new(&out);
        for n in [0u64, 23, 24, 255, 256, 65_535, 65_536, 1 << 32] {
            assert_eq!(r.read(), Ok(Item::Uint(n)));
        }
        assert_eq!(r.read(), Ok(Item::Bytes(&[7; 300])));
        assert_eq!(r.read(), Ok(Item::Text("kc")));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn rejects_lengths_beyond_input_floats_and_indefinite_strings() {
        assert!(
            Reader::new(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .read()
                .unwrap_err()
                .starts_with("truncated")
        );
        assert!(Reader::new(&[0xf9, 0, 0])
            .read()
            .unwrap_err()
            .contains("floating"));
        assert!(Reader::new(&[0x5f, 0x41, 0, 0xff])
            .read()
            .unwrap_err()
            .contains("indefinite"));
        assert!(Reader::new(&[0xf7]).read().unwrap_err().contains("simple"));
        assert!(Reader::new(&[0x1c]).read().is_err());
    }
}
