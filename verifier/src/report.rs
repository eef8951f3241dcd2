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

/// The full account of one verification.
#[derive(Debug, Clone)]
pub struct Report {
    /// The decoded document, when step 1 passed (present even if a later step failed).
    pub document: Option<AttestationDoc>,
    /// The document's certificates, `cabundle` in order and then the leaf, when they parsed.
    pub chain: Vec<CertSummary>,
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
