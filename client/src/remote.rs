//! Talking to the enclave through the relay: attest, ask, and chat turns. Nothing is sent before a
//! document verifies; an answer is complete only when its final chunk authenticates and carries a
//! receipt, signed by the attested receipt key, that covers this question and this answer.

use std::io::Write;

use confidant_protocol::chunks::ChunkOpener;
use confidant_protocol::frame::Frame;
use confidant_protocol::message::{Ask, Trailer};
use confidant_protocol::receipt::{self, Expected};
use confidant_protocol::release;
use confidant_protocol::request::{encapsulate, ClientRequest, CONFIDANT_LABELS};
use confidant_protocol::session::ClientSession;
use confidant_protocol::user_data::sha256;
use confidant_protocol::{frame, shape};
use confidant_protocol::{system_rng, Code, ProtocolError, Recipient, UnixMillis};
use confidant_verifier::{Verified, VerifyAt};

use crate::quic::{FrameReader, Relay};
use crate::trust::Trust;

/// Why a remote command failed. Callers match the variants; [`RemoteError::code`] is what they print.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the relay: {0}")]
    Connect(String),
    #[error("attestation rejected: {0}")]
    Attestation(confidant_verifier::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the enclave refused: {code}: {message}")]
    Refused { code: Code, message: String },
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("the stream ended before {0}")]
    Ended(&'static str),
    #[error("an authentic answer chunk is not UTF-8 text")]
    BadChunk,
    #[error("the final chunk's trailer does not decode: {0}")]
    BadTrailer(String),
    #[error("the exchange did not complete within {} s (--timeout)", .0.as_secs())]
    Timeout(std::time::Duration),
    #[error("{message} (checked before sending)")]
    Limit { code: Code, message: String },
}

/// A code to print: from the wire registry, or the verifier's for a rejected document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedCode {
    Wire(Code),
    Attestation(confidant_verifier::Code),
}

impl std::fmt::Display for ReportedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportedCode::Wire(c) => f.write_str(c.as_str()),
            ReportedCode::Attestation(c) => f.write_str(c.as_str()),
        }
    }
}

impl RemoteError {
    /// The stable code for scripts and tests.
    pub fn code(&self) -> ReportedCode {
        ReportedCode::Wire(match self {
            RemoteError::Setup(_) => Code::Usage,
            RemoteError::Connect(_) => Code::RelayUnreachable,
            RemoteError::Attestation(e) => return ReportedCode::Attestation(e.code()),
            RemoteError::Protocol(e) => e.code(),
            RemoteError::Refused { code, .. } => *code,
            RemoteError::Unexpected(_) => Code::UnexpectedFrame,
            RemoteError::Ended(_) => Code::TruncatedResponse,
            RemoteError::BadChunk => Code::BadChunk,
            RemoteError::BadTrailer(_) => Code::BadTrailer,
            RemoteError::Timeout(_) => Code::Timeout,
            RemoteError::Limit { code, .. } => *code,
        })
    }

    /// Whether this is a verdict against the enclave (its document, what it commits to, or limits it
    /// attested), printed as `rejected: <code>`, rather than a failure to talk to it.
    pub fn is_rejection(&self) -> bool {
        match self {
            RemoteError::Attestation(_) | RemoteError::Limit { .. } => true,
            RemoteError::Protocol(e) => matches!(
                e,
                ProtocolError::ModelMismatch
                    | ProtocolError::SettingsMismatch
                    | ProtocolError::DtypeMismatch
                    | ProtocolError::KeyConfigsMismatch
                    | ProtocolError::KeysExpired { .. }
                    | ProtocolError::MalformedUserData(_)
                    | ProtocolError::NoSupportedSuite
                    | ProtocolError::MalformedManifest(_)
                    | ProtocolError::ReleaseSignature
                    | ProtocolError::ReleaseExpired { .. }
                    | ProtocolError::ReleasePcrs { .. }
                    | ProtocolError::ReleaseMismatch { .. }
                    | ProtocolError::ReleaseRollback { .. }
                    | ProtocolError::ReleaseSigstore(_)
            ),
            _ => false,
        }
    }

    /// Whether re-attesting may help (the enclave restarted or rotated its keys).
    pub fn wants_fresh_keys(&self) -> bool {
        const STALE: [Code; 4] = [
            Code::UnknownKeyId,
            Code::UnknownAttestation,
            Code::KeysExpired,
            Code::KeyExhausted,
        ];
        match self {
            RemoteError::Refused { code, .. } => STALE.contains(code),
            RemoteError::Protocol(e) => STALE.contains(&e.code()),
            _ => false,
        }
    }

