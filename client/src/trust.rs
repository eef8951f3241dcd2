//! What the client trusts: roots, pins and digests, assembled into the verifier, its policy and the
//! protocol expectations. Every remote command builds one [`Trust`] from a [`TrustConfig`].

use std::path::PathBuf;

use confidant_protocol::{Expectations, UnixMillis};
use confidant_verifier::{PcrPin, Policy, Verifier};

use crate::policy::{build_policy, parse_hex, PolicyArgs, PolicyFile};
use crate::SetupError;

/// Default maximum age of a freshly fetched document (it carries our nonce, so it is seconds old).
pub const FRESH_MAX_AGE_SECS: u64 = 60;

/// The trust settings of a remote command.
#[derive(Debug, Clone, Default)]
pub struct TrustConfig {
    /// Root certificates (PEM files) instead of the AWS Nitro root.
    pub roots: Vec<PathBuf>,
    pub pcrs: Vec<PcrPin>,
    /// TOML policy file (pcrs, max_age_secs, allow_debug, model_digest, settings_digest).
    pub policy: Option<PathBuf>,
    /// Model digest (hex) the enclave must attest.
    pub model_digest: Option<String>,
    /// Settings digest (hex) the enclave must attest.
    pub settings_digest: Option<String>,
    /// Inference dtype (`f32`, `bf16`, `int8`) the enclave must attest.
    pub dtype: Option<String>,
    /// Maximum age of a fetched document, seconds.
    pub max_age: Option<u64>,
    pub allow_debug: bool,
}

/// Everything needed to decide whether to trust an enclave.
pub struct Trust {
    pub verifier: Verifier,
    pub policy: Policy,
    pub model: Option<[u8; 32]>,
    pub settings: Option<[u8; 32]>,
    pub dtype: Option<String>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn digest_arg(name: &str, v: &Option<String>) -> Result<Option<[u8; 32]>, SetupError> {
    match v {
        None => Ok(None),
        Some(h) => {
            let bytes = parse_hex(name, h).map_err(|e| SetupError::Invalid(e.to_string()))?;
            bytes.try_into().map(Some).map_err(|_| {
                SetupError::Invalid(format!(
                    "{name}: a SHA-256 digest is 32 bytes (64 hex digits)"
                ))
            })
        }
    }
}

impl Trust {
    /// Builds the trust: defaults, then the policy file, then explicit values (which win).
    pub fn build(config: &TrustConfig) -> Result<Trust, SetupError> {
        let policy = build_policy(
            &PolicyArgs {
                file: config.policy.as_deref(),
                pcrs: &config.pcrs,
                max_age_secs: config.max_age,
                allow_debug: config.allow_debug,
                ..PolicyArgs::default()
            },
            FRESH_MAX_AGE_SECS,
        )
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
        let verifier = Verifier::new(crate::roots::load(&config.roots)?)
            .map_err(|e| SetupError::Invalid(format!("--root: {}", e.detail())))?;
        // The digests live in user_data, which the verifier's policy does not interpret: read them
        // from the file here (the explicit value wins, as for every other pin).
        let file = match &config.policy {
            Some(path) => PolicyFile::load(path).map_err(|e| SetupError::Invalid(e.to_string()))?,
            None => PolicyFile::default(),
        };
        let model = config.model_digest.clone().or(file.model_digest);
        let settings = config.settings_digest.clone().or(file.settings_digest);
        let dtype = config.dtype.clone().or(file.dtype);
        if let Some(d) = &dtype {
            if !matches!(d.as_str(), "f32" | "bf16" | "int8") {
                return Err(SetupError::Invalid(format!(
                    "--dtype: {d:?} is not one of f32, bf16, int8"
                )));
            }
        }
        Ok(Trust {
            dtype,
            verifier,
            policy,
            model: digest_arg("--model-digest", &model)?,
            settings: digest_arg("--settings-digest", &settings)?,
        })
    }

    pub fn expectations(&self, now: UnixMillis) -> Expectations {
        Expectations {
            model: self.model,
            settings: self.settings,
            dtype: self.dtype.clone(),
            now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_come_from_the_policy_file_and_explicit_values_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.toml");
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        std::fs::write(
            &path,
            format!("settings_digest = \"{a}\"\nmodel_digest = \"{b}\"\n"),
        )
        .expect("write");
        let config = |settings_digest: Option<String>| TrustConfig {
            policy: Some(path.clone()),
            settings_digest,
            ..TrustConfig::default()
        };
        let trust = Trust::build(&config(None)).expect("build");
        assert_eq!(trust.settings, Some([0xab; 32]));
        assert_eq!(trust.model, Some([0xcd; 32]));
        let trust = Trust::build(&config(Some(b.clone()))).expect("build");
        assert_eq!(trust.settings, Some([0xcd; 32]));
        std::fs::write(&path, "settings_digest = \"abcd\"\n").expect("write");
        assert!(matches!(
            Trust::build(&config(None)),
            Err(SetupError::Invalid(m)) if m.contains("64 hex digits")
        ));
    }
}
