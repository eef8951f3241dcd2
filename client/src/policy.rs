//! Verification policy from a TOML file (`--policy`) merged with command-line pins.
//!
//! ```toml
//! max_age_secs = 300
//! allow_debug = false
//! nonce = "…hex…"        # optional
//! user_data = "…hex…"    # optional
//! public_key = "…hex…"   # optional
//! model_digest = "…64 hex digits…"     # optional; attest/ask/chat check it in user_data
//! settings_digest = "…64 hex digits…"  # optional; the sealed settings' digest
//! dtype = "int8"                      # optional; the inference dtype the enclave must attest
//! [pcrs]
//! 0 = "…96 hex digits…"
//! 8 = "…"
//! ```
//! Unknown keys are errors, so a typo never silently drops a pin.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use confidant_verifier::{PcrPin, Policy};
use serde::Deserialize;

/// The file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub max_age_secs: Option<u64>,
    pub allow_debug: Option<bool>,
    pub nonce: Option<String>,
    pub user_data: Option<String>,
    pub public_key: Option<String>,
    /// The model digest the enclave must attest (attest, ask, chat).
    pub model_digest: Option<String>,
    /// The sealed settings' digest the enclave must attest (attest, ask, chat).
    pub settings_digest: Option<String>,
    /// The inference dtype the enclave must attest (attest, ask, chat): f32, bf16 or int8.
    pub dtype: Option<String>,
    #[serde(default)]
    pub pcrs: BTreeMap<String, String>,
}

/// Why a policy could not be assembled. All are usage errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum PolicyInputError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{what}: not hex ({value:?})")]
    Hex { what: String, value: String },
    #[error("{0}")]
    Pcr(#[from] confidant_verifier::PolicyError),
}

impl PolicyFile {
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyInputError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyInputError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| PolicyInputError::Parse {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })
    }
}

pub fn parse_hex(what: &str, value: &str) -> Result<Vec<u8>, PolicyInputError> {
    let v = value.trim();
    hex::decode(v.strip_prefix("0x").unwrap_or(v)).map_err(|_| PolicyInputError::Hex {
        what: what.to_string(),
        value: value.to_string(),
    })
}

/// Command-line pins and limits; each overrides the file's value.
#[derive(Debug, Default)]
pub struct PolicyArgs<'a> {
    pub file: Option<&'a Path>,
    pub pcrs: &'a [PcrPin],
    pub max_age_secs: Option<u64>,
    pub allow_debug: bool,
    pub nonce: Option<&'a str>,
    pub user_data: Option<&'a str>,
    pub public_key: Option<&'a str>,
}

/// Builds the policy: defaults, then the file, then the command line.
pub fn build_policy(
    args: &PolicyArgs<'_>,
    default_max_age_secs: u64,
) -> Result<Policy, PolicyInputError> {
    let file = match args.file {
        Some(path) => PolicyFile::load(path)?,
        None => PolicyFile::default(),
    };
    let mut policy = Policy::default();
    for (idx, value) in &file.pcrs {
        policy.pin_pcr(format!("{idx}={value}").parse()?);
    }
    for pin in args.pcrs {
        policy.pin_pcr(*pin);
    }
    let max_age = args
        .max_age_secs
        .or(file.max_age_secs)
        .unwrap_or(default_max_age_secs);
    policy.set_max_age(Some(Duration::from_secs(max_age)));
    policy.set_allow_debug(args.allow_debug || file.allow_debug.unwrap_or(false));
    let pick = |cli: Option<&str>,
                file: &Option<String>,
                what: &str|
     -> Result<Option<Vec<u8>>, PolicyInputError> {
        match cli.or(file.as_deref()) {
            Some(v) => parse_hex(what, v).map(Some),
            None => Ok(None),
        }
    };
    if let Some(v) = pick(args.nonce, &file.nonce, "nonce")? {
        policy.expect_nonce(v);
    }
    if let Some(v) = pick(args.user_data, &file.user_data, "user_data")? {
        policy.expect_user_data(v);
    }
    if let Some(v) = pick(args.public_key, &file.public_key, "public_key")? {
        policy.expect_public_key(v);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let pcr = "ab".repeat(48);
        std::fs::write(
            &path,
            format!("max_age_secs = 60\nnonce = \"00ff\"\n[pcrs]\n0 = \"{pcr}\"\n4 = \"{pcr}\"\n"),
        )
        .unwrap();
        let cli_pcr = vec![format!("4={}", "cd".repeat(48)).parse().unwrap()];
        let policy = build_policy(
            &PolicyArgs {
                file: Some(&path),
                pcrs: &cli_pcr,
                max_age_secs: Some(10),
                ..Default::default()
            },
            300,
        )
        .unwrap();
        assert_eq!(policy.max_age(), Some(Duration::from_secs(10)));
        assert_eq!(policy.nonce(), Some(&[0, 0xff][..]));
        assert_eq!(policy.pcrs()[&0], [0xab; 48]);
        assert_eq!(policy.pcrs()[&4], [0xcd; 48]);
    }

    #[test]
    fn rejects_typos_bad_hex_and_bad_pins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "max_age_sec = 60\n").unwrap();
        assert!(matches!(
            build_policy(
                &PolicyArgs {
                    file: Some(&path),
                    ..Default::default()
                },
                300
            ),
            Err(PolicyInputError::Parse { .. })
        ));
        std::fs::write(&path, "[pcrs]\n0 = \"00\"\n").unwrap();
        assert!(matches!(
            build_policy(
                &PolicyArgs {
                    file: Some(&path),
                    ..Default::default()
                },
                300
            ),
            Err(PolicyInputError::Pcr(_))
        ));
    }
}
