//! Encrypted weights at rest: `model.safetensors.enc`, useless on the parent instance without the
//! `weights_key` that only the attested enclave unseals.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! header:  "CFDWENC1" | chunk size u32 | plaintext length u64 | nonce prefix [7]
//! chunks:  AES-256-GCM(chunk i) | tag [16]      for i in 0..n, n = max(1, ceil(length / chunk size))
//! nonce i: nonce prefix | i u32 | 1 if i is the last chunk else 0      (the STREAM construction)
//! AAD:     the header
//! ```
//!
//! Each chunk is authenticated on its own, the counter fixes its position and the last-chunk flag
//! exposes truncation, so the file is decrypted as it is read (streamed) into memory, never written
//! out in the clear.

use std::io::{Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use confidant_protocol::digest::FileHash;

pub const MAGIC: &[u8; 8] = b"CFDWENC1";
pub const HEADER_LEN: usize = 8 + 4 + 8 + 7;
const TAG_LEN: usize = 16;
/// Chunk size written by [`encrypt`]: large enough that tags cost nothing, small enough to stream.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Bounds a reader's buffer whatever a header claims.
const MAX_CHUNK: u32 = 64 << 20;

/// Why encrypted weights could not be opened or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptedWeightsError {
    #[error("encrypted weights: not a Confidant encrypted-weights file")]
    Magic,
    #[error("encrypted weights: chunk size {0} is outside 1..={MAX_CHUNK}")]
    ChunkSize(u32),
    #[error("encrypted weights: the file ends inside chunk {0} (truncated)")]
    Truncated(u64),
    #[error("encrypted weights: bytes after the last chunk")]
    TrailingBytes,
    #[error("encrypted weights: chunk {0} failed authentication (wrong key, altered, reordered or truncated)")]
    Chunk(u64),
    #[error("encrypted weights: {0}")]
    Io(String),
}

fn key(bytes: &[u8; 32]) -> Result<LessSafeKey, EncryptedWeightsError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| EncryptedWeightsError::Io("AES-256-GCM key".into()))
}

fn nonce(prefix: &[u8; 7], index: u64, last: bool) -> Result<Nonce, EncryptedWeightsError> {
    let index =
        u32::try_from(index).map_err(|_| EncryptedWeightsError::Io("too many chunks".into()))?;
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Ok(Nonce::assume_unique_for_key(n))
}

/// How many chunks hold `len` bytes.
pub fn chunk_count(len: u64, chunk: u32) -> u64 {
    len.div_ceil(u64::from(chunk)).max(1)
}

/// Encrypts `input` (of `len` bytes) to `output` under `key_bytes`, streamed.
pub fn encrypt(
    input: &mut impl Read,
    len: u64,
    output: &mut impl Write,
    key_bytes: &[u8; 32],
    chunk: u32,
) -> Result<(), EncryptedWeightsError> {
    let io = |e: std::io::Error| EncryptedWeightsError::Io(e.to_string());
    if chunk == 0 || chunk > MAX_CHUNK {
        return Err(EncryptedWeightsError::ChunkSize(chunk));
    }
    let mut prefix = [0u8; 7];
    aws_lc_rs::rand::fill(&mut prefix).map_err(|_| EncryptedWeightsError::Io("random".into()))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&chunk.to_be_bytes());
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&prefix);
    output.write_all(&header).map_err(io)?;
    let key = key(key_bytes)?;
    let n = chunk_count(len, chunk);
    let mut buf = Vec::with_capacity(chunk as usize + TAG_LEN);
    for i in 0..n {
        let size = (len - i * u64::from(chunk)).min(u64::from(chunk)) as usize;
        buf.resize(size, 0);
        input.read_exact(&mut buf).map_err(io)?;
        key.seal_in_place_append_tag(nonce(&prefix, i, i + 1 == n)?, Aad::from(&header), &mut buf)
            .map_err(|_| EncryptedWeightsError::Io("encryption failed".into()))?;
        output.write_all(&buf).map_err(io)?;
    }
    Ok(())
}

/// Reads the header; returns (plaintext length, chunk size, header bytes).
pub fn read_header(
    input: &mut impl Read,
) -> Result<(u64, u32, [u8; HEADER_LEN]), EncryptedWeightsError> {
    let mut header = [0u8; HEADER_LEN];
    input
        .read_exact(&mut header)
        .map_err(|_| EncryptedWeightsError::Magic)?;
    if &header[..8] != MAGIC {
        return Err(EncryptedWeightsError::Magic);
    }
    let chunk = u32::from_be_bytes(header[8..12].try_into().unwrap_or_default());
    if chunk == 0 || chunk > MAX_CHUNK {
        return Err(EncryptedWeightsError::ChunkSize(chunk));
    }
    let len = u64::from_be_bytes(header[12..20].try_into().unwrap_or_default());
    Ok((len, chunk, header))
}

/// What [`decrypt_into`] read and wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decrypted {
    /// Length and SHA-256 of the file as stored (header and chunks), when asked for.
    pub stored: Option<FileHash>,
    /// Length and SHA-256 of the plaintext, hashed chunk by chunk while it is still in cache.
    pub plaintext: FileHash,
}

