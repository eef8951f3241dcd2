//! Answer receipts: what the enclave signs in every final chunk, so that a user can show a third
//! party, later and offline, that this enclave (this document, this model, these settings) gave this
//! answer to this question.
//!
//! A receipt is a COSE_Sign1 (RFC 9052), untagged like a Nitro document, signed with Ed25519 (`alg`
//! −8) by a key the enclave generates at boot and attests as `rk` in `user_data`:
//!
//! ```text
//! [ protected = bstr .cbor {1: -8, 3: "application/confidant-receipt"}, unprotected = {},
//!   payload = bstr .cbor receipt, signature = bstr (64) ]
//! receipt = {"v": 1, "doc": SHA-256(document), "req": SHA-256(request), "q": SHA-256(prompt),
//!            "ans": SHA-256(answer text), "model": h32, ["settings": h32,] "dtype": text,
//!            "pt": uint, "gt": uint, "finish": "eos"|"stop"|"length", "time": unix ms, ["prev": h32]}
//! ```
//!
//! The payload is canonical (definite lengths, this key order): a decoder re-encodes it and
//! refuses any other form. `req` is the hash of the encapsulated request of a `REQUEST`, or of the
//! `SESSION` frame's body for a later turn; `prev` chains a session's turns (the SHA-256 of the
//! previous turn's whole COSE_Sign1). Hashes of the prompt and the answer let their holder prove
//! them; a receipt is therefore as private as the conversation and travels only inside the
//! encryption.

use confidant_verifier::cbor::{write_bytes, write_head, write_text, Item, Reader};
// `["Signature1", protected, h'', payload]` (RFC 9052 §4.4), shared with the Nitro documents' path.
use confidant_verifier::signature::sig_structure;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

use crate::cose;
use crate::error::ProtocolError;
use crate::fields::Fields;
use crate::message::Finish;
use crate::time::UnixMillis;
use crate::user_data::{sha256, UserData};

/// Payload version carried in `v`.
pub const VERSION: u64 = 1;

/// The COSE content type naming a receipt (domain separation from every other signature).
pub const CONTENT_TYPE: &str = "application/confidant-receipt";

/// Longest receipt accepted (a real one is under 400 bytes).
pub const MAX_LEN: usize = 1024;

/// What an answer's receipt states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// SHA-256 of the attestation document the request was bound to.
    pub document: [u8; 32],
    /// SHA-256 of the encapsulated request, or of a session turn's `SESSION` body.
    pub request: [u8; 32],
    /// SHA-256 of the question's prompt (UTF-8).
    pub question: [u8; 32],
    /// SHA-256 of the answer's text: every non-final chunk's plaintext, in order.
    pub answer: [u8; 32],
    pub model: [u8; 32],
    pub settings: Option<[u8; 32]>,
    pub dtype: String,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub finish: Finish,
    /// When the enclave signed it.
    pub time: UnixMillis,
    /// The previous turn's receipt hash ([`hash`]), for every session turn after the first.
    pub previous: Option<[u8; 32]>,
}

fn bad(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::BadReceipt(detail.into())
}

const F: Fields = Fields(ProtocolError::BadReceipt);

impl Receipt {
    /// The canonical CBOR payload.
    pub fn encode(&self) -> Vec<u8> {
        let entries =
            11 + usize::from(self.settings.is_some()) + usize::from(self.previous.is_some());
        let mut out = Vec::with_capacity(400);
        write_head(&mut out, 5, entries as u64);
        let digest = |out: &mut Vec<u8>, key: &str, d: &[u8; 32]| {
            write_text(out, key);
            write_bytes(out, d);
        };
        let uint = |out: &mut Vec<u8>, key: &str, n: u64| {
            write_text(out, key);
            write_head(out, 0, n);
        };
        uint(&mut out, "v", VERSION);
        digest(&mut out, "doc", &self.document);
        digest(&mut out, "req", &self.request);
        digest(&mut out, "q", &self.question);
        digest(&mut out, "ans", &self.answer);
        digest(&mut out, "model", &self.model);
        if let Some(s) = &self.settings {
            digest(&mut out, "settings", s);
        }
        write_text(&mut out, "dtype");
        write_text(&mut out, &self.dtype);
        uint(&mut out, "pt", self.prompt_tokens);
        uint(&mut out, "gt", self.generated_tokens);
        write_text(&mut out, "finish");
        write_text(&mut out, self.finish.as_str());
        uint(&mut out, "time", self.time.as_millis());
        if let Some(p) = &self.previous {
            digest(&mut out, "prev", p);
        }
        out
    }

