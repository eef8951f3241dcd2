//! The trust options every remote command shares, and what they build: the verifier, its policy and
//! the protocol expectations.

use std::path::PathBuf;

use confidant_protocol::Expectations;
use confidant_verifier::{Policy, Verifier};

use crate::policy_file::{build_policy, parse_hex, PolicyArgs, PolicyFile};
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
    /// TOML policy file (pcrs, max_age_secs, allow_debug, model_digest, settings_digest).
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
        // The digests live in user_data, which the verifier's policy does not interpret: read them
        // from the file here (the command line wins, as for every other pin).
        let file = match &self.policy {
            Some(path) => PolicyFile::load(path).map_err(|e| CliError::Usage(e.to_string()))?,
            None => PolicyFile::default(),
        };
        let model = self.model_digest.clone().or(file.model_digest);
        let settings = self.settings_digest.clone().or(file.settings_digest);
        Ok(Trust {
            verifier,
            policy,
            model: digest_arg("--model-digest", &model)?,
            settings: digest_arg("--settings-digest", &settings)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(policy: Option<PathBuf>, settings_digest: Option<String>) -> TrustArgs {
        TrustArgs {
            relay: "127.0.0.1:1".into(),
            relay_ca: None,
            roots: Vec::new(),
            pcrs: Vec::new(),
            policy,
            model_digest: None,
            settings_digest,
            max_age: None,
            allow_debug: false,
        }
    }

    #[test]
    fn digests_come_from_the_policy_file_and_the_command_line_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.toml");
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        std::fs::write(
            &path,
            format!("settings_digest = \"{a}\"\nmodel_digest = \"{b}\"\n"),
        )
        .expect("write");
        let trust = args(Some(path.clone()), None).build().expect("build");
        assert_eq!(trust.settings, Some([0xab; 32]));
        assert_eq!(trust.model, Some([0xcd; 32]));
        let trust = args(Some(path.clone()), Some(b.clone()))
            .build()
            .expect("build");
        assert_eq!(trust.settings, Some([0xcd; 32]));
        std::fs::write(&path, "settings_digest = \"abcd\"\n").expect("write");
        assert!(matches!(
            args(Some(path), None).build(),
            Err(CliError::Usage(m)) if m.contains("64 hex digits")
        ));
    }
}
