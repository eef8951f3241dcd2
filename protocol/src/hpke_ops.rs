//! HPKE base mode (RFC 9180) over the `hpke` crate, dispatched on a run-time [`Suite`].
//!
//! Every operation Confidant needs from one HPKE context happens in one call: seal (or open) a sequence
//! of messages and take the exports, so no generic context type escapes this module.

use hpke::aead::{AesGcm128, AesGcm256, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::{X25519HkdfSha256, XWing};
use hpke::rand_core::{CryptoRng, TryCryptoRng, TryRng};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::suite::{Aead, Kem, Suite};

/// An HPKE operation failed: a malformed key or encapsulation, or an authentication failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpkeFailure {
    /// A public key, private key or `enc` of the wrong length or invalid.
    BadKey,
    /// The ciphertext did not authenticate.
    Open,
}

/// What a sender gets back.
#[derive(Debug)]
pub struct Sealed {
    pub enc: Vec<u8>,
    pub ciphertexts: Vec<Vec<u8>>,
    pub exports: Vec<Zeroizing<Vec<u8>>>,
}

/// What a receiver gets back.
#[derive(Debug)]
pub struct Opened {
    pub plaintexts: Vec<Zeroizing<Vec<u8>>>,
    pub exports: Vec<Zeroizing<Vec<u8>>>,
}

fn seal_generic<A: hpke::aead::Aead, K: hpke::Kem>(
    public_key: &[u8],
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
    rng: &mut impl CryptoRng,
) -> Result<Sealed, HpkeFailure> {
    let pk = K::PublicKey::from_bytes(public_key).map_err(|_| HpkeFailure::BadKey)?;
    let (enc, mut ctx) =
        hpke::setup_sender_with_rng::<A, HkdfSha256, K>(&OpModeS::Base, &pk, info, rng)
            .map_err(|_| HpkeFailure::BadKey)?;
    let mut ciphertexts = Vec::with_capacity(messages.len());
    for (plaintext, aad) in messages {
        ciphertexts.push(ctx.seal(plaintext, aad).map_err(|_| HpkeFailure::BadKey)?);
    }
    let exports = export_all(|label, out| ctx.export(label, out), exports)?;
    Ok(Sealed {
        enc: enc.to_bytes().to_vec(),
        ciphertexts,
        exports,
    })
}

fn open_generic<A: hpke::aead::Aead, K: hpke::Kem>(
    private_key: &[u8],
    enc: &[u8],
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
) -> Result<Opened, HpkeFailure> {
    let sk = K::PrivateKey::from_bytes(private_key).map_err(|_| HpkeFailure::BadKey)?;
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| HpkeFailure::BadKey)?;
    let mut ctx = hpke::setup_receiver::<A, HkdfSha256, K>(&OpModeR::Base, &sk, &enc, info)
        .map_err(|_| HpkeFailure::BadKey)?;
    let mut plaintexts = Vec::with_capacity(messages.len());
    for (ciphertext, aad) in messages {
        plaintexts.push(Zeroizing::new(
            ctx.open(ciphertext, aad).map_err(|_| HpkeFailure::Open)?,
        ));
    }
    let exports = export_all(|label, out| ctx.export(label, out), exports)?;
    Ok(Opened {
        plaintexts,
        exports,
    })
}

fn export_all(
    mut export: impl FnMut(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    exports: &[(&[u8], usize)],
) -> Result<Vec<Zeroizing<Vec<u8>>>, HpkeFailure> {
    exports
        .iter()
        .map(|(label, len)| {
            let mut out = Zeroizing::new(vec![0u8; *len]);
            export(label, &mut out).map_err(|_| HpkeFailure::BadKey)?;
            Ok(out)
        })
        .collect()
}

macro_rules! dispatch {
    ($suite:expr, $f:ident, $($arg:expr),*) => {
        match ($suite.kem, $suite.aead) {
            (Kem::X25519HkdfSha256, Aead::Aes128Gcm) => $f::<AesGcm128, X25519HkdfSha256>($($arg),*),
            (Kem::X25519HkdfSha256, Aead::Aes256Gcm) => $f::<AesGcm256, X25519HkdfSha256>($($arg),*),
            (Kem::X25519HkdfSha256, Aead::ChaCha20Poly1305) => $f::<ChaCha20Poly1305, X25519HkdfSha256>($($arg),*),
            (Kem::XWing, Aead::Aes128Gcm) => $f::<AesGcm128, XWing>($($arg),*),
            (Kem::XWing, Aead::Aes256Gcm) => $f::<AesGcm256, XWing>($($arg),*),
            (Kem::XWing, Aead::ChaCha20Poly1305) => $f::<ChaCha20Poly1305, XWing>($($arg),*),
        }
    };
}

/// SetupBaseS, then seal each `(plaintext, aad)` in order, then each export `(label, length)`.
pub fn seal(
    suite: Suite,
    public_key: &[u8],
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
    rng: &mut impl CryptoRng,
) -> Result<Sealed, HpkeFailure> {
    dispatch!(
        suite,
        seal_generic,
        public_key,
        info,
        messages,
        exports,
        rng
    )
}

/// SetupBaseR, then open each `(ciphertext, aad)` in order, then each export.
pub fn open(
    suite: Suite,
    private_key: &[u8],
    enc: &[u8],
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
) -> Result<Opened, HpkeFailure> {
    dispatch!(
        suite,
        open_generic,
        private_key,
        enc,
        info,
        messages,
        exports
    )
}

fn derive_generic<K: hpke::Kem>(ikm: &[u8]) -> (Zeroizing<Vec<u8>>, Vec<u8>) {
    let (sk, pk) = K::derive_keypair(ikm);
    (
        Zeroizing::new(sk.to_bytes().to_vec()),
        pk.to_bytes().to_vec(),
    )
}

/// DeriveKeyPair(ikm): (private key, public key).
pub fn derive_keypair(kem: Kem, ikm: &[u8]) -> (Zeroizing<Vec<u8>>, Vec<u8>) {
    match kem {
        Kem::X25519HkdfSha256 => derive_generic::<X25519HkdfSha256>(ikm),
        Kem::XWing => derive_generic::<XWing>(ikm),
    }
}

/// Hands out fixed bytes as randomness: for known-answer tests and seeded vectors only.
///
/// The `hpke` crate draws exactly `Nsk` bytes (X25519: `ikmE`) or 64 bytes (X-Wing: the encapsulation
/// seed) for one encapsulation, so replaying a vector's `ikmE` reproduces its `enc`. Past the end it
/// yields zeros and records that it ran dry, which the caller checks.
#[derive(Debug)]
pub struct ReplayRng {
    bytes: Vec<u8>,
    pos: usize,
    overrun: bool,
}

impl ReplayRng {
    pub fn new(bytes: &[u8]) -> ReplayRng {
        ReplayRng {
            bytes: bytes.to_vec(),
            pos: 0,
            overrun: false,
        }
    }

    /// Whether more bytes were asked for than were given.
    pub fn overrun(&self) -> bool {
        self.overrun
    }

    /// Whether every byte was consumed.
    pub fn exhausted(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

impl TryRng for ReplayRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for d in dst.iter_mut() {
            match self.bytes.get(self.pos) {
                Some(b) => {
                    *d = *b;
                    self.pos += 1;
                }
                None => {
                    *d = 0;
                    self.overrun = true;
                }
            }
        }
        Ok(())
    }
}

impl TryCryptoRng for ReplayRng {}

/// The operating system's randomness.
pub fn system_rng() -> impl CryptoRng {
    hpke::rand_core::UnwrapErr(getrandom::SysRng)
}