    /// Strict decoding of a canonical payload.
    pub fn decode(bytes: &[u8]) -> Result<Receipt, ProtocolError> {
        let mut r = Reader::new(bytes);
        let n = match r.read().map_err(bad)? {
            Item::Map(Some(n)) if (11..=13).contains(&n) => n,
            _ => {
                return Err(bad(
                    "the payload must be a definite map of 11 to 13 entries",
                ))
            }
        };
        let mut f = Slots::default();
        for _ in 0..n {
            let key = match r.read().map_err(bad)? {
                Item::Text(k) => k,
                _ => return Err(bad("payload keys must be text")),
            };
            let value = r.read().map_err(bad)?;
            match key {
                "v" => F.set(&mut f.v, key, F.uint(key, value)?)?,
                "doc" => F.set(&mut f.doc, key, F.bytes(key, value)?)?,
                "req" => F.set(&mut f.req, key, F.bytes(key, value)?)?,
                "q" => F.set(&mut f.q, key, F.bytes(key, value)?)?,
                "ans" => F.set(&mut f.ans, key, F.bytes(key, value)?)?,
                "model" => F.set(&mut f.model, key, F.bytes(key, value)?)?,
                "settings" => F.set(&mut f.settings, key, F.bytes(key, value)?)?,
                "dtype" => F.set(&mut f.dtype, key, text(key, value)?)?,
                "pt" => F.set(&mut f.pt, key, F.uint(key, value)?)?,
                "gt" => F.set(&mut f.gt, key, F.uint(key, value)?)?,
                "finish" => F.set(&mut f.finish, key, finish(value)?)?,
                "time" => F.set(&mut f.time, key, F.uint(key, value)?)?,
                "prev" => F.set(&mut f.prev, key, F.bytes(key, value)?)?,
                _ => return Err(bad("the payload has an unknown key")),
            }
        }
        if r.remaining() != 0 {
            return Err(bad("trailing bytes after the payload"));
        }
        match f.v {
            Some(VERSION) => {}
            Some(_) => return Err(bad("unsupported receipt version")),
            None => return Err(bad("missing `v`")),
        }
        let need = |v: Option<[u8; 32]>, k: &str| v.ok_or_else(|| bad(format!("missing `{k}`")));
        let receipt = Receipt {
            document: need(f.doc, "doc")?,
            request: need(f.req, "req")?,
            question: need(f.q, "q")?,
            answer: need(f.ans, "ans")?,
            model: need(f.model, "model")?,
            settings: f.settings,
            dtype: f.dtype.ok_or_else(|| bad("missing `dtype`"))?,
            prompt_tokens: f.pt.ok_or_else(|| bad("missing `pt`"))?,
            generated_tokens: f.gt.ok_or_else(|| bad("missing `gt`"))?,
            finish: f.finish.ok_or_else(|| bad("missing `finish`"))?,
            time: UnixMillis::from_millis(f.time.ok_or_else(|| bad("missing `time`"))?),
            previous: f.prev,
        };
        // One encoding only: what was signed is exactly what a verifier re-derives.
        if receipt.encode() != bytes {
            return Err(bad("the payload is not in canonical form"));
        }
        Ok(receipt)
    }

    /// Checks the receipt covers `expected`, naming the first field that does not.
    pub fn check(&self, expected: &Expected<'_>) -> Result<(), ProtocolError> {
        let mismatch = |field| Err(ProtocolError::ReceiptMismatch(field));
        let u = expected.user_data;
        if self.document != expected.document {
            return mismatch("doc");
        }
        if let Some(req) = expected.request {
            if self.request != req {
                return mismatch("req");
            }
        }
        if let Some(q) = expected.question {
            if self.question != sha256(q.as_bytes()) {
                return mismatch("q");
            }
        }
        if let Some(a) = expected.answer {
            if self.answer != sha256(a.as_bytes()) {
                return mismatch("ans");
            }
        }
        if self.model != u.model {
            return mismatch("model");
        }
        if self.settings != u.settings {
            return mismatch("settings");
        }
        if u.dtype.as_deref() != Some(self.dtype.as_str()) {
            return mismatch("dtype");
        }
        if let Some((finish, pt, gt)) = expected.trailer {
            if self.finish != finish {
                return mismatch("finish");
            }
            if self.prompt_tokens != pt {
                return mismatch("pt");
            }
            if self.generated_tokens != gt {
                return mismatch("gt");
            }
        }
        if let Some(prev) = expected.previous {
            if self.previous != prev {
                return mismatch("prev");
            }
        }
        // Signed while the document's keys were live: not before the document, not after its keys'
        // expiry (a minute's skew either way).
        let skew = 60_000;
        if self.time.as_millis() + skew < expected.document_time.as_millis()
            || self.time.as_millis() > u.exp.as_millis() + skew
        {
            return mismatch("time");
        }
        Ok(())
    }
}

