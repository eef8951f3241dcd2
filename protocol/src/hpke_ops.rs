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

use crate::suite::{Aead, Kem};

/// An HPKE operation failed: a malformed key or encapsulation, or an authentication failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpkeFailure {
    /// A public key, private key or `enc` of the wrong length or invalid.
    BadKey,
    /// The ciphertext did not authenticate.
    Open,
}

/// A parsed public key. Parsing an X-Wing key decodes the ML-KEM encapsulation key, so holders keep it
/// parsed rather than re-reading bytes per request.
#[derive(Clone)]
pub enum PublicKey {
    X25519(<X25519HkdfSha256 as hpke::Kem>::PublicKey),
    XWing(Box<<XWing as hpke::Kem>::PublicKey>),
}

/// A parsed private key; the `hpke` crate's key types zeroize on drop. An X-Wing key is expanded
/// (ML-KEM key generation from its 32-byte seed) once, here, instead of on every decapsulation.
pub enum PrivateKey {
    X25519(<X25519HkdfSha256 as hpke::Kem>::PrivateKey),
    XWing(Box<<XWing as hpke::Kem>::PrivateKey>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?})", self.kem())
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?}, ..)", self.kem())
    }
}

impl PublicKey {
    pub fn from_bytes(kem: Kem, bytes: &[u8]) -> Result<PublicKey, HpkeFailure> {
        Ok(match kem {
            Kem::X25519HkdfSha256 => PublicKey::X25519(
                Deserializable::from_bytes(bytes).map_err(|_| HpkeFailure::BadKey)?,
            ),
            Kem::XWing => PublicKey::XWing(Box::new(
                Deserializable::from_bytes(bytes).map_err(|_| HpkeFailure::BadKey)?,
            )),
        })
    }

    pub fn kem(&self) -> Kem {
        match self {
            PublicKey::X25519(_) => Kem::X25519HkdfSha256,
            PublicKey::XWing(_) => Kem::XWing,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicKey::X25519(k) => k.to_bytes().to_vec(),
            PublicKey::XWing(k) => k.to_bytes().to_vec(),
        }
    }
}

impl PrivateKey {
    pub fn from_bytes(kem: Kem, bytes: &[u8]) -> Result<PrivateKey, HpkeFailure> {
        Ok(match kem {
            Kem::X25519HkdfSha256 => PrivateKey::X25519(
                Deserializable::from_bytes(bytes).map_err(|_| HpkeFailure::BadKey)?,
            ),
            Kem::XWing => PrivateKey::XWing(Box::new(
                Deserializable::from_bytes(bytes).map_err(|_| HpkeFailure::BadKey)?,
            )),
        })
    }

    pub fn kem(&self) -> Kem {
        match self {
            PrivateKey::X25519(_) => Kem::X25519HkdfSha256,
            PrivateKey::XWing(_) => Kem::XWing,
        }
    }

    /// The serialized key (X25519 clamped, as RFC 9180 §7.1.2 requires).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            PrivateKey::X25519(k) => k.to_bytes().to_vec(),
            PrivateKey::XWing(k) => k.to_bytes().to_vec(),
        })
    }
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
    pk: &K::PublicKey,
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
    rng: &mut impl CryptoRng,
) -> Result<Sealed, HpkeFailure> {
    let (enc, mut ctx) =
        hpke::setup_sender_with_rng::<A, HkdfSha256, K>(&OpModeS::Base, pk, info, rng)
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
    sk: &K::PrivateKey,
    enc: &[u8],
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
) -> Result<Opened, HpkeFailure> {
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| HpkeFailure::BadKey)?;
    let mut ctx = hpke::setup_receiver::<A, HkdfSha256, K>(&OpModeR::Base, sk, &enc, info)
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
    ($key:expr, $ty:ident, $aead:expr, $f:ident, $($arg:expr),*) => {
        match ($key, $aead) {
            ($ty::X25519(k), Aead::Aes128Gcm) => $f::<AesGcm128, X25519HkdfSha256>(k, $($arg),*),
            ($ty::X25519(k), Aead::Aes256Gcm) => $f::<AesGcm256, X25519HkdfSha256>(k, $($arg),*),
            ($ty::X25519(k), Aead::ChaCha20Poly1305) => $f::<ChaCha20Poly1305, X25519HkdfSha256>(k, $($arg),*),
            ($ty::XWing(k), Aead::Aes128Gcm) => $f::<AesGcm128, XWing>(k, $($arg),*),
            ($ty::XWing(k), Aead::Aes256Gcm) => $f::<AesGcm256, XWing>(k, $($arg),*),
            ($ty::XWing(k), Aead::ChaCha20Poly1305) => $f::<ChaCha20Poly1305, XWing>(k, $($arg),*),
        }
    };
}

/// SetupBaseS to `public_key` with `aead` (HKDF-SHA256), then seal each `(plaintext, aad)` in order,
/// then each export `(label, length)`.
pub fn seal(
    aead: Aead,
    public_key: &PublicKey,
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
    rng: &mut impl CryptoRng,
) -> Result<Sealed, HpkeFailure> {
    dispatch!(
        public_key,
        PublicKey,
        aead,
        seal_generic,
        info,
        messages,
        exports,
        rng
    )
}

/// SetupBaseR with `private_key`, then open each `(ciphertext, aad)` in order, then each export.
pub fn open(
    aead: Aead,
    private_key: &PrivateKey,
    enc: &[u8],
    info: &[u8],
    messages: &[(&[u8], &[u8])],
    exports: &[(&[u8], usize)],
) -> Result<Opened, HpkeFailure> {
    dispatch!(
        private_key,
        PrivateKey,
        aead,
        open_generic,
        enc,
        info,
        messages,
        exports
    )
}

/// DeriveKeyPair(ikm) (RFC 9180 §7.1.3).
pub fn derive_keypair(kem: Kem, ikm: &[u8]) -> (PrivateKey, PublicKey) {
    match kem {
        Kem::X25519HkdfSha256 => {
            let (sk, pk) = <X25519HkdfSha256 as hpke::Kem>::derive_keypair(ikm);
            (PrivateKey::X25519(sk), PublicKey::X25519(pk))
        }
        Kem::XWing => {
            let (sk, pk) = <XWing as hpke::Kem>::derive_keypair(ikm);
            (
                PrivateKey::XWing(Box::new(sk)),
                PublicKey::XWing(Box::new(pk)),
            )
        }
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
