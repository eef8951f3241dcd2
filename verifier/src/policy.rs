//! Steps 4 and 5: freshness and the caller's policy.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;

use crate::document::{MAX_PCR_INDEX, PCR_LEN};
use crate::error::{Code, Error};
use crate::time::UnixMillis;

/// When to verify as of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyAt {
    /// A given instant (the caller's clock: "now").
    Instant(UnixMillis),
    /// The document's own timestamp: for archived documents, whose 3-hour leaf has long expired.
    /// Freshness is then meaningless and is reported as skipped.
    DocumentTime,
}

/// Default tolerance for a document timestamp ahead of the verifier's clock.
pub const DEFAULT_FUTURE_SKEW: Duration = Duration::from_secs(60);
/// Default maximum age of a document: five minutes. A document fetched with a fresh nonce is seconds
/// old; an archived one is verified as of its own time instead.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// One pinned PCR: an index within 0..=31 and a 48-byte SHA-384 value. Parses from `IDX=HEX`
/// (optionally `PCRIDX=0xHEX`), the form every command line and policy file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcrPin {
    index: usize,
    value: [u8; PCR_LEN],
}

impl PcrPin {
    /// A pin, checking the index and length.
    pub fn new(index: usize, value: &[u8]) -> Result<PcrPin, PolicyError> {
        if index > MAX_PCR_INDEX {
            return Err(PolicyError::PcrIndex(index));
        }
        let value = value.try_into().map_err(|_| PolicyError::PcrLength {
            index,
            len: value.len(),
        })?;
        Ok(PcrPin { index, value })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn value(&self) -> &[u8; PCR_LEN] {
        &self.value
    }
}

impl FromStr for PcrPin {
    type Err = PolicyError;

    fn from_str(pin: &str) -> Result<PcrPin, PolicyError> {
        let syntax = || PolicyError::PinSyntax(pin.to_string());
        let (index, value) = pin.split_once('=').ok_or_else(syntax)?;
        let index = index.trim();
        let index: usize = index
            .strip_prefix("PCR")
            .unwrap_or(index)
            .parse()
            .map_err(|_| syntax())?;
        let value = value.trim();
        let value = hex::decode(value.strip_prefix("0x").unwrap_or(value))
            .map_err(|_| PolicyError::PinHex(index))?;
        PcrPin::new(index, &value)
    }
}

impl std::fmt::Display for PcrPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.index, hex::encode(self.value))
    }
}

/// What a document must satisfy beyond a valid signature chain. Built with [`Policy::default`] (no
/// pins, a five-minute maximum age) and the setters, each of which checks its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// PCRs that must be present and equal. Fail closed: a pinned index missing from the document is
    /// a rejection.
    pcrs: BTreeMap<usize, [u8; PCR_LEN]>,
    allow_debug: bool,
    max_age: Option<Duration>,
    future_skew: Duration,
    nonce: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pcrs: BTreeMap::new(),
            allow_debug: false,
            max_age: Some(DEFAULT_MAX_AGE),
            future_skew: DEFAULT_FUTURE_SKEW,
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
    #[error("PCR pin {0:?}: expected IDX=HEX")]
    PinSyntax(String),
    #[error("PCR{0} pin: the value is not hex")]
    PinHex(usize),
}

impl Policy {
    /// Pins a PCR (a later pin of the same index replaces the earlier one).
    pub fn pin_pcr(&mut self, pin: PcrPin) -> &mut Policy {
        self.pcrs.insert(pin.index, pin.value);
        self
    }

    /// The maximum age of a document at the verification time; `None` checks none (for documents
    /// whose freshness was established otherwise, such as a cached one fetched with a nonce).
    pub fn set_max_age(&mut self, max_age: Option<Duration>) -> &mut Policy {
        self.max_age = max_age;
        self
    }

    /// How far a document's timestamp may be ahead of the verification time.
    pub fn set_future_skew(&mut self, skew: Duration) -> &mut Policy {
        self.future_skew = skew;
        self
    }

    /// Accept a document whose PCR0 is all zeros (an enclave started in debug mode).
    pub fn set_allow_debug(&mut self, allow: bool) -> &mut Policy {
        self.allow_debug = allow;
        self
    }