/// What a receipt must cover. `None` fields are not checked (an offline verifier may lack the
/// question, the answer or the request bytes).
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// SHA-256 of the document.
    pub document: [u8; 32],
    /// The document's timestamp.
    pub document_time: UnixMillis,
    /// The document's user_data (model, settings, dtype, key expiry).
    pub user_data: &'a UserData,
    pub request: Option<[u8; 32]>,
    pub question: Option<&'a str>,
    pub answer: Option<&'a str>,
    /// The trailer's finish reason and token counts.
    pub trailer: Option<(Finish, u64, u64)>,
    /// `Some(None)`: the first turn (no `prev`); `Some(Some(h))`: a later turn chained to `h`.
    pub previous: Option<Option<[u8; 32]>>,
}

#[derive(Default)]
struct Slots {
    v: Option<u64>,
    doc: Option<[u8; 32]>,
    req: Option<[u8; 32]>,
    q: Option<[u8; 32]>,
    ans: Option<[u8; 32]>,
    model: Option<[u8; 32]>,
    settings: Option<[u8; 32]>,
    dtype: Option<String>,
    pt: Option<u64>,
    gt: Option<u64>,
    finish: Option<Finish>,
    time: Option<u64>,
    prev: Option<[u8; 32]>,
}

fn text(key: &str, value: Item<'_>) -> Result<String, ProtocolError> {
    match value {
        Item::Text(t) if !t.is_empty() && t.len() <= 16 => Ok(t.to_string()),
        _ => Err(bad(format!("`{key}` must be short text"))),
    }
}

fn finish(value: Item<'_>) -> Result<Finish, ProtocolError> {
    match value {
        Item::Text("eos") => Ok(Finish::Eos),
        Item::Text("stop") => Ok(Finish::Stop),
        Item::Text("length") => Ok(Finish::Length),
        _ => Err(bad("`finish` must be eos, stop or length")),
    }
}

/// The protected header: `{1: -8 (EdDSA), 3: CONTENT_TYPE}`.
fn protected() -> Vec<u8> {
    cose::protected(-8, CONTENT_TYPE)
}

/// The enclave's receipt key: made at boot, its public half attested as `rk`.
pub struct ReceiptSigner(Ed25519KeyPair);

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("public_key", &hex::encode(self.public_key()))
            .finish()
    }
}

impl ReceiptSigner {
    /// The key whose seed is `seed` (the caller draws it from its RNG).
    pub fn from_seed(seed: Zeroizing<[u8; 32]>) -> ReceiptSigner {
        // `from_seed_unchecked` only fails for a seed of the wrong length, which the type rules out.
        match Ed25519KeyPair::from_seed_unchecked(&seed[..]) {
            Ok(k) => ReceiptSigner(k),
            Err(_) => unreachable!("an Ed25519 seed is 32 bytes"),
        }
    }

    /// The public key, as attested in `rk`.
    pub fn public_key(&self) -> [u8; 32] {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.0.public_key().as_ref());
        pk
    }

    /// The receipt as a COSE_Sign1.
    pub fn sign(&self, receipt: &Receipt) -> Vec<u8> {
        let protected = protected();
        let payload = receipt.encode();
        let signature = self.0.sign(&sig_structure(&protected, &payload));
        cose::encode(&protected, &payload, signature.as_ref())
    }
}

/// What a session turn's receipt names as its request: SHA-256 of the `SESSION` frame's body.
pub fn turn_request(id: &[u8; 16], seq: u64, ciphertext: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(id);
    h.update(seq.to_be_bytes());
    h.update(ciphertext);
    h.finalize().into()
}

/// A receipt's hash: what the next turn's `prev` names.
pub fn hash(cose: &[u8]) -> [u8; 32] {
    sha256(cose)
}