    /// Whether the enclave the exchange was routed to is gone from behind the relay (restarted, taken
    /// out, or never there), so another attested enclave may answer instead.
    pub fn enclave_gone(&self) -> bool {
        matches!(
            self,
            RemoteError::Refused {
                code: Code::EnclaveUnknown | Code::EnclaveUnreachable,
                ..
            }
        )
    }
}

fn refused(frame: Frame) -> RemoteError {
    match frame {
        Frame::Error { code, message } => RemoteError::Refused { code, message },
        other => RemoteError::Unexpected(other.name()),
    }
}

/// A verified enclave: the document, what it commits to, and the key to encrypt to.
#[derive(Debug, Clone)]
pub struct Attested {
    pub document: Vec<u8>,
    pub key_configs: Vec<u8>,
    pub verified: Verified,
    pub recipient: Recipient,
    /// Taken from the cache rather than fetched by this process.
    pub cached: bool,
    /// The release (manifest version) that admitted it, when a release key is pinned.
    pub release: Option<u64>,
}

impl Attested {
    /// The enclave instance (random at its boot), where its document names one.
    pub fn enclave(&self) -> Option<[u8; 16]> {
        self.recipient.user_data.id
    }

    /// What the attestation cache keys this document by: the instance, else (documents of builds
    /// without one) its key configs.
    pub fn identity(&self) -> String {
        match self.enclave() {
            Some(id) => hex::encode(id),
            None => format!("kc-{}", hex::encode(self.recipient.user_data.kc)),
        }
    }

    /// Seconds since the enclave made the document (when it was fetched, since it carried our nonce).
    pub fn age_secs(&self) -> u64 {
        UnixMillis::now()
            .as_millis()
            .saturating_sub(self.verified.doc().timestamp)
            / 1000
    }
}

/// Fetches a fresh document (with our nonce) and verifies it and its key configs.
pub async fn attest(relay: &Relay, trust: &Trust) -> Result<Attested, RemoteError> {
    let mut nonce = [0u8; 32];
    {
        use hpke::rand_core::Rng;
        system_rng().fill_bytes(&mut nonce);
    }
    let mut reader = relay
        .exchange(&Frame::Attest { nonce: Some(nonce) })
        .await?;
    let (document, key_configs) = match reader.next().await? {
        Some(Frame::Attestation {
            document,
            key_configs,
        }) => (document, key_configs),
        Some(other) => return Err(refused(other)),
        None => return Err(RemoteError::Ended("an attestation document")),
    };
    let mut policy = trust.policy.clone();
    policy.expect_nonce(nonce.to_vec());
    check(trust, &policy, document, key_configs)
}

/// Verifies a document (fresh or cached) under `policy` and binds the key configs.
pub fn check(
    trust: &Trust,
    policy: &confidant_verifier::Policy,
    document: Vec<u8>,
    key_configs: Vec<u8>,
) -> Result<Attested, RemoteError> {
    let now = UnixMillis::now();
    let verified = trust
        .verifier
        .verify(&document, policy, VerifyAt::Instant(now))
        .map_err(RemoteError::Attestation)?;
    let recipient = Recipient::from_attestation(&verified, &key_configs, &trust.expectations(now))?;
    Ok(Attested {
        document,
        key_configs,
        verified,
        recipient,
        cached: false,
        release: None,
    })
}

/// The signed release manifests the relay serves (`RELEASE`).
pub async fn fetch_manifests(relay: &Relay) -> Result<Vec<Vec<u8>>, RemoteError> {
    let mut reader = relay
        .exchange(&Frame::Release {
            manifests: Vec::new(),
        })
        .await?;
    match reader.next().await? {
        Some(Frame::Release { manifests }) => Ok(manifests),
        Some(other) => Err(refused(other)),
        None => Err(RemoteError::Ended("the release manifests")),
    }
}

/// Holds `attested` to the manifests under the pinned release key (COSE) or Sigstore key: its
/// PCR0/1/2 listed in a valid manifest that states its model and settings, of a release not below
/// `high_water`. Returns the version.
pub fn admit_release(
    attested: &Attested,
    manifests: &[Vec<u8>],
    release_key: Option<&[u8]>,
    sigstore: Option<&crate::sigstore::SigstorePin>,
    high_water: u64,
) -> Result<u64, RemoteError> {
    let doc = attested.verified.doc();
    let mut pcrs: release::PcrTuple = [[0; 48]; 3];
    for (i, slot) in pcrs.iter_mut().enumerate() {
        let v = doc
            .pcrs
            .get(&i)
            .filter(|v| v.len() == 48)
            .ok_or(RemoteError::Protocol(ProtocolError::ReleasePcrs {
                version: 0,
            }))?;
        slot.copy_from_slice(v);
    }
    let u = &attested.recipient.user_data;
    let m = release::choose(
        manifests
            .iter()
            .map(|item| crate::sigstore::open_item(item, release_key, sigstore)),
        &release::Measured {
            pcrs: &pcrs,
            model: &u.model,
            settings: u.settings.as_ref(),
        },
        UnixMillis::now(),
        high_water,
    )?;
    Ok(m.version)
}

