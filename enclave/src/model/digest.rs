//! The model digest: what the enclave attests as `model` in its `user_data`.
//!
//! `SHA-256("confidant model digest v1" ‖ for each of config.json, tokenizer.json, model.safetensors:
//! u64 length ‖ SHA-256(bytes))`, over the bytes as loaded (the weights' hash is taken over the same
//! mapping the tensors are built from).

use sha2::{Digest, Sha256};

/// Length and SHA-256 of one file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHash {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl FileHash {
    pub fn of(bytes: &[u8]) -> FileHash {
        FileHash {
            len: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        }
    }
}

/// The digest over the three files.
pub fn model_digest(config: FileHash, tokenizer: FileHash, weights: FileHash) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"confidant model digest v1");
    for f in [config, tokenizer, weights] {
        h.update(f.len.to_be_bytes());
        h.update(f.sha256);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_file_change_changes_the_digest() {
        let a = FileHash::of(b"config");
        let b = FileHash::of(b"tokenizer");
        let c = FileHash::of(b"weights");
        let d = model_digest(a, b, c);
        assert_ne!(d, model_digest(a, b, FileHash::of(b"weightz")));
        assert_ne!(d, model_digest(b, a, c));
        assert_eq!(d, model_digest(a, b, c));
    }
}