/// Decodes a COSE_Sign1 receipt strictly and verifies its signature under `public_key` (the
/// attested `rk`). What it covers is then checked with [`Receipt::check`].
pub fn open(cose: &[u8], public_key: &[u8; 32]) -> Result<Receipt, ProtocolError> {
    if cose.len() > MAX_LEN {
        return Err(bad("longer than any receipt"));
    }
    let parts =
        cose::parse(cose, &protected(), "EdDSA with the receipt content type").map_err(bad)?;
    if parts.signature.len() != 64 {
        return Err(bad("the signature must be 64 bytes"));
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(
            &sig_structure(parts.protected, parts.payload),
            parts.signature,
        )
        .map_err(|_| bad("the signature does not verify under the attested receipt key"))?;
    Receipt::decode(parts.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Alter = Box<dyn Fn(&mut Receipt)>;

    fn user_data() -> UserData {
        UserData {
            kc: [1; 32],
            model: [2; 32],
            settings: Some([3; 32]),
            dtype: Some("f32".into()),
            limits: None,
            exp: UnixMillis::from_secs(1_800_003_600),
            id: Some([4; 16]),
            rk: None,
        }
    }

    fn receipt() -> Receipt {
        Receipt {
            document: [5; 32],
            request: [6; 32],
            question: sha256(b"What is HbA1c?"),
            answer: sha256(b"A blood test."),
            model: [2; 32],
            settings: Some([3; 32]),
            dtype: "f32".into(),
            prompt_tokens: 9,
            generated_tokens: 4,
            finish: Finish::Eos,
            time: UnixMillis::from_secs(1_800_000_100),
            previous: None,
        }
    }

    fn expected(u: &UserData) -> Expected<'_> {
        Expected {
            document: [5; 32],
            document_time: UnixMillis::from_secs(1_800_000_000),
            user_data: u,
            request: Some([6; 32]),
            question: Some("What is HbA1c?"),
            answer: Some("A blood test."),
            trailer: Some((Finish::Eos, 9, 4)),
            previous: Some(None),
        }
    }

    #[test]
    fn signs_opens_and_checks() {
        let signer = ReceiptSigner::from_seed(Zeroizing::new([7; 32]));
        let cose = signer.sign(&receipt());
        assert!(cose.len() < 400, "{}", cose.len());
        let opened = open(&cose, &signer.public_key()).unwrap();
        assert_eq!(opened, receipt());
        let u = user_data();
        opened.check(&expected(&u)).unwrap();
    }

    #[test]
    fn every_field_is_covered() {
        let u = user_data();
        let base = receipt();
        let alter: Vec<(&str, Alter)> = vec![
            ("doc", Box::new(|r| r.document[0] ^= 1)),
            ("req", Box::new(|r| r.request[0] ^= 1)),
            ("q", Box::new(|r| r.question[0] ^= 1)),
            ("ans", Box::new(|r| r.answer[0] ^= 1)),
            ("model", Box::new(|r| r.model[0] ^= 1)),
            ("settings", Box::new(|r| r.settings = None)),
            ("dtype", Box::new(|r| r.dtype = "int8".into())),
            ("finish", Box::new(|r| r.finish = Finish::Length)),
            ("pt", Box::new(|r| r.prompt_tokens += 1)),
            ("gt", Box::new(|r| r.generated_tokens -= 1)),
            ("prev", Box::new(|r| r.previous = Some([0; 32]))),
            (
                "time",
                Box::new(|r| r.time = UnixMillis::from_secs(1_700_000_000)),
            ),
        ];
        for (field, f) in alter {
            let mut r = base.clone();
            f(&mut r);
            assert_eq!(
                r.check(&expected(&u)),
                Err(ProtocolError::ReceiptMismatch(field)),
                "{field}"
            );
        }
    }

    #[test]
    fn tampering_fails_the_signature_or_the_form() {
        let signer = ReceiptSigner::from_seed(Zeroizing::new([7; 32]));
        let cose = signer.sign(&receipt());
        for i in 0..cose.len() {
            let mut t = cose.clone();
            t[i] ^= 0x01;
            assert!(
                matches!(
                    open(&t, &signer.public_key()),
                    Err(ProtocolError::BadReceipt(_))
                ),
                "byte {i}"
            );
        }
        let other = ReceiptSigner::from_seed(Zeroizing::new([8; 32]));
        assert!(open(&cose, &other.public_key()).is_err());
        assert!(open(&cose[..cose.len() - 1], &signer.public_key()).is_err());
        let mut long = cose.clone();
        long.push(0);
        assert!(open(&long, &signer.public_key()).is_err());
    }

    #[test]
    fn the_payload_has_one_form() {
        let bytes = receipt().encode();
        assert_eq!(Receipt::decode(&bytes).unwrap(), receipt());
        // The same map with `v` moved last decodes field by field but is not canonical.
        let mut moved = Vec::new();
        write_head(&mut moved, 5, 12);
        moved.extend_from_slice(&bytes[4..]);
        moved.extend_from_slice(&bytes[1..4]);
        assert!(Receipt::decode(&moved).is_err());
    }
}
