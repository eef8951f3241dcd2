//! What the client trusts: roots, pins and digests, assembled into the verifier, its policy and the
//! protocol expectations. Every remote command builds one [`Trust`] from a [`TrustConfig`].

use std::path::PathBuf;
use std::time::Duration;

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
    /// The operator's release key (hex of the P-384 point): admit an enclave whose PCR0/1/2 a valid
    /// manifest signed by it lists, instead of (or as well as) pinned PCRs.
    pub release_key: Option<String>,
    /// A Sigstore trusted root (JSON) and the operator's cosign public key (PEM): admit an enclave
    /// listed in a manifest that key signed through Sigstore, logged in the root's log.
    pub release_sigstore_root: Option<PathBuf>,
    pub release_sigstore_key: Option<PathBuf>,
    /// Maximum age of a fetched document, seconds; also bounds how old a cached one may be.
    pub max_age: Option<u64>,
    pub allow_debug: bool,
    /// Accept an enclave whose measurements are not pinned (experiments only).
    pub allow_unpinned: bool,
    /// Values from the configuration file, used where neither a flag nor the policy file gives one.
    pub file: crate::config::ConfigFile,
}

/// Everything needed to decide whether to trust an enclave.
pub struct Trust {
    pub verifier: Verifier,
    pub policy: Policy,
    pub model: Option<[u8; 32]>,
    pub settings: Option<[u8; 32]>,
    pub dtype: Option<String>,
    /// The release key manifests must verify under (an uncompressed P-384 point, 97 bytes).
    pub release_key: Option<Vec<u8>>,
    /// The trusted root and key Sigstore-signed manifests are checked against, if pinned.
    pub release_sigstore: Option<crate::sigstore::SigstorePin>,
    /// What is pinned, for the user to see ("PCR0", "settings digest", …); empty only when unpinned
    /// runs were explicitly allowed.
    pub pins: Vec<String>,
    /// A cached document older than this is not used (`None`: until its keys expire).
    pub cache_max_age: Option<Duration>,
}

/// Why an unpinned run is refused, with how to pin.
pub const UNPINNED: &str =
    "unpinned: refusing to send anything to an enclave whose measurements are not pinned, \
since any Nitro enclave of any AWS account would pass; pin the operator's release key with \
--release-key HEX (or release_key in the config file), or the image with --pcr 0=HEX (and 1, 2), \
--policy FILE or [pcrs] in the config file (values from `confidant-enclave measure` or the \
operator's release notes); --insecure-unpinned accepts any enclave, for experiments only";

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

/// A release key: hex of an uncompressed P-384 point (`confidant-ops release-key` prints it).
fn release_key_arg(v: Option<&String>) -> Result<Option<Vec<u8>>, SetupError> {
    let Some(h) = v else { return Ok(None) };
    let bytes = parse_hex("--release-key", h).map_err(|e| SetupError::Invalid(e.to_string()))?;
    if bytes.len() != 97 || bytes[0] != 0x04 {
        return Err(SetupError::Invalid(
            "--release-key: a P-384 public key is 97 bytes (194 hex digits) starting 04, as in \
             release-key.pub"
                .into(),
        ));
    }
    Ok(Some(bytes))
}

