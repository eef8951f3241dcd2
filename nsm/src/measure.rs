//! The PCRs the emulated NSM reports, so a client can pin them before the enclave starts.
//!
//! Extend semantics as on Nitro (`PCR = SHA-384(PCR ‖ SHA-384(measured))` from 48 zero bytes):
//! - PCR0, the image: the enclave binary and the model digest (config, tokenizer, weights), so it
//!   changes when any of them changes;
//! - PCR1, kernel and bootstrap: a constant naming the emulation;
//! - PCR2, the application: the enclave binary alone;
//! - PCR3..PCR15: zero (IAM role, instance id and signing certificate have no emulated meaning).

use std::collections::BTreeMap;
use std::path::Path;

use confidant_protocol::digest::{model_digest, FileHash, ModelFiles};
use sha2::{Digest, Sha256, Sha384};

/// Streams a file through a hash (one definition for every file a measurement reads).
pub fn hash_file<D: Digest>(path: &Path) -> std::io::Result<(u64, D)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut len, mut buf) = (D::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hasher));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// The model digest over the files as stored in `dir` (the encrypted weights file, when the weights
/// are encrypted): what PCR0 measures, as an image measurement would.
pub fn stored_model_digest(dir: &Path) -> Result<[u8; 32], String> {
    let files = ModelFiles::in_dir(dir);
    let hash = |p: &Path| -> Result<FileHash, String> {
        let (len, h) = hash_file::<Sha256>(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(FileHash {
            len,
            sha256: h.finalize().into(),
        })
    };
    Ok(model_digest(
        hash(&files.config)?,
        hash(&files.tokenizer)?,
        hash(files.stored_weights())?,
    ))
}

/// SHA-384 over a file, streamed.
pub fn sha384_file(path: &Path) -> std::io::Result<[u8; 48]> {
    Ok(hash_file::<Sha384>(path)?.1.finalize().into())
}

fn extend(measured: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update([0u8; 48]);
    h.update(Sha384::digest(measured));
    h.finalize().into()
}

/// PCRs 0..15 for a binary with SHA-384 `binary_sha384` serving a model with digest `model_digest`.
pub fn emulated_pcrs(
    binary_sha384: &[u8; 48],
    model_digest: &[u8; 32],
) -> BTreeMap<usize, [u8; 48]> {
    let mut image = b"confidant image v1".to_vec();
    image.extend_from_slice(binary_sha384);
    image.extend_from_slice(model_digest);
    let mut pcrs: BTreeMap<usize, [u8; 48]> = (0..16).map(|i| (i, [0u8; 48])).collect();
    pcrs.insert(0, extend(&image));
    pcrs.insert(1, extend(b"confidant emulated kernel and bootstrap v1"));
    pcrs.insert(2, extend(binary_sha384));
    pcrs
}

/// The PCRs for this running binary.
pub fn this_binary_pcrs(model_digest: &[u8; 32]) -> std::io::Result<BTreeMap<usize, [u8; 48]>> {
    let exe = std::env::current_exe()?;
    Ok(emulated_pcrs(&sha384_file(&exe)?, model_digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr0_follows_binary_and_model_pcr2_only_the_binary() {
        let a = emulated_pcrs(&[1; 48], &[2; 32]);
        let b = emulated_pcrs(&[1; 48], &[3; 32]);
        let c = emulated_pcrs(&[9; 48], &[2; 32]);
        assert_eq!(a.len(), 16);
        assert_ne!(a[&0], b[&0]);
        assert_eq!(a[&2], b[&2]);
        assert_ne!(a[&0], c[&0]);
        assert_ne!(a[&2], c[&2]);
        assert_eq!(a[&1], c[&1]);
        assert!(
            a[&0].iter().any(|&x| x != 0),
            "PCR0 must not look like debug mode"
        );
        assert_eq!(a[&3], [0; 48]);
    }
}
