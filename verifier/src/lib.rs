//! Strict verification of AWS Nitro Enclaves attestation documents.
//!
//! No I/O and no clock: the caller passes the document bytes, the pinned roots, a [`Policy`] and the
//! instant to verify at ([`VerifyAt`]). Verification runs five steps, each with its own rejection
//! [`Code`]:
//!
//! 1. **parse**: strict CBOR, COSE_Sign1 with protected header exactly `{1: -35}` (ES384), 96-byte
//!    signature, the nine payload keys with their types and sizes; no duplicates, no trailing bytes;
//! 2. **chain**: pinned root → `cabundle[1..]` → leaf by name and signature, basic constraints, path
//!    length, key usage, validity of every certificate at the verification time;
//! 3. **signature**: ES384 by the leaf key over `["Signature1", protected, h'', payload]` as received
//!    (high-S accepted);
//! 4. **freshness**: maximum age and future skew;
//! 5. **policy**: debug mode, pinned PCRs (fail closed), nonce, `user_data`, `public_key`.
//!
//! ```no_run
//! use confidant_verifier::{PcrPin, Policy, UnixMillis, Verifier, VerifyAt};
//! # fn run(doc: &[u8], root_der: Vec<u8>, pin: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::new(vec![root_der])?;
//! let mut policy = Policy::default(); // five-minute maximum age, no pins
//! policy.pin_pcr(pin.parse::<PcrPin>()?);
//! let verified = verifier.verify(doc, &policy, VerifyAt::Instant(UnixMillis::now()))?;
//! println!("{} at {}", verified.doc().module_id, verified.doc().timestamp);
//! # Ok(()) }
//! ```

pub mod cbor;
mod chain;
pub mod document;
#[cfg(feature = "encode")]
pub mod encode;
mod error;
mod policy;
mod report;
pub mod signature;
pub mod time;
mod verifier;

pub use aws_nitro_enclaves_nsm_api::api::AttestationDoc;
pub use chain::{CertCache, CertSummary};
pub use error::{Code, Error};
pub use policy::{PcrPin, Policy, PolicyError, VerifyAt, DEFAULT_FUTURE_SKEW, DEFAULT_MAX_AGE};
pub use report::{Report, Step, StepName, StepStatus, TrustRoot, AWS_NITRO_ROOT_G1_SHA256};
pub use time::UnixMillis;
pub use verifier::{Verified, Verifier};
