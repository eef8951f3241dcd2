//! Steps 4 and 5: freshness and the caller's policy.

use std::collections::BTreeMap;

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;

use crate::document::{MAX_PCR_INDEX, PCR_LEN};
use crate::error::{Code, Error};

/// When to verify as of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyAt {
    /// A given instant, unix milliseconds (the caller's clock: "now").
    Instant(u64),
    /// The document's own timestamp: for archived documents, whose 3-hour leaf has long expired.
    /// Freshness is then meaningless and is reported as skipped.
    DocumentTime,
}

/// Default tolerance for a document timestamp ahead of the verifier's clock.
pub const DEFAULT_FUTURE_SKEW_MS: u64 = 60_000;

/// What a document must satisfy beyond a valid signature chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// PCRs that must be present and equal (index 0..=31 → 48-byte value). Fail closed: a pinned index
    /// missing from the document is a rejection.
    pub pcrs: BTreeMap<usize, Vec<u8>>,
    /// Accept a document whose PCR0 is all zeros (an enclave started in debug mode).
    pub allow_debug: bool,
    /// Maximum age of the document at the verification time, in milliseconds; `None` checks none.
    pub max_age_ms: Option<u64>,
    /// How far the document's timestamp may be ahead of the verification time.
    pub future_skew_ms: u64,
    /// The challenge sent, which the document's nonce must equal.
    pub nonce: Option<Vec<u8>>,
    /// Exact `user_data` expected.
    pub user_data: Option<Vec<u8>>,
    /// Exact `public_key` expected.
    pub public_key: Option<Vec<u8>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pcrs: BTreeMap::new(),
            allow_debug: false,
            max_age_ms: None,
            future_skew_ms: DEFAULT_FUTURE_SKEW_MS,
            nonce: None,
            user_data: None,
            public_key: None,
        }
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("PCR index {0} is out of range 0..=31")]
    PcrIndex(usize),
    #[error("PCR{index} pin is {len} bytes, SHA384 PCRs are 48")]
    PcrLength { index: usize, len: usize },
}

impl Policy {
    /// Pins PCR `index` to `value`, checking the index and length.
    pub fn pin_pcr(&mut self, index: usize, value: Vec<u8>) -> Result<(), PolicyError> {
        if index > MAX_PCR_INDEX {
            return Err(PolicyError::PcrIndex(index));
        }
        if value.len() != PCR_LEN {
            return Err(PolicyError::PcrLength {
                index,
                len: value.len(),
            });
        }
        self.pcrs.insert(index, value);
        Ok(())
    }
}

/// Step 4. Returns a description of what was checked.
pub(crate) fn check_freshness(
    doc: &AttestationDoc,
    at: VerifyAt,
    policy: &Policy,
) -> Result<String, Error> {
    let now = match at {
        VerifyAt::DocumentTime => return Ok("verifying as of the document's timestamp".into()),
        VerifyAt::Instant(now) => now,
    };
    if doc.timestamp > now.saturating_add(policy.future_skew_ms) {
        return Err(Error::new(
            Code::FromFuture,
            format!(
                "timestamp is {} ms ahead of the verification time (allowed skew {} ms)",
                doc.timestamp - now,
                policy.future_skew_ms
            ),
        ));
    }
    let age = now.saturating_sub(doc.timestamp);
    match policy.max_age_ms {
        Some(max) if age > max => Err(Error::new(
            Code::Stale,
            format!(
                "document is {} s old, maximum age is {} s",
                age / 1000,
                max / 1000
            ),
        )),
        Some(max) => Ok(format!("age {} ms within {} ms", age, max)),
        None => Ok(format!("age {age} ms (no maximum set)")),
    }
}

/// Step 5. Returns a description of what was checked.
pub(crate) fn check_policy(doc: &AttestationDoc, policy: &Policy) -> Result<String, Error> {
    let mut checked = Vec::new();
    let debug = doc
        .pcrs
        .get(&0)
        .is_some_and(|pcr0| pcr0.iter().all(|&b| b == 0));
    if debug {
        if !policy.allow_debug {
            return Err(Error::new(
                Code::DebugMode,
                "PCR0 is all zeros: the enclave runs in debug mode, and debug mode is not allowed",
            ));
        }
        checked.push("debug mode allowed".to_string());
    }
    for (&index, want) in &policy.pcrs {
        match doc.pcrs.get(&index) {
            None => {
                return Err(Error::new(
                    Code::PcrMissing,
                    format!("pinned PCR{index} is absent from the document"),
                ))
            }
            Some(got) if got.as_slice() != want.as_slice() => {
                return Err(Error::new(
                    Code::PcrMismatch,
                    format!(
                        "PCR{index} is {}, pinned {}",
                        hex_short(got),
                        hex_short(want)
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if !policy.pcrs.is_empty() {
        let list: Vec<String> = policy.pcrs.keys().map(|i| i.to_string()).collect();
        checked.push(format!("PCRs {} match their pins", list.join(",")));
    }
    let field_check = |name: &str,
                       got: Option<&[u8]>,
                       want: &Option<Vec<u8>>,
                       code: Code,
                       checked: &mut Vec<String>|
     -> Result<(), Error> {
        if let Some(want) = want {
            if got != Some(want.as_slice()) {
                return Err(Error::new(
                    code,
                    match got {
                        None => format!("document has no {name}, expected {} bytes", want.len()),
                        Some(g) => format!(
                            "document {name} ({} bytes) differs from the expected {} bytes",
                            g.len(),
                            want.len()
                        ),
                    },
                ));
            }
            checked.push(format!("{name} matches"));
        }
        Ok(())
    };
    field_check(
        "nonce",
        doc.nonce.as_deref().map(|b| b.as_slice()),
        &policy.nonce,
        Code::NonceMismatch,
        &mut checked,
    )?;
    field_check(
        "user_data",
        doc.user_data.as_deref().map(|b| b.as_slice()),
        &policy.user_data,
        Code::UserDataMismatch,
        &mut checked,
    )?;
    field_check(
        "public_key",
        doc.public_key.as_deref().map(|b| b.as_slice()),
        &policy.public_key,
        Code::PublicKeyMismatch,
        &mut checked,
    )?;
    if checked.is_empty() {
        checked.push("no pins set".into());
    }
    Ok(checked.join("; "))
}

fn hex_short(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{hex}…")
}
