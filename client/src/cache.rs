//! A verified attestation per relay, kept until its keys expire, so consecutive `ask`s need not
//! attest again. The cache is re-verified on every use (chain validity, key expiry, pins), so a stale
//! or tampered file is simply not used.

use std::path::PathBuf;

use crate::remote::{check, Attested};
use crate::trust::Trust;

fn dir() -> Option<PathBuf> {
    std::env::var_os("CONFIDANT_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("confidant")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/confidant")))
}

fn file(relay: &str) -> Option<PathBuf> {
    let safe: String = relay
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir().map(|d| d.join(format!("attestation-{safe}.bin")))
}

/// The cached attestation for `relay`, if it still verifies under `trust` (freshness aside: it was
/// fresh, with our nonce, when fetched; the key expiry bounds its use).
pub fn load(relay: &str, trust: &Trust) -> Option<Attested> {
    let bytes = std::fs::read(file(relay)?).ok()?;
    let (len, rest) = bytes.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let (document, key_configs) = rest.split_at_checked(len)?;
    // It was fresh, with our nonce, when fetched; the key expiry bounds its use.
    let mut policy = trust.policy.clone();
    policy.set_max_age(None);
    check(trust, &policy, document.to_vec(), key_configs.to_vec()).ok()
}

pub fn store(relay: &str, attested: &Attested) {
    let Some(path) = file(relay) else { return };
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let mut bytes = (attested.document.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&attested.document);
    bytes.extend_from_slice(&attested.key_configs);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}

pub fn forget(relay: &str) {
    if let Some(path) = file(relay) {
        let _ = std::fs::remove_file(path);
    }
}
