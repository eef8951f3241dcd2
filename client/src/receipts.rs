//! Receipt files: what `ask --receipt` and `chat --receipt` save, and what `verify-receipt` checks
//! offline — the attestation document each answer was bound to, and its answers' receipts in order
//! (a chat's turns chain; a new session after a failure starts a new chain).
//!
//! ```json
//! {"format": "confidant-receipts/1",
//!  "chains": [{"document": "<base64 COSE_Sign1>", "receipts": ["<base64 COSE_Sign1>", …]}]}
//! ```
//!
//! A file is as private as the conversation: its hashes prove a question and an answer to whoever
//! holds them, and confirm a guessed one.

use std::path::Path;

use base64::Engine;
use confidant_protocol::receipt::{self, Expected, Receipt};
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{ProtocolError, UnixMillis};
use confidant_verifier::{Policy, Verified, Verifier, VerifyAt};

/// The file's format tag.
pub const FORMAT: &str = "confidant-receipts/1";

/// Most chains and receipts a file may hold (a file is read whole).
const MAX_RECEIPTS: usize = 100_000;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    format: String,
    chains: Vec<ChainJson>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainJson {
    document: String,
    receipts: Vec<String>,
}

/// One attested document and the receipts of the answers bound to it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub document: Vec<u8>,
    pub receipts: Vec<Vec<u8>>,
}

/// A receipt file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptFile {
    pub chains: Vec<Chain>,
}

/// Why a receipt file does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptFailure {
    #[error("{0}")]
    Unreadable(String),
    #[error("chain {chain}: attestation rejected: {error}")]
    Attestation {
        chain: usize,
        error: confidant_verifier::Error,
    },
    #[error("chain {chain}, receipt {index}: {error}")]
    Receipt {
        chain: usize,
        index: usize,
        error: ProtocolError,
    },
}

/// A file that verified: each chain's document and the receipts' contents.
#[derive(Debug)]
pub struct VerifiedFile {
    pub chains: Vec<VerifiedChain>,
}

#[derive(Debug)]
pub struct VerifiedChain {
    pub verified: Verified,
    pub user_data: UserData,
    pub receipts: Vec<Receipt>,
}

impl ReceiptFile {
    /// Adds an answer's receipt: to the last chain when it continues a session on `document`, else
    /// to a new chain.
    pub fn push(&mut self, document: &[u8], receipt: Vec<u8>, continues_session: bool) {
        match self.chains.last_mut() {
            Some(c) if continues_session && c.document == document => c.receipts.push(receipt),
            _ => self.chains.push(Chain {
                document: document.to_vec(),
                receipts: vec![receipt],
            }),
        }
    }

    pub fn to_json(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let file = FileJson {
            format: FORMAT.into(),
            chains: self
                .chains
                .iter()
                .map(|c| ChainJson {
                    document: b64.encode(&c.document),
                    receipts: c.receipts.iter().map(|r| b64.encode(r)).collect(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    pub fn from_json(bytes: &[u8]) -> Result<ReceiptFile, ReceiptFailure> {
        let bad = |m: String| ReceiptFailure::Unreadable(m);
        let file: FileJson =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a receipt file: {e}")))?;
        if file.format != FORMAT {
            return Err(bad(format!(
                "receipt file format {:?}, expected {FORMAT:?}",
                file.format
            )));
        }
        let total: usize = file.chains.iter().map(|c| c.receipts.len()).sum();
        if file.chains.is_empty() || total == 0 || total > MAX_RECEIPTS {
            return Err(bad(format!(
                "a receipt file holds 1 to {MAX_RECEIPTS} receipts"
            )));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut chains = Vec::with_capacity(file.chains.len());
        for (i, c) in file.chains.into_iter().enumerate() {
            if c.receipts.is_empty() {
                return Err(bad(format!("chain {i} holds no receipt")));
            }
            let document = b64
                .decode(&c.document)
                .map_err(|e| bad(format!("chain {i}: document: {e}")))?;
            let receipts = c
                .receipts
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    b64.decode(r)
                        .map_err(|e| bad(format!("chain {i}, receipt {j}: {e}")))
                })
                .collect::<Result<_, _>>()?;
            chains.push(Chain { document, receipts });
        }
        Ok(ReceiptFile { chains })
    }

    /// Writes the file whole (through a temporary file, so a crash never leaves half of one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_json())?;
        std::fs::rename(&tmp, path)
    }

    /// Verifies every chain offline: each document under `policy` as of its own time (its
    /// certificates were valid when it was made, however long ago), then each receipt's signature
    /// under the document's `rk`, that it names the document and its model, settings and dtype, and
    /// that each turn chains to the one before. `question` and `answer`, when given, must be what the
    /// last receipt covers.
    pub fn verify(
        &self,
        verifier: &Verifier,
        policy: &Policy,
        question: Option<&str>,
        answer: Option<&str>,
    ) -> Result<VerifiedFile, ReceiptFailure> {
        let last_chain = self.chains.len().saturating_sub(1);
        let mut out = Vec::with_capacity(self.chains.len());
        for (ci, chain) in self.chains.iter().enumerate() {
            let verified = verifier
                .verify(&chain.document, policy, VerifyAt::DocumentTime)
                .map_err(|error| ReceiptFailure::Attestation { chain: ci, error })?;
            let fail = |index, error| ReceiptFailure::Receipt {
                chain: ci,
                index,
                error,
            };
            let raw: &[u8] = verified.doc().user_data.as_ref().map_or(&[], |b| &b[..]);
            let user_data = UserData::decode(raw).map_err(|e| fail(0, e))?;
            let rk = user_data.rk.ok_or_else(|| {
                fail(
                    0,
                    ProtocolError::BadReceipt("the document attests no receipt key".into()),
                )
            })?;
            let document = sha256(&chain.document);
            let mut previous = None;
            let mut receipts = Vec::with_capacity(chain.receipts.len());
            let last = chain.receipts.len().saturating_sub(1);
            for (ri, cose) in chain.receipts.iter().enumerate() {
                let r = receipt::open(cose, &rk).map_err(|e| fail(ri, e))?;
                let is_last = ci == last_chain && ri == last;
                r.check(&Expected {
                    document,
                    document_time: UnixMillis::from_millis(verified.doc().timestamp),
                    user_data: &user_data,
                    request: None,
                    question: question.filter(|_| is_last),
                    answer: answer.filter(|_| is_last),
                    trailer: None,
                    previous: Some(previous),
                })
                .map_err(|e| fail(ri, e))?;
                previous = Some(receipt::hash(cose));
                receipts.push(r);
            }
            out.push(VerifiedChain {
                verified,
                user_data,
                receipts,
            });
        }
        Ok(VerifiedFile { chains: out })
    }
}
