//! The trust options every remote command shares, and what they build: the verifier, its policy and
//! the protocol expectations.

use std::path::PathBuf;

use confidant_protocol::Expectations;
use confidant_verifier::{Policy, Verifier};

use crate::policy_file::{build_policy, parse_hex, PolicyArgs};
use crate::CliError;

/// Default maximum age of a freshly fetched document (it carries our nonce, so it is seconds old).
pub const FRESH_MAX_AGE_SECS: u64 = 60;

#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The relay in front of the enclave.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: String,
    /// CA certificate (PEM) for the relay's TLS certificate [default: the system roots].
    #[arg(long, value_name = "PEM")]
    pub relay_ca: Option<PathBuf>,
    /// Trust this attestation root instead of the AWS Nitro root (e.g. a development root).
    #[arg(long = "root", value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Pin a PCR (index and 48 bytes of hex); repeatable.
    #[arg(long = "pcr", value_name = "IDX=HEX")]
    pub pcrs: Vec<String>,
    /// TOML policy file (pcrs, max_age_secs, allow_debug).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The model digest the enclave must attest (SHA-256, hex).
    #[arg(long, value_name = "HEX")]
    pub model_digest: Option<String>,
    /// The settings digest the enclave must attest (SHA-256, hex).
    #[arg(long, value_name = "HEX")]
    pub settings_digest: Option<String>,
    /// Maximum age of a fetched attestation document, seconds.
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,
    /// Accept an enclave in debug mode (PCR0 all zeros).
    #[arg(long)]
    pub allow_debug: bool,
}

/// Everything needed to decide whether to trust an enclave.
pub struct Trust {
    pub verifier: Verifier,
    pub policy: Policy,
    pub model: Option<[u8; 32]>,
    pub settings: Option<[u8; 32]>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn digest_arg(name: &str, v: &Option<String>) -> Result<Option<[u8; 32]>, CliError> {
    match v {
        None => Ok(None),
        Some(h) => {
            let bytes = parse_hex(name, h).map_err(|e| CliError::Usage(e.to_string()))?;
            bytes.try_into().map(Some).map_err(|_| {
                CliError::Usage(format!(
                    "{name}: a SHA-256 digest is 32 bytes (64 hex digits)"
                ))
            })
        }
    }
}

impl TrustArgs {
    pub fn build(&self) -> Result<Trust, CliError> {
        let policy = build_policy(
            &PolicyArgs {
                file: self.policy.as_deref(),
                pcrs: &self.pcrs,
                max_age_secs: self.max_age,
                allow_debug: self.allow_debug,
                ..PolicyArgs::default()
            },
            FRESH_MAX_AGE_SECS,
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        let verifier = Verifier::new(crate::roots::load(&self.roots)?)
            .map_err(|e| CliError::Usage(format!("--root: {}", e.detail())))?;
        Ok(Trust {
            verifier,
            policy,
            model: digest_arg("--model-digest", &self.model_digest)?,
            settings: digest_arg("--settings-digest", &self.settings_digest)?,
        })
    }
}

impl Trust {
    pub fn expectations(&self, now_unix: u64) -> Expectations {
        Expectations {
            model: self.model,
            settings: self.settings,
            now_unix_secs: now_unix,
        }
    }
}
