//! The client's configuration file: the relay and what to trust, so that a user pins once and types
//! `confidant ask "…"` afterwards. Command-line flags win over environment variables, which win over
//! the file.
//!
//! Found at `$CONFIDANT_CONFIG` (or `--config`), else `$XDG_CONFIG_HOME/confidant/config.toml`, else
//! `~/.config/confidant/config.toml`. Relative paths in it are relative to the file.
//!
//! ```toml
//! relay = "confidant.example.com:443"
//! relay_ca = "relay-ca.pem"          # optional; default: the system roots
//! roots = ["dev-root.pem"]           # optional; default: the AWS Nitro root G1
//! model_digest = "…64 hex digits…"   # optional
//! settings_digest = "…64 hex digits…"
//! dtype = "int8"
//! release_key = "04…194 hex digits…"  # instead of [pcrs]: the operator's signed releases
//! release_sigstore_root = "trusted_root.json"  # releases signed through Sigstore: the log's root
//! release_sigstore_key = "cosign.pub"           # and the operator's cosign key
//! max_age_secs = 60
//! connect_timeout_secs = 5
//! timeout_secs = 120
//! [pcrs]
//! 0 = "…96 hex digits…"
//! 1 = "…"
//! 2 = "…"
//! ```
//! Unknown keys are errors, so a typo never silently drops a pin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::SetupError;

/// The file's contents (paths already resolved against the file's directory).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub relay: Option<String>,
    pub relay_ca: Option<PathBuf>,
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub pcrs: BTreeMap<String, String>,
    pub model_digest: Option<String>,
    pub settings_digest: Option<String>,
    pub dtype: Option<String>,
    pub release_key: Option<String>,
    pub release_sigstore_root: Option<PathBuf>,
    pub release_sigstore_key: Option<PathBuf>,
    pub max_age_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
}

/// Where the configuration file is looked for when neither `--config` nor `$CONFIDANT_CONFIG` names one.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("confidant/config.toml"))
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".config/confidant/config.toml"))
        })
}

impl ConfigFile {
    /// Loads `explicit` (which must exist), else the default path if a file is there, else nothing.
    pub fn load(explicit: Option<&Path>) -> Result<(Option<PathBuf>, ConfigFile), SetupError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_path().filter(|p| p.is_file()) {
                Some(p) => p,
                None => return Ok((None, ConfigFile::default())),
            },
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SetupError::Io(format!("config file {}: {e}", path.display())))?;
        let mut file: ConfigFile = toml::from_str(&text).map_err(|e| {
            SetupError::Invalid(format!("config file {}: {}", path.display(), e.message()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        file.relay_ca.as_mut().map(resolve);
        file.policy.as_mut().map(resolve);
        file.release_sigstore_root.as_mut().map(resolve);
        file.release_sigstore_key.as_mut().map(resolve);
        file.roots.iter_mut().for_each(resolve);
        Ok((Some(path), file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_file_and_typos_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "relay = \"r:1\"\nrelay_ca = \"ca.pem\"\nroots = [\"/abs/root.pem\"]\n[pcrs]\n0 = \"00\"\n")
            .expect("write");
        let (found, file) = ConfigFile::load(Some(&path)).expect("load");
        assert_eq!(found.as_deref(), Some(path.as_path()));
        assert_eq!(file.relay.as_deref(), Some("r:1"));
        assert_eq!(file.relay_ca, Some(dir.path().join("ca.pem")));
        assert_eq!(file.roots, vec![PathBuf::from("/abs/root.pem")]);
        assert_eq!(file.pcrs["0"], "00");
        std::fs::write(&path, "realy = \"r:1\"\n").expect("write");
        let e = ConfigFile::load(Some(&path)).expect_err("typo").to_string();
        assert!(e.contains("unknown field `realy`"), "{e}");
        let e = ConfigFile::load(Some(&dir.path().join("absent.toml")))
            .expect_err("absent")
            .to_string();
        assert!(e.starts_with("config file "), "{e}");
    }
}