/// How an answer went, for the caller to print.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub trailer: Trailer,
    /// From sending the question to the first text chunk, and to the final chunk.
    pub first_chunk: Option<std::time::Duration>,
    pub total: std::time::Duration,
    /// The answer's receipt (COSE_Sign1), verified; `confidant verify-receipt` checks it offline.
    pub receipt: Vec<u8>,
}

/// What an answer's receipt must cover, known before the answer arrives.
struct Covers<'a> {
    attested: &'a Attested,
    /// SHA-256 of the encapsulated request, or of the `SESSION` body.
    request: [u8; 32],
    question: &'a str,
    /// The previous turn's receipt hash (`None` for a session's first turn or a one-shot question).
    previous: Option<[u8; 32]>,
}

impl Covers<'_> {
    /// Verifies the final chunk's receipt: signed by the attested key, covering exactly this
    /// exchange. A missing or bad receipt fails the answer like a bad final chunk.
    fn verify(&self, text: &str, trailer: &Trailer) -> Result<Vec<u8>, RemoteError> {
        let u = &self.attested.recipient.user_data;
        let bad = |m: &str| RemoteError::Protocol(ProtocolError::BadReceipt(m.into()));
        let rk =
            u.rk.ok_or_else(|| bad("the enclave attests no receipt key"))?;
        let cose = trailer
            .receipt_bytes()
            .ok_or_else(|| bad("the final chunk carries no receipt"))?
            .map_err(|()| bad("the receipt is not base64"))?;
        let r = receipt::open(&cose, &rk)?;
        r.check(&Expected {
            document: self.attested.recipient.attestation_sha256,
            document_time: UnixMillis::from_millis(self.attested.verified.doc().timestamp),
            user_data: u,
            request: Some(self.request),
            question: Some(self.question),
            answer: Some(text),
            trailer: Some((
                trailer.finish,
                trailer.prompt_tokens,
                trailer.generated_tokens,
            )),
            previous: Some(self.previous),
        })?;
        Ok(cose)
    }
}

/// Reads chunks until the final one, passing text to `out` as it arrives. A shaped answer's
/// chunks carry a length, text and padding, and some none (`protocol::shape`).
async fn read_chunks(
    reader: &mut FrameReader,
    opener: &mut ChunkOpener,
    out: &mut (dyn FnMut(&str) + Send),
    sent: std::time::Instant,
    covers: &Covers<'_>,
    shaped: bool,
) -> Result<Answer, RemoteError> {
    let mut text = String::new();
    let mut first_chunk = None;
    loop {
        match reader.next().await? {
            Some(Frame::Chunk {
                last: false,
                sealed,
            }) => {
                let plain = opener.open(&sealed, false)?;
                let piece = if shaped {
                    shape::decode_data(&plain)?
                } else {
                    &plain[..]
                };
                let piece = std::str::from_utf8(piece).map_err(|_| RemoteError::BadChunk)?;
                if piece.is_empty() {
                    continue;
                }
                out(piece);
                text.push_str(piece);
                first_chunk.get_or_insert_with(|| sent.elapsed());
            }
            Some(Frame::Chunk { last: true, sealed }) => {
                let trailer = opener.open(&sealed, true)?;
                let trailer = Trailer::from_bytes(&trailer).map_err(RemoteError::BadTrailer)?;
                // Nothing may follow the final chunk.
                if let Some(frame) = reader.next().await? {
                    return Err(match frame {
                        Frame::Chunk { .. } => ProtocolError::TrailingChunk.into(),
                        other => refused(other),
                    });
                }
                let receipt = covers.verify(&text, &trailer)?;
                return Ok(Answer {
                    text,
                    trailer,
                    first_chunk,
                    total: sent.elapsed(),
                    receipt,
                });
            }
            Some(other) => return Err(refused(other)),
            None => {
                opener.finish()?;
                return Err(RemoteError::Ended("the final chunk"));
            }
        }
    }
}