/// Decrypts the chunks after `header` from `input` into `out` (exactly the plaintext length), each
/// chunk read straight into its place and opened there. `hash_stored`: also hash the file as stored
/// (a whole extra pass of SHA-256, so only when a measurement needs it).
pub fn decrypt_into(
    input: &mut impl Read,
    header: &[u8; HEADER_LEN],
    chunk: u32,
    out: &mut [u8],
    key_bytes: &[u8; 32],
    hash_stored: bool,
) -> Result<Decrypted, EncryptedWeightsError> {
    use sha2::{Digest, Sha256};
    let mut stored = hash_stored.then(Sha256::new);
    let mut plaintext = Sha256::new();
    if let Some(h) = &mut stored {
        h.update(header);
    }
    let prefix: [u8; 7] = header[20..27].try_into().unwrap_or_default();
    let key = key(key_bytes)?;
    let len = out.len() as u64;
    let n = chunk_count(len, chunk);
    let mut tag = [0u8; TAG_LEN];
    for i in 0..n {
        let at = (i * u64::from(chunk)) as usize;
        let size = (len - i * u64::from(chunk)).min(u64::from(chunk)) as usize;
        let place = &mut out[at..at + size];
        input
            .read_exact(place)
            .and_then(|()| input.read_exact(&mut tag))
            .map_err(|_| EncryptedWeightsError::Truncated(i))?;
        if let Some(h) = &mut stored {
            h.update(&*place);
            h.update(tag);
        }
        let opened = key
            .open_in_place_separate_tag(
                nonce(&prefix, i, i + 1 == n)?,
                Aad::from(header),
                &tag,
                place,
            )
            .map_err(|_| EncryptedWeightsError::Chunk(i))?;
        plaintext.update(&*opened);
    }
    let mut extra = [0u8; 1];
    if input
        .read(&mut extra)
        .map_err(|e| EncryptedWeightsError::Io(e.to_string()))?
        != 0
    {
        return Err(EncryptedWeightsError::TrailingBytes);
    }
    Ok(Decrypted {
        stored: stored.map(|h| FileHash {
            len: HEADER_LEN as u64 + len + n * TAG_LEN as u64,
            sha256: h.finalize().into(),
        }),
        plaintext: FileHash {
            len,
            sha256: plaintext.finalize().into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    fn sealed(plain: &[u8], chunk: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encrypt(&mut &plain[..], plain.len() as u64, &mut out, &KEY, chunk).expect("encrypt");
        out
    }

    fn open(file: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, EncryptedWeightsError> {
        let mut input = file;
        let (len, chunk, header) = read_header(&mut input)?;
        let mut out = vec![0u8; len as usize];
        let done = decrypt_into(&mut input, &header, chunk, &mut out, key, true)?;
        assert_eq!(done.stored, Some(FileHash::of(file)));
        assert_eq!(done.plaintext, FileHash::of(&out));
        Ok(out)
    }

    #[test]
    fn round_trips_for_any_length_and_chunking() {
        for (len, chunk) in [
            (0usize, 16u32),
            (1, 16),
            (16, 16),
            (17, 16),
            (1000, 7),
            (5000, 1 << 20),
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let file = sealed(&plain, chunk);
            assert_eq!(
                file.len(),
                HEADER_LEN + len + 16 * chunk_count(len as u64, chunk) as usize
            );
            assert_eq!(open(&file, &KEY).expect("open"), plain, "{len}/{chunk}");
        }
    }

    #[test]
    fn each_defect_has_its_own_error() {
        let plain = vec![5u8; 100];
        let file = sealed(&plain, 32); // 4 chunks: 32, 32, 32, 4
        let chunk_at = |i: usize| HEADER_LEN + i * (32 + 16);
        assert_eq!(open(&file, &[1; 32]), Err(EncryptedWeightsError::Chunk(0)));
        let mut f = file.clone();
        f[chunk_at(2) + 3] ^= 1;
        assert_eq!(open(&f, &KEY), Err(EncryptedWeightsError::Chunk(2)));
        // Swapping two chunks: each is authenticated at its own position.
        let mut f = file.clone();
        let (a, b) = (chunk_at(0), chunk_at(1));
        let first = f[a..b].to_vec();
        f.copy_within(b..b + 48, a);
        f[b..b + 48].copy_from_slice(&first);
        assert_eq!(open(&f, &KEY), Err(EncryptedWeightsError::Chunk(0)));
        // Cutting the file, even at a chunk boundary with the length edited to match.
        assert_eq!(
            open(&file[..file.len() - 1], &KEY),
            Err(EncryptedWeightsError::Truncated(3))
        );
        let mut f = file[..chunk_at(3)].to_vec();
        f[12..20].copy_from_slice(&96u64.to_be_bytes());
        assert_eq!(
            open(&f, &KEY),
            Err(EncryptedWeightsError::Chunk(0)),
            "the header is the AAD"
        );
        let mut f = file.clone();
        f.push(0);
        assert_eq!(open(&f, &KEY), Err(EncryptedWeightsError::TrailingBytes));
        let mut f = file.clone();
        f[0] = b'X';
        assert_eq!(open(&f, &KEY), Err(EncryptedWeightsError::Magic));
        let mut f = file.clone();
        f[8..12].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(open(&f, &KEY), Err(EncryptedWeightsError::ChunkSize(0)));
    }
}
