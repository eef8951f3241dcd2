//! Algorithm identifiers (IANA HPKE registry) and their sizes.

/// A KEM Confidant speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kem {
    /// DHKEM(X25519, HKDF-SHA256), 0x0020.
    X25519HkdfSha256,
    /// X-Wing (ML-KEM-768 + X25519) hybrid, 0x647a.
    XWing,
}

impl Kem {
    pub const fn id(self) -> u16 {
        match self {
            Kem::X25519HkdfSha256 => 0x0020,
            Kem::XWing => 0x647a,
        }
    }

    pub fn from_id(id: u16) -> Option<Kem> {
        match id {
            0x0020 => Some(Kem::X25519HkdfSha256),
            0x647a => Some(Kem::XWing),
            _ => None,
        }
    }

    /// Public key length (Npk).
    pub const fn public_key_len(self) -> usize {
        match self {
            Kem::X25519HkdfSha256 => 32,
            Kem::XWing => 1216,
        }
    }

    /// Encapsulated key length (Nenc).
    pub const fn enc_len(self) -> usize {
        match self {
            Kem::X25519HkdfSha256 => 32,
            Kem::XWing => 1120,
        }
    }

    /// Private key length (Nsk).
    pub const fn private_key_len(self) -> usize {
        32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kem::X25519HkdfSha256 => "DHKEM(X25519, HKDF-SHA256)",
            Kem::XWing => "X-Wing",
        }
    }
}

/// The one KDF: HKDF-SHA256, 0x0001.
pub const KDF_HKDF_SHA256: u16 = 0x0001;

/// An AEAD Confidant speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-128-GCM, 0x0001.
    Aes128Gcm,
    /// AES-256-GCM, 0x0002.
    Aes256Gcm,
    /// ChaCha20-Poly1305, 0x0003.
    ChaCha20Poly1305,
}

impl Aead {
    pub const ALL: [Aead; 3] = [Aead::Aes128Gcm, Aead::Aes256Gcm, Aead::ChaCha20Poly1305];

    pub const fn id(self) -> u16 {
        match self {
            Aead::Aes128Gcm => 1,
            Aead::Aes256Gcm => 2,
            Aead::ChaCha20Poly1305 => 3,
        }
    }

    pub fn from_id(id: u16) -> Option<Aead> {
        match id {
            1 => Some(Aead::Aes128Gcm),
            2 => Some(Aead::Aes256Gcm),
            3 => Some(Aead::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// Key length (Nk).
    pub const fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::ChaCha20Poly1305 => 32,
        }
    }

    /// Nonce length (Nn).
    pub const fn nonce_len(self) -> usize {
        12
    }

    /// Tag length (Nt).
    pub const fn tag_len(self) -> usize {
        16
    }

    pub const fn name(self) -> &'static str {
        match self {
            Aead::Aes128Gcm => "AES-128-GCM",
            Aead::Aes256Gcm => "AES-256-GCM",
            Aead::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }
}

/// A full HPKE suite (the KDF is always HKDF-SHA256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Suite {
    pub kem: Kem,
    pub aead: Aead,
}

impl Suite {
    /// Every suite, X-Wing first (the client's preference order).
    pub const ALL: [Suite; 6] = [
        Suite {
            kem: Kem::XWing,
            aead: Aead::Aes256Gcm,
        },
        Suite {
            kem: Kem::XWing,
            aead: Aead::ChaCha20Poly1305,
        },
        Suite {
            kem: Kem::XWing,
            aead: Aead::Aes128Gcm,
        },
        Suite {
            kem: Kem::X25519HkdfSha256,
            aead: Aead::Aes256Gcm,
        },
        Suite {
            kem: Kem::X25519HkdfSha256,
            aead: Aead::ChaCha20Poly1305,
        },
        Suite {
            kem: Kem::X25519HkdfSha256,
            aead: Aead::Aes128Gcm,
        },
    ];
}