/// Refuses, before anything is sent, a question the enclave's attested limits would refuse, or an
/// enclave that could not sign its answer's receipt.
pub fn check_limits(attested: &Attested, ask: &Ask) -> Result<(), RemoteError> {
    if attested.recipient.user_data.rk.is_none() {
        return Err(RemoteError::Limit {
            code: Code::BadReceipt,
            message: "the enclave attests no receipt key, so its answer could not be receipted"
                .into(),
        });
    }
    let (Some(limits), Some(max)) = (attested.recipient.user_data.limits, ask.max_tokens) else {
        return Ok(());
    };
    if max == 0 || max > limits.max_new_tokens {
        return Err(RemoteError::Limit {
            code: Code::BadRequest,
            message: format!(
                "max_tokens {max} is outside the enclave's attested range 1..={}",
                limits.max_new_tokens
            ),
        });
    }
    if max >= limits.context_tokens {
        return Err(RemoteError::Limit {
            code: Code::ContextLimit,
            message: format!(
                "max_tokens {max} leaves no room for the question in the attested context limit of {} tokens",
                limits.context_tokens
            ),
        });
    }
    Ok(())
}

/// Sends `ask` as a `REQUEST` and streams the answer; returns the state for follow-up turns.
pub async fn ask(
    relay: &Relay,
    attested: &Attested,
    ask: &Ask,
    out: &mut (dyn FnMut(&str) + Send),
) -> Result<(Answer, ClientRequest), RemoteError> {
    check_limits(attested, ask)?;
    let r = &attested.recipient;
    let shaped = ask.shape != Some(false);
    let mut plaintext = ask.to_bytes();
    if shaped {
        // REQUEST body = binding ‖ header ‖ enc ‖ ciphertext ‖ tag.
        let overhead = 32 + 7 + r.suite.kem.enc_len() + 16;
        shape::pad_request(&mut plaintext, overhead, frame::MAX_BODY as usize);
    }
    let (encapsulated, client) = encapsulate(
        &r.config,
        r.suite,
        &r.attestation_sha256,
        &plaintext,
        &CONFIDANT_LABELS,
        &mut system_rng(),
    )?;
    drop(plaintext);
    let covers = Covers {
        attested,
        request: sha256(&encapsulated),
        question: &ask.prompt,
        previous: None,
    };
    let sent = std::time::Instant::now();
    let mut reader = relay
        .exchange_routed(
            attested.enclave(),
            &Frame::Request {
                attestation_sha256: r.attestation_sha256,
                encapsulated,
            },
        )
        .await?;
    let nonce = match reader.next().await? {
        Some(Frame::Response { nonce }) => nonce,
        Some(other) => return Err(refused(other)),
        None => return Err(RemoteError::Ended("the response began")),
    };
    let mut opener = client.response_opener(&nonce)?;
    let answer = read_chunks(&mut reader, &mut opener, out, sent, &covers, shaped).await?;
    Ok((answer, client))
}

/// One follow-up turn of a session with the enclave `attested` (where the session began). Its
/// receipt chains to the previous turn's; the session then chains to this one.
pub async fn turn(
    relay: &Relay,
    attested: &Attested,
    session: &mut ClientSession,
    ask: &Ask,
    out: &mut (dyn FnMut(&str) + Send),
) -> Result<Answer, RemoteError> {
    let shaped = ask.shape != Some(false);
    let mut plaintext = ask.to_bytes();
    if shaped {
        // SESSION body = id ‖ seq ‖ ciphertext ‖ tag.
        shape::pad_request(&mut plaintext, 16 + 8 + 16, frame::MAX_BODY as usize);
    }
    let (seq, frame) = session.seal_turn(&plaintext);
    drop(plaintext);
    let request = match &frame {
        Frame::Session {
            id,
            seq,
            ciphertext,
        } => receipt::turn_request(id, *seq, ciphertext),
        _ => return Err(RemoteError::Unexpected(frame.name())),
    };
    let covers = Covers {
        attested,
        request,
        question: &ask.prompt,
        previous: session.last_receipt(),
    };
    let sent = std::time::Instant::now();
    let mut reader = relay.exchange_routed(attested.enclave(), &frame).await?;
    let mut opener = session.reply_opener(seq);
    let answer = read_chunks(&mut reader, &mut opener, out, sent, &covers, shaped).await?;
    session.chain_receipt(receipt::hash(&answer.receipt));
    Ok(answer)
}

/// Ends a session; the enclave acknowledges by echoing the `CLOSE`.
pub async fn close(
    relay: &Relay,
    route: Option<[u8; 16]>,
    session: &mut ClientSession,
) -> Result<(), RemoteError> {
    let frame = session.seal_close();
    let mut reader = relay.exchange_routed(route, &frame).await?;
    match reader.next().await? {
        Some(ack) if ack == frame => Ok(()),
        Some(other) => Err(refused(other)),
        None => Err(RemoteError::Ended("the close was acknowledged")),
    }
}

/// Writes a piece of the answer to stdout immediately.
pub fn stdout_sink() -> impl FnMut(&str) {
    |piece: &str| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    }
}
