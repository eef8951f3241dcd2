//! Step 1: the COSE_Sign1 envelope and the attestation payload, parsed strictly.
//!
//! Shape (AWS Nitro Enclaves, "Attestation document specification"):
//! `COSE_Sign1 = [protected: bstr .cbor {1: -35}, unprotected: {}, payload: bstr .cbor AttestationDoc,
//! signature: bstr .size 96]`, optionally under tag 18. The payload map holds exactly the nine keys below;
//! duplicates, unknown keys, wrong types, out-of-range sizes and trailing bytes are all rejected.

use std::collections::BTreeMap;

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use serde_bytes::ByteBuf;

use crate::cbor::{Item, Reader};
use crate::error::{Code, Error};

/// COSE algorithm identifier of ES384 (ECDSA with SHA-384 on P-384).
pub const COSE_ALG_ES384: i64 = -35;
/// Length of a P-384 signature in IEEE P1363 form (r ‖ s).
pub const SIGNATURE_LEN: usize = 96;
/// Length of a PCR under SHA-384.
pub const PCR_LEN: usize = 48;
/// PCR indices run 0..=31.
pub const MAX_PCR_INDEX: usize = 31;
/// Size limits from the AWS specification.
pub const MAX_CERT_LEN: usize = 1024;
pub const MAX_PUBLIC_KEY_LEN: usize = 1024;
pub const MAX_USER_DATA_LEN: usize = 512;
pub const MAX_NONCE_LEN: usize = 512;
/// A bundle of more certificates than this is not an AWS chain (real ones hold four).
pub const MAX_CABUNDLE_LEN: usize = 8;

/// A document split into what the signature covers and what it says.
#[derive(Debug, Clone)]
pub struct ParsedDocument<'a> {
    /// The protected header bytes exactly as received.
    pub protected: &'a [u8],
    /// The payload bytes exactly as received.
    pub payload: &'a [u8],
    /// The signature, r ‖ s.
    pub signature: &'a [u8],
    /// Whether the envelope carried COSE tag 18.
    pub tagged: bool,
    /// The decoded payload.
    pub doc: AttestationDoc,
}

fn malformed(detail: impl Into<String>) -> Error {
    Error::new(Code::Malformed, detail)
}

/// Parses a COSE_Sign1 attestation document.
pub fn parse(bytes: &[u8]) -> Result<ParsedDocument<'_>, Error> {
    let mut r = Reader::new(bytes);
    let mut tagged = false;
    let mut first = r.read().map_err(malformed)?;
    if let Item::Tag(tag) = first {
        if tag != 18 {
            return Err(malformed(format!("tag {tag} is not COSE_Sign1 (18)")));
        }
        tagged = true;
        first = r.read().map_err(malformed)?;
    }
    if first != Item::Array(Some(4)) {
        return Err(malformed(format!(
            "COSE_Sign1 must be an array of 4, found {}",
            describe(first)
        )));
    }
    let protected = expect_bytes(&mut r, "protected header")?;
    check_protected(protected)?;
    match r.read().map_err(malformed)? {
        Item::Map(Some(0)) => {}
        Item::Map(None) if r.peek_break().map_err(malformed)? => {}
        Item::Map(_) => return Err(malformed("unprotected header must be an empty map")),
        other => {
            return Err(malformed(format!(
                "unprotected header must be a map, found {}",
                other.kind()
            )))
        }
    }
    let payload = expect_bytes(&mut r, "payload")?;
    let signature = expect_bytes(&mut r, "signature")?;
    if signature.len() != SIGNATURE_LEN {
        return Err(malformed(format!(
            "signature is {} bytes, ES384 needs {SIGNATURE_LEN}",
            signature.len()
        )));
    }
    if r.remaining() != 0 {
        return Err(malformed(format!(
            "{} trailing bytes after the COSE_Sign1 array",
            r.remaining()
        )));
    }
    let doc = parse_payload(payload)?;
    Ok(ParsedDocument {
        protected,
        payload,
        signature,
        tagged,
        doc,
    })
}

fn describe(item: Item<'_>) -> String {
    match item {
        Item::Array(Some(n)) => format!("an array of {n}"),
        Item::Array(None) => "an indefinite-length array".into(),
        other => format!("a {}", other.kind()),
    }
}

fn expect_bytes<'a>(r: &mut Reader<'a>, what: &str) -> Result<&'a [u8], Error> {
    match r.read().map_err(malformed)? {
        Item::Bytes(b) => Ok(b),
        other => Err(malformed(format!(
            "{what} must be a byte string, found {}",
            other.kind()
        ))),
    }
}