impl Trust {
    /// Builds the trust: defaults, then the policy file, then explicit values (which win).
    pub fn build(config: &TrustConfig) -> Result<Trust, SetupError> {
        // The config file's pins first: a flag for the same PCR replaces it.
        let mut pcrs = Vec::new();
        for (index, value) in &config.file.pcrs {
            let pin: PcrPin = format!("{index}={value}").parse().map_err(
                |e: confidant_verifier::PolicyError| {
                    SetupError::Invalid(format!("config file [pcrs]: {e}"))
                },
            )?;
            pcrs.push(pin);
        }
        pcrs.extend(config.pcrs.iter().cloned());
        let policy_path = config.policy.clone().or(config.file.policy.clone());
        let max_age = config.max_age.or(config.file.max_age_secs);
        let policy = build_policy(
            &PolicyArgs {
                file: policy_path.as_deref(),
                pcrs: &pcrs,
                max_age_secs: max_age,
                allow_debug: config.allow_debug,
                ..PolicyArgs::default()
            },
            FRESH_MAX_AGE_SECS,
        )
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
        let roots = if config.roots.is_empty() {
            &config.file.roots
        } else {
            &config.roots
        };
        let verifier = Verifier::new(crate::roots::load(roots)?)
            .map_err(|e| SetupError::Invalid(format!("--root: {}", e.detail())))?;
        // The digests live in user_data, which the verifier's policy does not interpret: read them
        // from the file here (the explicit value wins, as for every other pin).
        let file = match &policy_path {
            Some(path) => PolicyFile::load(path).map_err(|e| SetupError::Invalid(e.to_string()))?,
            None => PolicyFile::default(),
        };
        let model = (config.model_digest.clone().or(file.model_digest))
            .or(config.file.model_digest.clone());
        let settings = (config.settings_digest.clone().or(file.settings_digest))
            .or(config.file.settings_digest.clone());
        let dtype = (config.dtype.clone().or(file.dtype)).or(config.file.dtype.clone());
        // The workload must be named: PCR0 (the image) or PCR8 (the certificate that signed it).
        let mut pins: Vec<String> = policy.pcrs().keys().map(|i| format!("PCR{i}")).collect();
        let release_key = release_key_arg(
            config
                .release_key
                .as_ref()
                .or(config.file.release_key.as_ref()),
        )?;
        if release_key.is_some() {
            pins.push("release key".into());
        }
        let sigstore_root = config
            .release_sigstore_root
            .as_ref()
            .or(config.file.release_sigstore_root.as_ref());
        let sigstore_key = config
            .release_sigstore_key
            .as_ref()
            .or(config.file.release_sigstore_key.as_ref());
        let release_sigstore =
            match (sigstore_root, sigstore_key) {
                (Some(root), Some(key)) => Some(crate::sigstore::SigstorePin::load(root, key)?),
                (None, None) => None,
                _ => return Err(SetupError::Invalid(
                    "--release-sigstore-root and --release-sigstore-key go together: the log's \
                     trusted root and the key that signed the releases"
                        .into(),
                )),
            };
        if release_sigstore.is_some() {
            pins.push("Sigstore release key".into());
        }
        let workload = policy.pcrs().contains_key(&0)
            || policy.pcrs().contains_key(&8)
            || release_key.is_some()
            || release_sigstore.is_some();
        if !workload && !config.allow_unpinned {
            return Err(SetupError::Invalid(UNPINNED.into()));
        }
        for (name, set) in [
            ("model digest", model.is_some()),
            ("settings digest", settings.is_some()),
            ("dtype", dtype.is_some()),
        ] {
            if set {
                pins.push(name.into());
            }
        }
        if let Some(d) = &dtype {
            if !matches!(d.as_str(), "f32" | "bf16" | "int8") {
                return Err(SetupError::Invalid(format!(
                    "--dtype: {d:?} is not one of f32, bf16, int8"
                )));
            }
        }
        Ok(Trust {
            dtype,
            release_key,
            release_sigstore,
            verifier,
            policy,
            pins: if workload { pins } else { Vec::new() },
            cache_max_age: max_age.map(Duration::from_secs),
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
            allow_unpinned: true,
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

#[cfg(test)]
mod pin_tests {
    use super::*;

    #[test]
    fn nothing_is_trusted_unless_the_workload_is_pinned_or_unpinned_runs_are_asked_for() {
        let e = Trust::build(&TrustConfig::default())
            .expect_err("unpinned")
            .to_string();
        assert!(e.starts_with("unpinned: "), "{e}");
        // A PCR1 pin alone does not name the workload.
        let pcr = |i: usize| PcrPin::new(i, &[7; 48]).expect("pin");
        let only1 = TrustConfig {
            pcrs: vec![pcr(1)],
            ..TrustConfig::default()
        };
        assert!(Trust::build(&only1).is_err());
        for i in [0, 8] {
            let trust = Trust::build(&TrustConfig {
                pcrs: vec![pcr(i)],
                ..TrustConfig::default()
            })
            .expect("pinned");
            assert_eq!(trust.pins, vec![format!("PCR{i}")]);
        }
        let open = Trust::build(&TrustConfig {
            allow_unpinned: true,
            ..TrustConfig::default()
        })
        .expect("allowed");
        assert!(open.pins.is_empty());
    }

    #[test]
    fn config_file_pins_apply_and_flags_replace_them() {
        let mut file = crate::config::ConfigFile::default();
        file.pcrs.insert("0".into(), "11".repeat(48));
        file.settings_digest = Some("ab".repeat(32));
        let trust = Trust::build(&TrustConfig {
            file: file.clone(),
            ..TrustConfig::default()
        })
        .expect("pinned by file");
        assert_eq!(trust.policy.pcrs()[&0], [0x11; 48]);
        assert_eq!(trust.settings, Some([0xab; 32]));
        let flag = PcrPin::new(0, &[0x22; 48]).expect("pin");
        let trust = Trust::build(&TrustConfig {
            file,
            pcrs: vec![flag],
            ..TrustConfig::default()
        })
        .expect("pinned");
        assert_eq!(trust.policy.pcrs()[&0], [0x22; 48], "the flag wins");
    }
}