    /// The challenge sent, which the document's nonce must equal.
    pub fn expect_nonce(&mut self, nonce: Vec<u8>) -> &mut Policy {
        self.nonce = Some(nonce);
        self
    }

    /// The exact `user_data` the document must carry.
    pub fn expect_user_data(&mut self, user_data: Vec<u8>) -> &mut Policy {
        self.user_data = Some(user_data);
        self
    }

    /// The exact `public_key` the document must carry.
    pub fn expect_public_key(&mut self, public_key: Vec<u8>) -> &mut Policy {
        self.public_key = Some(public_key);
        self
    }

    /// The pinned PCRs.
    pub fn pcrs(&self) -> &BTreeMap<usize, [u8; PCR_LEN]> {
        &self.pcrs
    }

    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    pub fn future_skew(&self) -> Duration {
        self.future_skew
    }

    pub fn allows_debug(&self) -> bool {
        self.allow_debug
    }

    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    pub fn user_data(&self) -> Option<&[u8]> {
        self.user_data.as_deref()
    }

    pub fn public_key(&self) -> Option<&[u8]> {
        self.public_key.as_deref()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Step 4. Returns a description of what was checked.
pub(crate) fn check_freshness(
    doc: &AttestationDoc,
    at: VerifyAt,
    policy: &Policy,
) -> Result<String, Error> {
    let now = match at {
        VerifyAt::DocumentTime => return Ok("verifying as of the document's timestamp".into()),
        VerifyAt::Instant(now) => now.as_millis(),
    };
    let skew = millis(policy.future_skew);
    if doc.timestamp > now.saturating_add(skew) {
        return Err(Error::new(
            Code::FromFuture,
            format!(
                "timestamp is {} ms ahead of the verification time (allowed skew {} ms)",
                doc.timestamp - now,
                skew
            ),
        ));
    }
    let age = now.saturating_sub(doc.timestamp);
    match policy.max_age.map(millis) {
        Some(max) if age > max => Err(Error::new(
            Code::Stale,
            format!(
                "document is {} s old, maximum age is {} s",
                age / 1000,
                max / 1000
            ),
        )),
        Some(max) => Ok(format!("age {age} ms within {max} ms")),
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
                    // Both values in full: a shortened pair can hide where they differ.
                    format!(
                        "PCR{index} is {}, pinned {}",
                        hex::encode(got),
                        hex::encode(want)
                    ),
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_from_idx_equals_hex_and_are_checked() {
        let v = "ab".repeat(48);
        let pin: PcrPin = format!("4={v}").parse().unwrap();
        assert_eq!((pin.index(), pin.value()), (4, &[0xab; 48]));
        assert_eq!(format!("PCR4=0x{v}").parse::<PcrPin>(), Ok(pin));
        assert_eq!(pin.to_string(), format!("4={v}"));
        assert_eq!(
            "4".parse::<PcrPin>(),
            Err(PolicyError::PinSyntax("4".into()))
        );
        assert!(matches!(
            format!("x={v}").parse::<PcrPin>(),
            Err(PolicyError::PinSyntax(_))
        ));
        assert_eq!("2=zz".parse::<PcrPin>(), Err(PolicyError::PinHex(2)));
        assert_eq!(
            "2=00".parse::<PcrPin>(),
            Err(PolicyError::PcrLength { index: 2, len: 1 })
        );
        assert_eq!(
            format!("32={v}").parse::<PcrPin>(),
            Err(PolicyError::PcrIndex(32))
        );
    }

    #[test]
    fn the_default_policy_has_a_maximum_age_and_no_pins() {
        let p = Policy::default();
        assert_eq!(p.max_age(), Some(DEFAULT_MAX_AGE));
        assert!(p.pcrs().is_empty() && !p.allows_debug() && p.nonce().is_none());
        let mut q = p.clone();
        q.pin_pcr(PcrPin::new(0, &[1; 48]).unwrap())
            .pin_pcr(PcrPin::new(0, &[2; 48]).unwrap());
        assert_eq!(q.pcrs()[&0], [2; 48], "a later pin replaces an earlier one");
    }
}
