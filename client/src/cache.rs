//! Verified attestations, kept by enclave instance until their keys expire (or `--max-age`, when
//! given), so consecutive `ask`s need not attest again; for each relay, the instances seen behind it,
//! most recent first (several enclaves may stand behind one relay, and one enclave's document is good
//! whichever address reached it). The cache is re-verified on every use (chain validity,
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

/// Enclaves remembered per relay (a parent instance runs up to four; a load-balanced name may front
/// several instances).
const PER_RELAY: usize = 8;

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One enclave's document and key configs, by the enclave's identity.
fn enclave_file(identity: &str) -> Option<PathBuf> {
    dir().map(|d| d.join(format!("enclave-{}.bin", safe(identity))))
}

/// The identities of the enclaves seen behind `relay`, most recent first.
fn relay_file(relay: &str) -> Option<PathBuf> {
    dir().map(|d| d.join(format!("relay-{}.list", safe(relay))))
}

fn seen(relay: &str) -> Vec<String> {
    relay_file(relay)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| {
            s.lines()
                .filter(|l| !l.is_empty() && l.len() <= 80)
                .take(PER_RELAY)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}

/// A cached attestation for an enclave seen behind `relay`, the most recent that still verifies under
/// `trust`. It was fresh, with our nonce, when fetched; the key expiry bounds its use, and so does
/// `--max-age` when the user gave one.
pub fn load(relay: &str, trust: &Trust) -> Option<Attested> {
    seen(relay).iter().find_map(|identity| {
        let bytes = std::fs::read(enclave_file(identity)?).ok()?;
        let (len, rest) = bytes.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (document, key_configs) = rest.split_at_checked(len)?;
        let mut policy = trust.policy.clone();
        policy.set_max_age(trust.cache_max_age);
        let mut attested = check(trust, &policy, document.to_vec(), key_configs.to_vec()).ok()?;
        // The file name is only a hint: the document itself must name this enclave.
        if attested.identity() != *identity {
            return None;
        }
        attested.cached = true;
        Some(attested)
    })
}

/// Keeps `attested` under its enclave's identity, first among those seen behind `relay`.
pub fn store(relay: &str, attested: &Attested) {
    let identity = attested.identity();
    let Some(path) = enclave_file(&identity) else {
        return;
    };
    let mut bytes = (attested.document.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&attested.document);
    bytes.extend_from_slice(&attested.key_configs);
    write_atomically(&path, &bytes);
    let others = seen(relay).into_iter().filter(|i| *i != identity);
    let mut ids: Vec<String> = std::iter::once(identity.clone()).chain(others).collect();
    ids.truncate(PER_RELAY);
    if let Some(list) = relay_file(relay) {
        write_atomically(&list, format!("{}\n", ids.join("\n")).as_bytes());
    }
}

/// `attested`'s enclave is gone from behind `relay` (its document stays for other relays until its
/// keys expire).
pub fn forget(relay: &str, attested: &Attested) {
    let identity = attested.identity();
    let ids: Vec<String> = seen(relay).into_iter().filter(|i| *i != identity).collect();
    if let Some(list) = relay_file(relay) {
        if ids.is_empty() {
            let _ = std::fs::remove_file(list);
        } else {
            write_atomically(&list, format!("{}\n", ids.join("\n")).as_bytes());
        }
    }
}

/// Where the highest release accepted from `relay` is kept. It is not an attestation: `cache clear`
/// and `--fresh` leave it, so neither can undo rollback protection.
fn release_file(relay: &str) -> Option<PathBuf> {
    dir().map(|d| d.join(format!("release-{}.hwm", safe(relay))))
}

/// The highest release version accepted from `relay` (0: none yet, or no cache directory).
pub fn release_high_water(relay: &str) -> u64 {
    release_file(relay)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Raises `relay`'s high-water mark to `version` (never lowers it).
pub fn raise_release_high_water(relay: &str, version: u64) {
    if version > release_high_water(relay) {
        if let Some(path) = release_file(relay) {
            write_atomically(&path, format!("{version}\n").as_bytes());
        }
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
        let ours = ["attestation-", "enclave-", "relay-"]
            .iter()
            .any(|p| name.starts_with(p));
        if ours && [".bin", ".list", ".tmp"].iter().any(|e| name.ends_with(e)) {
            std::fs::remove_file(entry.path())?;
            removed += usize::from(name.ends_with(".bin"));
        }
    }
    Ok(removed)
}
