//! What verification checked, step by step.

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;

use crate::chain::CertSummary;
use crate::error::Error;

/// The five steps of verification, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    /// Strict CBOR and COSE_Sign1 structure.
    Parse,
    /// Certificate path to a pinned root, constraints, validity.
    Chain,
    /// COSE signature by the leaf key.
    Signature,
    /// Document age and clock skew.
    Freshness,
    /// PCR pins, debug mode, nonce, user_data, public_key.
    Policy,
}

impl StepName {
    /// All steps in order.
    pub const ALL: [StepName; 5] = [
        StepName::Parse,
        StepName::Chain,
        StepName::Signature,
        StepName::Freshness,
        StepName::Policy,
    ];

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Parse => "parse",
            StepName::Chain => "chain",
            StepName::Signature => "signature",
            StepName::Freshness => "freshness",
            StepName::Policy => "policy",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    Passed,
    Failed,
    /// Not reached because an earlier step failed, or not applicable.
    Skipped,
}

impl StepStatus {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Passed => "passed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: StepName,
    pub status: StepStatus,
    /// What was checked, or why it failed.
    pub detail: String,
}

/// The pinned root a document chained to: who a user trusted in the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    /// RFC 4514 form of the root's subject.
    pub subject: String,
    /// SHA-256 of the root certificate's DER (its fingerprint).
    pub sha256: [u8; 32],
}

impl TrustRoot {
    /// Whether this is the AWS Nitro Enclaves root G1, the only root production enclaves chain to.
    pub fn is_aws_nitro_root(&self) -> bool {
        self.sha256 == AWS_NITRO_ROOT_G1_SHA256
    }
}

/// SHA-256 of the AWS Nitro Enclaves root G1 certificate (DER), as AWS publishes it:
/// `641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b`.
pub const AWS_NITRO_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1a, 0x03, 0x21, 0xa3, 0xe2, 0x44, 0xef, 0xe4, 0x56, 0x46, 0x31, 0x95, 0xd6, 0x06, 0x31,
    0x7e, 0xd7, 0xcd, 0xcc, 0x3c, 0x17, 0x56, 0xe0, 0x98, 0x93, 0xf3, 0xc6, 0x8f, 0x79, 0xbb, 0x5b,
];

/// The full account of one verification.
#[derive(Debug, Clone)]
pub struct Report {
    /// The decoded document, when step 1 passed (present even if a later step failed).
    pub document: Option<AttestationDoc>,
    /// The document's certificates, `cabundle` in order and then the leaf, when they parsed.
    pub chain: Vec<CertSummary>,
    /// The pinned root the path was anchored in, when step 2 passed.
    pub root: Option<TrustRoot>,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// The rejection, if any.
    pub error: Option<Error>,
}

impl Report {
    /// Whether every step passed.
    pub fn is_valid(&self) -> bool {
        self.error.is_none()
    }
}