/// The protected header must be exactly `{1: -35}`.
fn check_protected(protected: &[u8]) -> Result<(), Error> {
    let unsupported = |detail: String| Error::new(Code::UnsupportedAlg, detail);
    let mut r = Reader::new(protected);
    match r.read() {
        Ok(Item::Map(Some(1))) => {}
        Ok(Item::Map(_)) => {
            return Err(unsupported(
                "protected header must hold exactly one entry, {1: -35}".into(),
            ))
        }
        _ => return Err(malformed("protected header is not a CBOR map")),
    }
    let key = r.read().map_err(malformed)?;
    let value = r.read().map_err(malformed)?;
    if r.remaining() != 0 {
        return Err(malformed("trailing bytes in the protected header"));
    }
    match (key, value) {
        (Item::Uint(1), Item::Nint(34)) => Ok(()),
        (Item::Uint(1), Item::Nint(n)) => Err(unsupported(format!(
            "COSE algorithm {} is not ES384 ({COSE_ALG_ES384})",
            -1 - i128::from(n)
        ))),
        (Item::Uint(1), Item::Uint(n)) => Err(unsupported(format!(
            "COSE algorithm {n} is not ES384 ({COSE_ALG_ES384})"
        ))),
        _ => Err(unsupported(
            "protected header must be exactly {1: -35}".into(),
        )),
    }
}

/// The nine payload keys, in the order AWS writes them (order is not enforced).
const KEYS: [&str; 9] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

#[derive(Default)]
struct Fields {
    module_id: Option<String>,
    digest: Option<Digest>,
    timestamp: Option<u64>,
    pcrs: Option<BTreeMap<usize, ByteBuf>>,
    certificate: Option<ByteBuf>,
    cabundle: Option<Vec<ByteBuf>>,
    public_key: Option<Option<ByteBuf>>,
    user_data: Option<Option<ByteBuf>>,
    nonce: Option<Option<ByteBuf>>,
}

fn parse_payload(payload: &[u8]) -> Result<AttestationDoc, Error> {
    let mut r = Reader::new(payload);
    let len = match r.read().map_err(malformed)? {
        Item::Map(len) => len,
        other => {
            return Err(malformed(format!(
                "payload must be a map, found {}",
                other.kind()
            )))
        }
    };
    if len.is_some_and(|n| n > KEYS.len()) {
        return Err(malformed(format!(
            "payload map has more than {} entries",
            KEYS.len()
        )));
    }
    let mut f = Fields::default();
    let mut count = 0usize;
    loop {
        match len {
            Some(n) if count == n => break,
            None if r.peek_break().map_err(malformed)? => break,
            _ => {}
        }
        count += 1;
        if count > KEYS.len() {
            return Err(malformed(format!(
                "payload map has more than {} entries",
                KEYS.len()
            )));
        }
        let key = match r.read().map_err(malformed)? {
            Item::Text(k) => k,
            other => {
                return Err(malformed(format!(
                    "payload key must be a text string, found {}",
                    other.kind()
                )))
            }
        };
        parse_field(&mut r, key, &mut f)?;
    }
    if r.remaining() != 0 {
        return Err(malformed(format!(
            "{} trailing bytes after the payload map",
            r.remaining()
        )));
    }
    let missing = |k: &str| malformed(format!("payload lacks required key `{k}`"));
    Ok(AttestationDoc {
        module_id: f.module_id.ok_or_else(|| missing("module_id"))?,
        digest: f.digest.ok_or_else(|| missing("digest"))?,
        timestamp: f.timestamp.ok_or_else(|| missing("timestamp"))?,
        pcrs: f.pcrs.ok_or_else(|| missing("pcrs"))?,
        certificate: f.certificate.ok_or_else(|| missing("certificate"))?,
        cabundle: f.cabundle.ok_or_else(|| missing("cabundle"))?,
        public_key: f.public_key.ok_or_else(|| missing("public_key"))?,
        user_data: f.user_data.ok_or_else(|| missing("user_data"))?,
        nonce: f.nonce.ok_or_else(|| missing("nonce"))?,
    })
}

fn set<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(malformed(format!("duplicate payload key `{key}`")));
    }
    *slot = Some(value);
    Ok(())
}

fn type_error(key: &str, want: &str, found: Item<'_>) -> Error {
    malformed(format!("`{key}` must be {want}, found {}", found.kind()))
}

fn sized_bytes(key: &str, item: Item<'_>, min: usize, max: usize) -> Result<ByteBuf, Error> {
    match item {
        Item::Bytes(b) if (min..=max).contains(&b.len()) => Ok(ByteBuf::from(b.to_vec())),
        Item::Bytes(b) => Err(malformed(format!(
            "`{key}` is {} bytes, allowed {min}..={max}",
            b.len()
        ))),
        other => Err(type_error(key, "a byte string", other)),
    }
}

fn optional_bytes(key: &str, item: Item<'_>, max: usize) -> Result<Option<ByteBuf>, Error> {
    match item {
        Item::Null => Ok(None),
        other => sized_bytes(key, other, 0, max).map(Some),
    }
}

