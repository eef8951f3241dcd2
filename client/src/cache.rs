//! A verified attestation per relay, kept until its keys expire (or `--max-age`, when given), so
//! consecutive `ask`s need not attest again. The cache is re-verified on every use (chain validity,
//! key expiry, pins), so a stale or tampered file is simply not used. `--fresh` bypasses it and
//! `confidant cache clear` empties it.
//!
//! Location: `$CONFIDANT_CACHE_DIR`, else `$XDG_CACHE_HOME/confidant`, else `~/.cache/confidant`.

use std::path::PathBuf;

use crate::remote::{check, Attested};
use crate::trust::Trust;

/// The cache directory.
pub fn dir() -> Option<PathBuf> {
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

/// The cached attestation for `relay`, if it still verifies under `trust`. It was fresh, with our
/// nonce, when fetched; the key expiry bounds its use, and so does `--max-age` when the user gave one.
pub fn load(relay: &str, trust: &Trust) -> Option<Attested> {
    let bytes = std::fs::read(file(relay)?).ok()?;
    let (len, rest) = bytes.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let (document, key_configs) = rest.split_at_checked(len)?;
    let mut policy = trust.policy.clone();
    policy.set_max_age(trust.cache_max_age);
    let mut attested = check(trust, &policy, document.to_vec(), key_configs.to_vec()).ok()?;
    attested.cached = true;
    Some(attested)
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

/// Removes every cached attestation; returns how many there were.
pub fn clear() -> std::io::Result<usize> {
    let Some(dir) = dir() else { return Ok(0) };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("attestation-") && (name.ends_with(".bin") || name.ends_with(".tmp")) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}