fn parse_field(r: &mut Reader<'_>, key: &str, f: &mut Fields) -> Result<(), Error> {
    let item = r.read().map_err(malformed)?;
    match key {
        "module_id" => match item {
            Item::Text(t) if !t.is_empty() => set(&mut f.module_id, key, t.to_string()),
            Item::Text(_) => Err(malformed("`module_id` is empty")),
            other => Err(type_error(key, "a text string", other)),
        },
        "digest" => match item {
            Item::Text("SHA384") => set(&mut f.digest, key, Digest::SHA384),
            Item::Text(t @ ("SHA256" | "SHA512")) => Err(Error::new(
                Code::UnsupportedAlg,
                format!("digest {t} is not SHA384"),
            )),
            Item::Text(_) => Err(malformed("`digest` is not SHA256, SHA384 or SHA512")),
            other => Err(type_error(key, "a text string", other)),
        },
        "timestamp" => match item {
            Item::Uint(0) => Err(malformed("`timestamp` is zero")),
            Item::Uint(t) => set(&mut f.timestamp, key, t),
            other => Err(type_error(key, "an unsigned integer", other)),
        },
        "pcrs" => {
            let pcrs = parse_pcrs(r, item)?;
            set(&mut f.pcrs, key, pcrs)
        }
        "certificate" => {
            let cert = sized_bytes(key, item, 1, MAX_CERT_LEN)?;
            set(&mut f.certificate, key, cert)
        }
        "cabundle" => {
            let bundle = parse_cabundle(r, item)?;
            set(&mut f.cabundle, key, bundle)
        }
        "public_key" => {
            let v = optional_bytes(key, item, MAX_PUBLIC_KEY_LEN)?;
            set(&mut f.public_key, key, v)
        }
        "user_data" => {
            let v = optional_bytes(key, item, MAX_USER_DATA_LEN)?;
            set(&mut f.user_data, key, v)
        }
        "nonce" => {
            let v = optional_bytes(key, item, MAX_NONCE_LEN)?;
            set(&mut f.nonce, key, v)
        }
        other => Err(malformed(format!(
            "unknown payload key `{}`",
            other.escape_debug()
        ))),
    }
}

fn parse_pcrs(r: &mut Reader<'_>, item: Item<'_>) -> Result<BTreeMap<usize, ByteBuf>, Error> {
    let len = match item {
        Item::Map(len) => len,
        other => return Err(type_error("pcrs", "a map", other)),
    };
    let mut pcrs = BTreeMap::new();
    loop {
        match len {
            Some(n) if pcrs.len() == n => break,
            None if r.peek_break().map_err(malformed)? => break,
            _ => {}
        }
        if pcrs.len() > MAX_PCR_INDEX {
            return Err(malformed("`pcrs` holds more than 32 entries"));
        }
        let index = match r.read().map_err(malformed)? {
            Item::Uint(i) if i <= MAX_PCR_INDEX as u64 => i as usize,
            Item::Uint(i) => {
                return Err(malformed(format!(
                    "PCR index {i} is out of range 0..={MAX_PCR_INDEX}"
                )))
            }
            other => return Err(type_error("pcrs key", "an unsigned integer", other)),
        };
        let value = match r.read().map_err(malformed)? {
            Item::Bytes(b) if b.len() == PCR_LEN => ByteBuf::from(b.to_vec()),
            Item::Bytes(b) => {
                return Err(malformed(format!(
                    "PCR{index} is {} bytes, SHA384 PCRs are {PCR_LEN}",
                    b.len()
                )))
            }
            other => return Err(type_error("pcrs value", "a byte string", other)),
        };
        if pcrs.insert(index, value).is_some() {
            return Err(malformed(format!("duplicate PCR index {index}")));
        }
    }
    if pcrs.is_empty() {
        return Err(malformed("`pcrs` is empty"));
    }
    Ok(pcrs)
}

fn parse_cabundle(r: &mut Reader<'_>, item: Item<'_>) -> Result<Vec<ByteBuf>, Error> {
    let len = match item {
        Item::Array(len) => len,
        other => return Err(type_error("cabundle", "an array", other)),
    };
    let mut bundle = Vec::new();
    loop {
        match len {
            Some(n) if bundle.len() == n => break,
            None if r.peek_break().map_err(malformed)? => break,
            _ => {}
        }
        if bundle.len() == MAX_CABUNDLE_LEN {
            return Err(malformed(format!(
                "`cabundle` holds more than {MAX_CABUNDLE_LEN} certificates"
            )));
        }
        let item = r.read().map_err(malformed)?;
        bundle.push(sized_bytes("cabundle entry", item, 1, MAX_CERT_LEN)?);
    }
    if bundle.is_empty() {
        return Err(malformed("`cabundle` is empty"));
    }
    Ok(bundle)
}
